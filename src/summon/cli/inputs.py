"""Inputs of ``summon predict``: texts on the command line, or a file or standard input read as a stream.

Formats, by extension: ``.jsonl`` (objects with ``text``, ``text``/``text_pair`` or ``tokens``), ``.csv``
and ``.tsv`` (a ``text`` column, optionally ``text_pair``), anything else one input per line; ``-`` reads
lines of text from standard input. Files are read line by line, so a file larger than memory streams
through ``predict`` one window at a time. Errors name the file (or ``<stdin>``) and line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO


def read_inputs(texts: Sequence[str], file: str | None, *, task: str) -> Iterator[Any]:
    """Command-line texts, then the rows of ``file``; refuses to run with nothing to predict."""
    if not texts and not file:
        raise ValueError("nothing to predict: give texts as arguments, --file FILE (.jsonl, .csv, .tsv, .txt) "
                         "or --file - to read standard input")
    if file:
        _check_file(file)
    return _chain(texts, file, task)


def _chain(texts: Sequence[str], file: str | None, task: str) -> Iterator[Any]:
    yield from texts
    if file:
        yield from _file_rows(file, task)


def _check_file(file: str) -> None:
    if file != "-" and not Path(file).is_file():
        raise ValueError(f"{file}: no such file. Check the path (relative paths start from {Path.cwd()}).")


def _file_rows(file: str, task: str) -> Iterator[Any]:
    if file == "-":
        yield from _lines(sys.stdin, "<stdin>")
        return
    path = Path(file)
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="" if suffix in (".csv", ".tsv") else None) as handle:
        try:
            if suffix in (".jsonl", ".json", ".ndjson"):
                yield from _jsonl(handle, file)
            elif suffix in (".csv", ".tsv"):
                yield from _table(handle, file, "\t" if suffix == ".tsv" else ",")
            else:
                yield from _lines(handle, file)
        except UnicodeDecodeError as err:
            raise ValueError(f"{file}: bytes that are not UTF-8 ({err.reason}); re-save the file as UTF-8") from None


def _lines(handle: TextIO, where: str) -> Iterator[str]:
    for line in handle:
        text = line.rstrip("\r\n")
        if text.strip():
            yield text


def _jsonl(handle: Iterable[str], where: str) -> Iterator[Any]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}:{number}: not valid JSON ({err.msg}); one JSON object per line") from None
        yield _row_input(row, f"{where}:{number}")


def _table(handle: TextIO, where: str, delimiter: str) -> Iterator[Any]:
    reader = csv.DictReader(handle, delimiter=delimiter)
    if not reader.fieldnames or "text" not in reader.fieldnames:
        raise ValueError(f"{where}:1: needs a header with a 'text' column (and optionally 'text_pair'); "
                         f"found {reader.fieldnames}")
    for row in reader:
        yield _row_input(row, f"{where}:{reader.line_num}")


def _row_input(row: Any, where: str) -> Any:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'text' key, got {type(row).__name__}")
    if row.get("text_pair") not in (None, ""):
        return (str(row["text"]), str(row["text_pair"]))
    if "tokens" in row:
        return list(row["tokens"])
    if "text" not in row:
        raise ValueError(f"{where}: needs a 'text' (or 'tokens') key")
    return row["text"]
