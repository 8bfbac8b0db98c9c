"""A CRF teacher's outputs for structured KD, computed once and cached on disk like the classification teacher
logits (:mod:`summon.training.teacher_cache`), so a KD epoch costs the student alone.

What is cached, per training row and over the chain the CRF scores (words, or sub-tokens with ``X``): the
emissions [T_i, L], the unary marginals [T_i, L] (``marginal_kl``) or the k best paths [T_i, k]
(``topk``), and once the transition matrix [L, L]. The teacher runs over the *student's* featurized rows
(the online teacher reads the same batches, so both paths give the same loss). The key hashes the
teacher's fingerprint, the student featurizer's settings, the data and what is cached, so a changed teacher,
tokenizer, ``max_length``, ``crf_over`` of the student, variant or ``k`` never reuses stale outputs. Files are
safetensors: each per-row array concatenated along T with the row lengths beside it (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from summon.data.batching import length_sorted_batches, to_device
from summon.data.features import collate
from summon.data.spec import TaskData
from summon.models.pretrained import cache_dir as default_cache_dir
from summon.training.teacher_cache import read_cached, write_cached

logger = logging.getLogger(__name__)
CACHE_VERSION = "1"
SHARED = ("teacher_transitions",)  # one array for every row

RowsFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], Any], list[dict[str, np.ndarray]]]


def cache_key(teacher_fingerprint: str, featurizer_config: dict, data: TaskData, contents: dict) -> str:
    payload = json.dumps([CACHE_VERSION, "crf", teacher_fingerprint, featurizer_config, contents], sort_keys=True)
    return hashlib.sha256((payload + data.fingerprint()).encode()).hexdigest()[:32]


def pack(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Rows of per-row arrays [T_i, ...] (and the shared ones) as flat tensors plus ``lengths`` [N]."""
    out = {"lengths": torch.tensor([len(r["teacher_emissions"]) for r in rows], dtype=torch.long)}
    for key in rows[0]:
        if key in SHARED:
            out[key] = torch.from_numpy(np.ascontiguousarray(rows[0][key]))
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(np.concatenate([r[key] for r in rows])))
    return out


def unpack(tensors: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
    lengths = tensors["lengths"].tolist()
    ends = np.cumsum([0, *lengths])
    flat = {k: v.numpy() for k, v in tensors.items() if k != "lengths"}
    return [{k: (v if k in SHARED else v[ends[i]:ends[i + 1]]) for k, v in flat.items()} for i in range(len(lengths))]


@torch.no_grad()
def compute_rows(teacher: torch.nn.Module, features: list[dict], rows_fn: RowsFn, method_cfg: Any, *, pad_id: int,
                 batch_size: int, device: torch.device | str) -> list[dict[str, np.ndarray]]:
    """``rows_fn`` over length-sorted batches of ``features``, returned in input order (teacher in eval mode)."""
    was_training, home = teacher.training, next(teacher.parameters()).device
    teacher.to(device).eval()
    out: list[Any] = [None] * len(features)
    try:
        for idx in tqdm(list(length_sorted_batches(features, batch_size)), desc="teacher outputs", leave=False):
            batch = to_device(collate([features[i] for i in idx], pad_id), device)
            for i, row in zip(idx, rows_fn(teacher, batch, method_cfg), strict=True):
                out[i] = row
    finally:
        teacher.train(was_training).to(home)  # an accelerator's memory is the student's during training
    return out


def crf_teacher_rows(teacher, features: list[dict], data: TaskData, rows_fn: RowsFn, method_cfg: Any, *,
                     featurizer_config: dict, pad_id: int, cache_dir: str | Path | None = None,
                     batch_size: int = 128, use_cache: bool = True) -> list[dict[str, np.ndarray]]:
    """The CRF teacher's outputs for each of ``features`` (the student's rows of ``data``), from cache when possible.

    Args:
        teacher: a :class:`summon.predictors.predictor.Predictor` whose model is a CRF tagger.
        rows_fn: the method's ``(teacher model, batch, cfg) -> per-row dicts``
            (:func:`summon.methods.structured_kd.teacher_rows`).
        method_cfg: its config; ``method_cfg.cached_contents()`` names what is cached (part of the key).
        featurizer_config: the student featurizer's settings (part of the key).
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(teacher.fingerprint, featurizer_config, data, method_cfg.cached_contents())
    path = root / "teacher" / f"crf-{key}.safetensors"
    rows = read_cached(path, unpack, len(features), "CRF teacher outputs", data.source) if use_cache else None
    if rows is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = compute_rows(teacher.model, features, rows_fn, method_cfg, pad_id=pad_id, batch_size=batch_size,
                            device=device)
        if use_cache:
            write_cached(path, pack(rows), data, "CRF teacher outputs")
    return rows
