"""Dataset specifications and the canonical in-memory form every loader returns."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from summon.core.registry import suggest
from summon.data.catalog import CATALOG, describe_local, resolve_data_dir
from summon.data.labelset import refuse_lookalikes
from summon.data.readers import resolve_delimiter

Task = Literal["classification", "pair_classification", "token_classification"]
TASKS: tuple[str, ...] = ("classification", "pair_classification", "token_classification")

# Canonical column names per task; a spec's ``columns`` maps these to the names in the source.
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "pair_classification": ("text", "text_pair", "label"),
    "token_classification": ("tokens", "tags"),
}
LABEL_COLUMN = {"classification": "label", "pair_classification": "label", "token_classification": "tags"}


@dataclass
class DatasetSpec:
    """Where a split comes from. Exactly one of ``name``, ``path`` or ``hub`` is set.

    Attributes:
        name: a catalog name (``sst2``, ``ag_news``, ``imdb``, ``conll2003``, ``rte``, ``mrpc``, ``qnli``,
            ``bbc_news``), looked up first in the local data directory, else on the hub.
        path: a local JSONL / CSV / TSV file (``.gz`` allowed).
        hub: a Hugging Face ``datasets`` id, loaded with ``config`` and ``split``.
        config: the hub configuration name (``hub`` only).
        split: the split to load (catalog and hub).
        task: the task; catalog entries know theirs, files and hub sets need it.
        columns: canonical column -> source column, e.g. ``{text: sentence, label: polarity}``.
        labels: label names in id order; inferred from the data when omitted (sorted; ``O`` first for tags).
        limit: keep the first ``limit`` rows (after ``shuffle``), for quick runs.
        shuffle_seed: shuffle rows with this seed before ``limit`` (None keeps file order).
        format: ``jsonl``, ``csv`` or ``tsv``; inferred from the file name when omitted.
        quoting: for CSV/TSV files, ``none`` (a ``"`` is text; every line is one row, as the GLUE loaders
            read TSV) or ``csv`` (standard quoting); default ``none`` for TSV and ``csv`` for CSV.
        delimiter: for CSV/TSV files, the field separator: ``,``, ``;``, ``|`` or a tab (or its name: ``comma``,
            ``semicolon``, ``pipe``, ``tab``); default ``,`` for CSV and a tab for TSV, or the one the header uses
            when it has none of those (:func:`summon.data.readers.choose_delimiter`).
    """

    name: str | None = None
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    task: Task | None = None
    columns: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    limit: int | None = None
    shuffle_seed: int | None = None
    format: Literal["jsonl", "csv", "tsv"] | None = None
    quoting: Literal["none", "csv"] | None = None
    delimiter: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("name", "path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of 'name' (catalog), 'path' (local file) or 'hub' (datasets id); got {given or 'none'}"
            )
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"'limit' must be a positive number of rows, got {self.limit}")
        if self.labels is not None:
            names = [str(n).strip() for n in self.labels]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"'labels' names {', '.join(repeated)} more than once; each class needs one name")
            refuse_lookalikes(((n, f"item {i + 1}") for i, n in enumerate(names)), "'labels'")
        self._check_quoting()
        if self.path and self.task is None:
            raise ValueError("a local file needs 'task' (classification, pair_classification, token_classification)")
        if self.hub and self.task is None:
            raise ValueError("a hub dataset needs 'task' (classification, pair_classification, token_classification)")

    def _check_quoting(self) -> None:
        if self.delimiter is not None:
            resolve_delimiter(self.delimiter, "'delimiter'")
            if not self.path or self.format == "jsonl" or str(self.path).lower().removesuffix(".gz").endswith(
                    (".jsonl", ".json", ".ndjson")):
                raise ValueError("'delimiter' applies to local CSV/TSV files ('path:'); drop it for "
                                 f"{'JSONL' if self.path else 'catalog and hub data sets'}")
        if self.quoting is None:
            return
        if self.quoting not in ("none", "csv"):
            raise ValueError(f"'quoting' must be 'none' (quotes are text) or 'csv' (standard quoting), "
                             f"got {self.quoting!r}")
        if not self.path or self.format == "jsonl":
            raise ValueError("'quoting' applies to local CSV/TSV files ('path:'); drop it for "
                             f"{'JSONL' if self.path else 'catalog and hub data sets'}")

    def describe(self) -> str:
        """A short human-readable source, e.g. ``sst2:dev`` or ``data/x.jsonl``."""
        if self.name:
            return f"{self.name}:{self.split}"
        if self.hub:
            return f"hub:{self.hub}{'@' + self.config if self.config else ''}:{self.split}"
        return str(self.path)

    @classmethod
    def parse(cls, text: str, *, require_split: bool = False, **overrides: Any) -> DatasetSpec:
        """Parse the command-line form: ``sst2:dev``, ``hub:ID[@CONFIG][:SPLIT]`` or a file path.

        For example ``hub:glue@sst2:validation`` or ``hub:stanfordnlp/imdb:test``. Extra keyword
        arguments (``task``, ``columns``, ``labels``, ``limit``) are passed through. Without a split a catalog
        or hub set means its training split, unless ``require_split`` (evaluation and calibration, where a
        quiet "train" would measure on the data the model learnt from) makes that an error.
        """
        if text.startswith("hub:"):
            ident, _, split = text[4:].partition(":")
            hub, _, config = ident.partition("@")
            return cls(hub=hub, config=config or None, split=split or _default_split(text, require_split),
                       **overrides)
        head, _, split = text.partition(":")
        if head in CATALOG:
            return cls(name=head, split=split or _default_split(text, require_split), **overrides)
        _refuse_unknown_name(text, head)
        return cls(path=text, **overrides)


def _refuse_unknown_name(text: str, head: str) -> None:
    """``text`` is no file, and reads as a data set name (no folder, no extension): name the catalog."""
    path = Path(text).expanduser()
    if path.exists() or "/" in text or os.sep in text or path.suffix or Path(head).suffix:
        return
    raise ValueError(
        f"unknown data set '{head}': no catalog data set and no file has that name.{suggest(head, list(CATALOG))} "
        f"Catalog: {', '.join(sorted(CATALOG))}; or give a file path or hub:ID[:SPLIT]. "
        f"{describe_local(resolve_data_dir())}"
    )


def _default_split(text: str, require_split: bool) -> str:
    if require_split:
        known = CATALOG[text].splits() if text in CATALOG else None
        hint = f" ({', '.join(known)})" if known else ""
        raise ValueError(f"--data {text!r} names no split: say which one, e.g. {text}:dev or {text}:test{hint}. "
                         "Evaluation and calibration never default to the training split.")
    return "train"


@dataclass
class TaskData:
    """A loaded split in canonical form.

    ``examples`` hold ``text`` (and ``text_pair``) with an integer ``label`` for classification, or
    ``tokens`` with integer ``tags`` for token classification. ``label``/``tags`` are absent in unlabelled splits.
    """

    task: str
    labels: list[str]
    examples: list[dict[str, Any]]
    source: str

    @property
    def has_labels(self) -> bool:
        key = LABEL_COLUMN[self.task]
        return bool(self.examples) and all(key in ex for ex in self.examples)

    def fingerprint(self) -> str:
        """sha256 of the task, labels and examples: equal data gives an equal key (used by caches)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.task, self.labels], sort_keys=True).encode())
        for ex in self.examples:
            digest.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.examples)
