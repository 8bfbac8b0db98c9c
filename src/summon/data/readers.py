"""Read local JSONL / CSV / TSV files into rows, with errors that name the file and line.

Every problem a user can cause (a missing file, a folder or an unreadable file, an empty file, bytes that
are not UTF-8, a malformed line) raises a ``ValueError`` of the form ``FILE:LINE: what is wrong. What to do.``

Quoting: TSV is read with no quote processing by default (as the GLUE loaders do: a stray ``"`` in a sentence
is text, and cannot swallow the rows after it); CSV uses standard quoting. ``quoting: csv`` or ``none`` in
the data spec says otherwise. With quoting on, a quoted field that runs over a line break is refused,
naming the line where it opens and the one where it closes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = tuple[int, dict[str, Any]]  # (1-based line number, parsed row)
FORMATS = ("jsonl", "csv", "tsv")
QUOTING = ("none", "csv")
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
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}. "
                "Write one {\"column\": value, ...} object per line."
            )
        yield number, row


def read_delimited(path: Path, text: str, delimiter: str, quoting: str = "csv") -> Iterator[Row]:
    """Yield ``(line, row)`` from a CSV/TSV file whose first line is a header.

    ``quoting`` is ``csv`` (standard double-quote processing, strict) or ``none`` (quotes are text, every
    line one row).
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
                f"({', '.join(header)}). Quote fields that contain the delimiter."
            )
        yield line, dict(zip(header, values, strict=True))


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


def read_rows(path: str | Path, fmt: str | None = None, quoting: str | None = None) -> list[Row]:
    """Read every row of a local file, returning ``(line number, row dict)`` pairs.

    ``quoting`` (CSV/TSV only): ``csv`` or ``none``; by default ``none`` for TSV and ``csv`` for CSV.
    """
    path = Path(path)
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown format '{fmt}'. Use jsonl, csv or tsv.")
    if quoting not in (None, *QUOTING):
        raise ValueError(f"{path}: unknown quoting '{quoting}'. Use 'none' (quotes are text) or 'csv'.")
    if quoting is not None and fmt == "jsonl":
        raise ValueError(f"{path}: 'quoting' applies to CSV and TSV files; drop it for JSONL.")
    text = read_text(path)
    if fmt == "jsonl":
        rows = list(read_jsonl(path, text))
    else:
        rows = list(read_delimited(path, text, "," if fmt == "csv" else "\t",
                                   quoting or ("none" if fmt == "tsv" else "csv")))
    if not rows:
        raise ValueError(f"{path}: no data rows (only a header or blank lines). Add at least one row.")
    return rows
