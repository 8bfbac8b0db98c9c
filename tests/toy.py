"""Small synthetic data sets and configs for fast offline tests (tiny models, a few hundred rows)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np

from summon.core.config import from_dict
from summon.training.config import RunConfig

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"  # tiny synthetic catalog (fixtures/make_data.py)

POSITIVE = "good great fun love best fine".split()
NEGATIVE = "bad terrible boring hate worst awful".split()
FILLER = "the movie was a film story plot acting and very really so".split()
NAMES = ["man", "woman", "children", "people"]  # words of the tiny vocabulary: one sub-token each
PLACES = ["city", "world", "bank", "market"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Texts whose label is decided by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        words += rng.sample(FILLER, rng.randint(0, 4))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["neg", "pos"][label]})
    return rows


def tagging_rows(n: int, seed: int) -> list[dict]:
    """Sentences with PER names and LOC places tagged in BIO."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.2:  # an entity is always followed by a filler word, so spans never touch
                tokens += [rng.choice(NAMES), rng.choice(NAMES), rng.choice(FILLER)]
                tags += ["B-PER", "I-PER", "O"]
            elif kind < 0.35:
                tokens += [rng.choice(PLACES), rng.choice(FILLER)]
                tags += ["B-LOC", "O"]
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def sentiment_files(root: Path, n_train: int = 256, n_dev: int = 64) -> tuple[Path, Path]:
    return (write_jsonl(root / "train.jsonl", sentiment_rows(n_train, 0)),
            write_jsonl(root / "dev.jsonl", sentiment_rows(n_dev, 1)))


def tagging_files(root: Path, n_train: int = 192, n_dev: int = 48) -> tuple[Path, Path]:
    return (write_jsonl(root / "tag_train.jsonl", tagging_rows(n_train, 2)),
            write_jsonl(root / "tag_dev.jsonl", tagging_rows(n_dev, 3)))


def run_config(out: Path, train: Path, dev: Path | None, *, task: str = "classification",
               method: str = "finetune", model: dict | None = None, **train_args) -> RunConfig:
    """A RunConfig for a tiny, quick run (no latency timing)."""
    data = {"train": {"path": str(train), "task": task}}
    if dev is not None:
        data["eval"] = {"path": str(dev), "task": task}
    raw = {
        "method": method, "output_dir": str(out), "data": data,
        "model": model or {"kind": "pretrained", "name": "tiny-bert", "max_length": 32},
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3, "progress": False, "log_every": 5, **train_args},
        "cost": {"latency": False, "flop_examples": 32},
        "cache_dir": str(out.parent / "cache"),
    }
    return from_dict(RunConfig, raw, source="test")


def gap_thresholds(values, margin: float = 1e-4) -> list[float]:
    """Midpoints between adjacent distinct values that are more than ``margin`` from every value."""
    v = np.unique(np.asarray(values, dtype=float))
    mids = [(a + b) / 2 for a, b in itertools.pairwise(v) if b - a > 2 * margin]
    return [m for m in mids if np.abs(v - m).min() > margin]


def median_threshold(values) -> float:
    """A threshold near the median of ``values`` (so some rows fall on each side) that no value is within
    1e-4 of (so float rounding cannot move a row across it)."""
    mids = gap_thresholds(values)
    if not mids:
        raise AssertionError("no usable gap between the scores")
    median = float(np.median(values))
    return min(mids, key=lambda m: abs(m - median))
