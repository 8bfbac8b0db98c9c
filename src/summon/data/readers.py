"""Read local JSONL / CSV / TSV files into rows, with errors that name the file and line.

Every problem a user can cause (a missing file, a folder or an unreadable file, an empty file, bytes that
are not UTF-8, a malformed line) raises a ``ValueError`` of the form ``FILE:LINE: what is wrong. What to do.``

Quoting: TSV is read with no quote processing by default (as the GLUE loaders do: a stray ``"`` in a sentence
is text, and cannot swallow the rows after it); CSV uses standard quoting. ``quoting: csv`` or ``none`` in
the data spec says otherwise. With quoting on, a quoted field that runs over a line break is refused,
naming the line where it opens and the one where it closes.

Delimiters: ``,`` for CSV and a tab for TSV, or ``delimiter:`` in the data spec. A header with none of the
expected delimiter but another of ``; | ,`` or a tab between its names (a semicolon-separated ``.csv``, as
spreadsheets in many locales write it) is read with that one, detected by :class:`csv.Sniffer`; every message
about fields names the delimiter it read with and where it came from.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Row = tuple[int, dict[str, Any]]  # (1-based line number, parsed row)
FORMATS = ("jsonl", "csv", "tsv")
QUOTING = ("none", "csv")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}  # a CSV/TSV file's field separators, named
DELIMITER_NAMES = {**{name: d for d, name in DELIMITERS.items()}, **{d: d for d in DELIMITERS}}
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def infer_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file name (``.gz`` is looked through)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last not in SUFFIXES:
        raise ValueError(
            f"{path}: cannot tell the format from the extension '{last or '(none)'}'. "
            "Name the file .jsonl/.csv/.tsv or set 'format: jsonl|csv|tsv' in the data spec."
        )
    return SUFFIXES[last]


def read_text(path: Path) -> str:
    """Return the file decoded as UTF-8; ``.gz`` files are decompressed first."""
    raw = _read_bytes(path)
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err}). Re-compress it or pass the plain file.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: bytes that are not UTF-8 ({raw[err.start:err.start + 4]!r} at byte {err.start}). "
            "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty. Point the spec at a file with at least one row.")
    return text.removeprefix("\ufeff")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a folder, a missing or an unreadable file is a ValueError naming the path."""
    try:
        if path.is_dir():
            raise ValueError(f"{path}: a folder, not a data file{_folder_hint(path)}. Give the path of one "
                             ".jsonl/.csv/.tsv file.")
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file. Check the path (relative paths start from {Path.cwd()}).") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file ({err.strerror or err}). Check that it is a regular file "
                         "you may read (permissions, a broken link, a device).") from None


def _folder_hint(path: Path) -> str:
    """`` (it holds a.jsonl, b.csv)``: the first few data files in a folder given as a file, if any."""
    try:
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (*SUFFIXES, ".gz"))[:5]
    except OSError:
        return ""
    return f" (it holds {', '.join(inside)})" if inside else ""


def read_jsonl(path: Path, text: str) -> Iterator[Row]:
    """Yield ``(line, object)`` for every non-blank line; each must be a JSON object."""
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): it splits on U+2028 too
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno}). "
                "Each line must be one JSON object, e.g. {\"text\": \"...\", \"label\": 0}."
            ) from None
        except RecursionError:  # json.loads meets the interpreter's recursion limit, not a JSONDecodeError
            raise ValueError(
                f"{path}:{number}: JSON nested too deeply to read (lists or objects inside one another about "
                f"{sys.getrecursionlimit():,} levels deep or more). A row holds a text and a label, e.g. "
                "{\"text\": \"...\", \"label\": 0}: fix or drop the line."
            ) from None
        except ValueError as err:  # e.g. an integer of more digits than Python converts
            raise ValueError(f"{path}:{number}: unreadable JSON ({err}). Fix or drop the line.") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}. "
                "Write one {\"column\": value, ...} object per line."
            )
        yield number, row


def read_delimited(path: Path, text: str, delimiter: str, quoting: str = "csv", how: str = "given") -> Iterator[Row]:
    """Yield ``(line, row)`` from a CSV/TSV file whose first line is a header.

    ``quoting`` is ``csv`` (standard double-quote processing, strict) or ``none`` (quotes are text, every
    line one row). ``how`` says where ``delimiter`` came from, for messages (``"detected"``, ``"the .csv
    default"``, ``"the data spec's 'delimiter'"``).
    """
    if quoting == "none":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records = _records(path, reader)
    _, header = next(records)
    if not any(h.strip() for h in header):
        raise ValueError(f"{path}:1: the first line is blank; it must be the header (the column names).")
    if len(set(header)) != len(header):
        raise ValueError(f"{path}:1: the header repeats a column name: {header}. Make the names unique.")
    for line, values in records:
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ValueError(
                f"{path}:{line}: {len(values)} fields but the header has {len(header)} "
                f"({', '.join(header)}), reading fields separated by {describe_delimiter(delimiter)} ({how}). "
                "Quote fields that contain the delimiter, or set 'delimiter:' in the data spec if the file uses "
                "another one."
            )
        yield line, dict(zip(header, values, strict=True))


