"""Where the commands write: one check of a new output folder, one same-file test.

Standard library only: the command line checks its outputs before torch or spaCy is imported.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Sequence, Tuple

from .errors import CLIError


def same_file(path: Path, other: Path) -> bool:
    """Whether two paths name one regular file or folder, or the same one to be (not there
    yet), also when they are spelled differently (./name, a symbolic or hard link). Terminals
    and devices (/dev/stdout, /dev/null) may be read and written at once.

    path (Path): One path.
    other (Path): The other.
    RETURNS (bool): Whether they are one.
    """
    try:
        first, second = path.stat(), other.stat()
    except OSError:  # not there yet: two spellings of one future file?
        return os.path.realpath(path) == os.path.realpath(other)
    same = (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    return same and (stat.S_ISREG(first.st_mode) or stat.S_ISDIR(first.st_mode))


def check_new_folder(
    path: Path,
    force: bool,
    *,
    written: str,
    sources: Sequence[Tuple[str, Path]] = (),
    error: Callable[[str], Exception] = CLIError,
) -> None:
    """Refuse an output folder that is a file, that is a folder read from (even with
    `force`), or that already holds files unless `force`: what is written would silently
    replace them.

    path (Path): The output folder.
    force (bool): Write into a folder that holds files.
    written (str): What is written, for the advice, e.g. "the export".
    sources (Sequence[Tuple[str, Path]]): (what it is, folder) of each folder read from,
        e.g. ("the pipeline itself", pipeline).
    error (Callable[[str], Exception]): The error raised with the message.
    """
    if path.exists() and not path.is_dir():
        raise error(f"{path} is a file, not a folder: give a new or empty folder")
    for what, source in sources:
        if source.exists() and same_file(path, source):
            raise error(
                f"{path} is {what} ({source}): its files would be replaced; give another folder"
            )
    if force or not path.is_dir():
        return
    try:
        held = sorted(entry.name for entry in path.iterdir())
    except OSError as err:
        raise error(f"cannot write {path}: {err.strerror or err}") from err
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise error(
            f"{path} already holds files ({shown}): give a new or empty folder, or --force "
            f"to write {written} over them"
        )
