"""Inputs of ``summon predict``: texts on the command line, or a file or standard input read as a stream.

Formats, by extension (``.gz`` is read through) or ``--format``:

* ``jsonl`` (``.jsonl``, ``.ndjson``, ``.json``): one object per line with ``text`` (and ``text_pair`` for
  pair tasks), or ``tokens`` (a list of words) for tagging;
* ``csv`` / ``tsv``: a header row with a ``text`` column (and ``text_pair`` for pair tasks);
* ``txt`` (anything else, and standard input by default): one input per line, blank lines skipped; for a
  pair task the two texts are separated by a tab.

Everything is a generator: a file (or a pipe) larger than memory streams through ``predict`` one window of
rows at a time, and nothing is read before it is needed. Bytes are decoded line by line as UTF-8, so a bad
byte, a malformed line or a missing column is reported as ``FILE:LINE: what is wrong; what to do``.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from summon.core.text import check_unicode

FORMATS = ("jsonl", "csv", "tsv", "txt")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
STDIN = "-"


def check_inputs(texts: Sequence[str], file: str | None, fmt: str = "auto") -> None:
    """Refuse early (before a model is loaded) when there is nothing to predict or ``file`` does not exist."""
    if not texts and not file:
        raise ValueError("nothing to predict: give texts as arguments, --file FILE (.jsonl, .csv, .tsv, .txt) "
                         "or --file - to read standard input")
    if file and file != STDIN and Path(file).is_dir():
        raise ValueError(f"{file} is a folder; --file takes one file (.jsonl, .csv, .tsv, .txt, or .gz of them)")
    if file and file != STDIN and not Path(file).is_file():
        raise ValueError(f"{file}: no such file. Check the path (relative paths start from {Path.cwd()}).")
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; use one of auto, {', '.join(FORMATS)}")


def format_of(file: str, fmt: str = "auto") -> str:
    """The format of ``file``: ``fmt`` unless ``auto``, else from its extension (``.gz`` looked through)."""
    if fmt != "auto":
        return fmt
    if file == STDIN:
        return "txt"
    name = file.lower().removesuffix(".gz")
    return _SUFFIXES.get(Path(name).suffix, "txt")


def read_inputs(texts: Sequence[str], file: str | None, *, task: str, fmt: str = "auto") -> Iterator[Any]:
    """Command-line texts, then the rows of ``file`` (``-``: standard input), as the predictor's inputs:
    strings, ``(text, text_pair)`` tuples for pair tasks, or word lists for tagging. Checks eagerly, reads lazily."""
    check_inputs(texts, file, fmt)
    return _chain(texts, file, task, fmt)


def _chain(texts: Sequence[str], file: str | None, task: str, fmt: str) -> Iterator[Any]:
    for number, text in enumerate(texts, start=1):
        yield _text_input(text, task, f"argument {number}")
    if file:
        yield from _file_rows(file, task, fmt)


def _file_rows(file: str, task: str, fmt: str) -> Iterator[Any]:
    kind = format_of(file, fmt)
    if file == STDIN:
        yield from parse_lines(_stdin_lines(), kind, "<stdin>", task=task)
        return
    opener = gzip.open if file.lower().endswith(".gz") else open
    with opener(file, "rb") as handle:
        yield from parse_lines(handle, kind, file, task=task)


def _stdin_lines() -> Iterable[bytes | str]:
    """Standard input as raw bytes where it has them (so decoding errors name their line), else as text."""
    return getattr(sys.stdin, "buffer", None) or sys.stdin


def parse_lines(lines: Iterable[bytes | str], kind: str, where: str, *, task: str) -> Iterator[Any]:
    """Inputs from a stream of raw lines (bytes or str, newline kept or not) in format ``kind``, lazily:
    nothing is read beyond the row being returned. ``where`` names the source in errors."""
    decoded = _decode(lines, where)
    if kind == "jsonl":
        yield from _jsonl(decoded, where, task)
    elif kind in ("csv", "tsv"):
        yield from _table(decoded, where, "\t" if kind == "tsv" else ",", task)
    elif kind == "txt":
        for number, line in decoded:
            text = line.rstrip("\r\n")
            if text.strip():
                yield _text_input(text, task, f"{where}:{number}")
    else:
        raise ValueError(f"unknown input format {kind!r}; use one of {', '.join(FORMATS)}")


def _decode(lines: Iterable[bytes | str], where: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}:{number}: bytes that are not UTF-8 ({err.reason} at byte {err.start} "
                                 "of the line); re-save the file as UTF-8") from None
        else:
            line = raw
        yield number, line.removeprefix("\ufeff") if number == 1 else line


def _jsonl(lines: Iterable[tuple[int, str]], where: str, task: str) -> Iterator[Any]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}:{number}: not valid JSON ({err.msg} at column {err.colno}); "
                             "give one JSON object per line") from None
        except RecursionError:
            raise ValueError(f"{where}:{number}: JSON nested too deeply to read; give one flat JSON object per "
                             "line ({\"text\": ...})") from None
        yield _row_input(row, task, f"{where}:{number}")


def _table(lines: Iterable[tuple[int, str]], where: str, delimiter: str, task: str) -> Iterator[Any]:
    numbered = iter(lines)
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in numbered:
            current[0] = number
            yield line

    # TSV: no quote processing, as the data readers (summon.data.readers) and the GLUE loaders read it
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text_lines(), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        needed = ["text", "text_pair"] if task == "pair_classification" else ["text"]
        if header is None or any(name not in header for name in needed):
            raise ValueError(f"{where}:1: needs a header row with a {' and a '.join(repr(n) for n in needed)} "
                             f"column; found {header or 'an empty file'}")
        columns = {name: header.index(name) for name in needed}
        for record in reader:
            if not any(field.strip() for field in record):
                continue
            row = {name: record[i] if i < len(record) else None for name, i in columns.items()}
            yield _row_input(row, task, f"{where}:{current[0]}")
    except csv.Error as err:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise ValueError(f"{where}:{current[0]}: malformed {kind} ({err}); quote fields that hold the "
                         "delimiter or line breaks") from None


def _text_input(text: str, task: str, where: str) -> Any:
    """A line of text or a command-line argument; pair tasks split it at a tab."""
    text = check_unicode(text, where)
    if task == "pair_classification":
        first, tab, second = text.partition("\t")
        if not tab:
            raise ValueError(f"{where}: a pair task needs two texts separated by a tab (TEXT<TAB>TEXT_PAIR), "
                             "or a .jsonl/.csv file with 'text' and 'text_pair'")
        return (first, second)
    if task == "token_classification" and not text.split():
        raise ValueError(f"{where}: nothing to tag; give words")
    return text


def _row_input(row: Any, task: str, where: str) -> Any:
    """The input a JSON object or table row describes, checked against the task."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'text' key, got {type(row).__name__}")
    if task == "token_classification" and "tokens" in row:
        tokens = row["tokens"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{where}: 'tokens' must be a non-empty list of words, got {tokens!r:.60}")
        return [check_unicode(token, f"{where}: 'tokens'") for token in tokens]
    names = ("text", "text_pair") if task == "pair_classification" else ("text",)
    for name in names:
        if name not in row or row[name] is None:
            hint = " (or 'tokens')" if task == "token_classification" else ""
            raise ValueError(f"{where}: needs a {name!r}{hint} value; found {', '.join(map(repr, row)) or 'none'}")
        if not isinstance(row[name], str):
            raise ValueError(f"{where}: {name!r} must be a string, got {type(row[name]).__name__}")
        check_unicode(row[name], f"{where}: {name!r}")
    if task == "pair_classification":
        return (row["text"], row["text_pair"])
    if task == "token_classification" and not row["text"].split():
        raise ValueError(f"{where}: nothing to tag; give words")
    return row["text"]