def describe_delimiter(delimiter: str) -> str:
    """``"';' (semicolon)"``: a delimiter as messages name it."""
    name = DELIMITERS.get(delimiter)
    return f"{delimiter!r} ({name})" if name else repr(delimiter)


def choose_delimiter(path: Path, text: str, fmt: str, delimiter: str | None = None) -> tuple[str, str]:
    """The delimiter to read a CSV/TSV file with, and where it came from (for messages).

    ``delimiter`` (from the data spec: a character or a name such as ``semicolon``) wins. Otherwise the
    extension's (``,`` for ``.csv``, a tab for ``.tsv``), unless the header holds no such character but splits
    into columns at another of ``, ; TAB |`` and :class:`csv.Sniffer` agrees on the first lines: a
    semicolon-separated ``.csv`` (as spreadsheets write it where ``,`` is the decimal mark) is then read with
    ``;``, and a message says so.
    """
    if delimiter is not None:
        return resolve_delimiter(delimiter, path), "the data spec's 'delimiter'"
    default = "," if fmt == "csv" else "\t"
    header = text.split("\n", 1)[0]
    others = "".join(d for d in DELIMITERS if d != default and d in header)
    if default in header or not others:
        return default, f"the .{fmt} default"
    sample = "\n".join(text.split("\n", 20)[:20])
    try:
        found = csv.Sniffer().sniff(sample, delimiters=others).delimiter
    except csv.Error:
        return default, f"the .{fmt} default; no other delimiter could be detected"
    logger.info("%s: the header has no %s but %s between its names: reading fields separated by %s (set "
                "'delimiter:' in the data spec to choose)", path, describe_delimiter(default),
                describe_delimiter(found), describe_delimiter(found))
    return found, f"detected from the header, which has no {describe_delimiter(default)}"


def resolve_delimiter(delimiter: str, where: Any = "the data spec") -> str:
    """The character a data spec's ``delimiter`` names (``";"`` or ``"semicolon"``); a ValueError for others."""
    if delimiter not in DELIMITER_NAMES:
        names = ", ".join(f"{n!r}" for n in DELIMITER_NAMES if len(n) > 1)
        raise ValueError(f"{where}: unknown delimiter {delimiter!r}. Use one of , ; | or a tab, or a name: {names}.")
    return DELIMITER_NAMES[delimiter]


def _records(path: Path, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` per record of a csv reader; a record that ran over a line break (a quote
    opened on one line and closed on a later one) or a malformed one is a ValueError naming its lines."""
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader, None)
        except csv.Error as err:
            end = reader.line_num
            span = f" (from line {start} to line {end}: a quote that is never closed?)" if end > start else ""
            raise ValueError(f"{path}:{start}: malformed line{span}: {err}. Check the quotes, or read the file "
                             "with no quote processing ('quoting: none' in the data spec).") from None
        if values is None:
            return
        if reader.line_num > start or any("\n" in v or "\r" in v for v in values):
            raise ValueError(
                f"{path}:{start}: a quoted field opens on line {start} and runs to line {reader.line_num}, "
                "swallowing the line break(s) between (a stray '\"'?). Close the quote on its own line, or read "
                "the file with no quote processing ('quoting: none' in the data spec); text with line breaks "
                "belongs in JSONL."
            )
        yield start, values


def read_rows(path: str | Path, fmt: str | None = None, quoting: str | None = None,
              delimiter: str | None = None) -> list[Row]:
    """Read every row of a local file, returning ``(line number, row dict)`` pairs.

    ``quoting`` (CSV/TSV only): ``csv`` or ``none``; by default ``none`` for TSV and ``csv`` for CSV.
    ``delimiter`` (CSV/TSV only): the field separator; by default the extension's, or the one detected when the
    header has none of it (:func:`choose_delimiter`).
    """
    path = Path(path)
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown format '{fmt}'. Use jsonl, csv or tsv.")
    if quoting not in (None, *QUOTING):
        raise ValueError(f"{path}: unknown quoting '{quoting}'. Use 'none' (quotes are text) or 'csv'.")
    if quoting is not None and fmt == "jsonl":
        raise ValueError(f"{path}: 'quoting' applies to CSV and TSV files; drop it for JSONL.")
    if delimiter is not None and fmt == "jsonl":
        raise ValueError(f"{path}: 'delimiter' applies to CSV and TSV files; drop it for JSONL.")
    text = read_text(path)
    if fmt == "jsonl":
        rows = list(read_jsonl(path, text))
    else:
        sep, how = choose_delimiter(path, text, fmt, delimiter)
        rows = list(read_delimited(path, text, sep, quoting or ("none" if fmt == "tsv" else "csv"), how))
    if not rows:
        raise ValueError(f"{path}: no data rows (only a header or blank lines). Add at least one row.")
    return rows
