"""The package's error types and the one way an error is told in one line.

Light on purpose (the standard library only): the command line, the checkpoint checks, the
model and both annotation engines import it, and `luke-spacy --help` never waits on torch.
"""

from __future__ import annotations

import sys
from typing import Any

PROG = "luke-spacy"  # every message of the command line starts "luke-spacy: "
EXIT_USAGE = 2


def say(message: str, progress: Any = None) -> None:
    """One line of the command line on stderr, above the progress bar when there is one."""
    line = f"{PROG}: {message}"
    if progress is not None:
        progress.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or cannot do span classification."""


class CLIError(Exception):
    """An error reported as one message on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def error_line(err: BaseException, *, with_type: bool = False) -> str:
    """An error in one line: the first line of its message, or its type's name when it has
    none.

    A Ray task error's message is the remote traceback, which starts with the task's name; its
    last line is the exception that the remote code raised, so that line is the one told.

    err (BaseException): The error.
    with_type (bool): Lead with the type's name ("ValueError: ...").
    RETURNS (str): The line.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if _raised_in_ray(err):
        return lines[-1]  # already "Type: message"
    return f"{type(err).__name__}: {lines[0]}" if with_type else lines[0]


def _raised_in_ray(err: BaseException) -> bool:
    # RayTaskError and the subclasses Ray makes of it for each cause (RayTaskError(ValueError)).
    return any(cls.__name__ == "RayTaskError" for cls in type(err).__mro__)
