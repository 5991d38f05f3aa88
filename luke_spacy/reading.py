"""Input records: texts and JSON lines read the same way by the local and the Ray engine.

Text input holds one text per non-empty line; JSONL input one object per non-empty line, whose
text field is the text and whose other fields become the record's meta. A bad line (invalid
JSON, not an object, no string text, not UTF-8) becomes an `Item` with an error, reported by
FILE:LINE, so that one bad line never stops the others. Standard library only: the command
line imports this before torch or spaCy.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

from .errors import CLIError

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}
# Byte order marks of encodings that are not UTF-8 (UTF-32 first: its LE mark starts with
# UTF-16's). Read as UTF-8 lines, such a file is one error and then junk records.
FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class Source:
    """An input stream: a file, or stdin when `path` is None."""

    path: Optional[Path]
    jsonl: bool

    @property
    def name(self) -> str:
        return "<stdin>" if self.path is None else str(self.path)


@dataclass(frozen=True)
class Item:
    """One input record: its text and meta, or why it cannot be annotated."""

    source: str
    text: Optional[str] = None
    meta: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    warning: Optional[str] = None


def check_readable(source: Source) -> None:
    """Fail before the model is loaded when an input file cannot be read.

    Only a regular file is opened (to see that it can be, and that it is not UTF-16): opening
    a named pipe would take its writer, and the real read would then wait forever.

    RAISES (CLIError): The file is missing, a folder, unreadable, or not UTF-8 by its BOM.
    """
    if source.path is None:
        return
    name = source.name
    try:
        mode = source.path.stat().st_mode
    except FileNotFoundError as err:
        raise CLIError(f"cannot read --input {name}: no such file") from err
    except OSError as err:
        raise CLIError(f"cannot read --input {name}: {err.strerror or err}") from err
    if stat.S_ISDIR(mode):
        raise CLIError(f"cannot read --input {name}: is a folder")
    if not stat.S_ISREG(mode):  # a pipe or device: checked without consuming it
        if not os.access(source.path, os.R_OK):
            raise CLIError(f"cannot read --input {name}: permission denied")
        return
    try:
        with source.path.open("rb") as file:
            start = file.read(4)
    except OSError as err:
        raise CLIError(f"cannot read --input {name}: {err.strerror or err}") from err
    encoding = foreign_encoding(start)
    if encoding is not None:
        raise CLIError(f"cannot read --input {name}: {not_utf8(encoding)}")


def foreign_encoding(start: bytes) -> Optional[str]:
    """"UTF-16" or "UTF-32" when `start` begins with that encoding's byte order mark."""
    for bom, encoding in FOREIGN_BOMS:
        if start.startswith(bom):
            return encoding
    return None


def not_utf8(encoding: str) -> str:
    """What to do with a file in another encoding than UTF-8."""
    return (
        f"the file is {encoding} (byte order mark), convert to UTF-8 "
        f"(iconv -f {encoding} -t UTF-8)"
    )


def count_lines(path: Path) -> int:
    """The number of non-empty lines of a file, for a progress bar's total."""
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def read_args(texts: Sequence[str]) -> Iterator[Item]:
    """The items of texts given as command-line arguments."""
    for number, text in enumerate(texts, 1):
        yield text_item(f"argument {number}", text)


def read_sources(sources: Sequence[Source], text_field: str) -> Iterator[Item]:
    """Stream the items of each source in order, one line at a time."""
    for source in sources:
        if source.path is None:
            # Bytes, so that a line that is not UTF-8 is one bad record.
            yield from read_lines(source, getattr(sys.stdin, "buffer", sys.stdin), text_field)
            continue
        try:
            with source.path.open("rb") as lines:
                yield from read_lines(source, lines, text_field)
        except OSError as err:
            raise CLIError(f"cannot read --input {source.name}: {err.strerror or err}") from err


def read_lines(
    source: Source, lines: Iterable[Union[bytes, str]], text_field: str
) -> Iterator[Item]:
    """Text: one text per non-empty line (line break removed, other whitespace kept).
    JSONL: one object per non-empty line; the other fields become the meta. A stream that
    starts with a UTF-16 or UTF-32 byte order mark is one error item, and nothing more."""
    for number, raw in enumerate(lines, 1):
        where = f"{source.name}:{number}"
        if isinstance(raw, bytes):
            if number == 1:
                encoding = foreign_encoding(raw)
                if encoding is not None:
                    yield Item(where, error=not_utf8(encoding))
                    return
                if raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield Item(where, error=f"not UTF-8 (byte {err.start + 1}: {err.reason})")
                continue
        else:
            line = raw
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        yield json_item(where, line, text_field) if source.jsonl else text_item(where, line)


def json_item(where: str, line: str, text_field: str) -> Item:
    """The item of one JSONL line."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as err:
        return Item(where, error=f"invalid JSON ({err})")
    if not isinstance(record, dict):
        return Item(where, error=f"expected a JSON object, got {json_type(record)}")
    if text_field not in record:
        return Item(where, meta=record, error=f"no {text_field!r} field (set --text-field)")
    text = record.pop(text_field)
    if not isinstance(text, str):
        error = f"{text_field!r} is {json_type(text)}, not a string"
        return Item(where, meta=record, error=error)
    return text_item(where, text, record)


def text_item(where: str, text: str, meta: Optional[Dict[str, Any]] = None) -> Item:
    """An item; lone surrogates, which no tokenizer or UTF-8 output takes, become U+FFFD
    (one character for one, so offsets still index the text as given)."""
    text, n_replaced = LONE_SURROGATE.subn("\ufffd", text)
    if not n_replaced:
        return Item(where, text, meta)
    warning = f"{n_replaced} lone surrogate(s) (not Unicode text) replaced with U+FFFD"
    return Item(where, text, meta, warning=warning)


def json_type(value: Any) -> str:
    """What a JSON value is, in words ("an array")."""
    return JSON_TYPES.get(type(value), type(value).__name__)
