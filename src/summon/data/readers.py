"""Read local JSONL / CSV / TSV files into rows, with errors that name the file and line.

Every problem a user can cause (a missing file, an empty file, bytes that are not UTF-8, a malformed
line) raises a ``ValueError`` of the form ``FILE:LINE: what is wrong. What to do.``
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


def infer_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file name (``.gz`` is looked through)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
    if last not in formats:
        raise ValueError(
            f"{path}: cannot tell the format from the extension '{last or '(none)'}'. "
            "Name the file .jsonl/.csv/.tsv or set 'format: jsonl|csv|tsv' in the data spec."
        )
    return formats[last]


def read_text(path: Path) -> str:
    """Return the file decoded as UTF-8; ``.gz`` files are decompressed first."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file. Check the path (relative paths start from {Path.cwd()}).")
    raw = path.read_bytes()
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


def read_delimited(path: Path, text: str, delimiter: str) -> Iterator[Row]:
    """Yield ``(line, row)`` from a CSV/TSV file whose first line is a header."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as err:
        raise ValueError(f"{path}:1: malformed header ({err}).") from None
    if len(set(header)) != len(header):
        raise ValueError(f"{path}:1: the header repeats a column name: {header}. Make the names unique.")
    try:
        for values in reader:
            number = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(
                    f"{path}:{number}: {len(values)} fields but the header has {len(header)} "
                    f"({', '.join(header)}). Quote fields that contain the delimiter."
                )
            yield number, dict(zip(header, values, strict=True))
    except csv.Error as err:
        raise ValueError(f"{path}:{reader.line_num}: malformed line ({err}).") from None


def read_rows(path: str | Path, fmt: str | None = None) -> list[Row]:
    """Read every row of a local file, returning ``(line number, row dict)`` pairs."""
    path = Path(path)
    fmt = fmt or infer_format(path)
    text = read_text(path)
    if fmt == "jsonl":
        rows = list(read_jsonl(path, text))
    elif fmt in ("csv", "tsv"):
        rows = list(read_delimited(path, text, "," if fmt == "csv" else "\t"))
    else:
        raise ValueError(f"{path}: unknown format '{fmt}'. Use jsonl, csv or tsv.")
    if not rows:
        raise ValueError(f"{path}: no data rows (only a header or blank lines). Add at least one row.")
    return rows
