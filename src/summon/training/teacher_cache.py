"""Teacher outputs computed once and cached on disk, keyed by teacher and data fingerprints.

Several students distilled from one teacher on one data set then cost one teacher pass. The key hashes
the teacher's weights (from its manifest), its featurizer settings and the examples, so a changed
teacher, tokenizer length or data set never reuses stale logits. Files are safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from summon.core.files import follow_umask
from summon.data.spec import TaskData
from summon.models.pretrained import cache_dir as default_cache_dir

logger = logging.getLogger(__name__)
CACHE_VERSION = "1"


def cache_key(teacher_fingerprint: str, featurizer_config: dict, data: TaskData) -> str:
    payload = json.dumps([CACHE_VERSION, teacher_fingerprint, featurizer_config], sort_keys=True)
    return hashlib.sha256((payload + data.fingerprint()).encode()).hexdigest()[:32]


def _pack(rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
    lengths = [1 if r.ndim == 1 else r.shape[0] for r in rows]
    flat = np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows]).astype(np.float32)
    return {"logits": torch.from_numpy(flat), "lengths": torch.tensor(lengths, dtype=torch.long),
            "per_word": torch.tensor([int(rows[0].ndim == 2)])}


def _unpack(tensors: dict[str, torch.Tensor]) -> list[np.ndarray]:
    flat = tensors["logits"].numpy()
    lengths = tensors["lengths"].tolist()
    per_word = bool(tensors["per_word"].item())
    out, start = [], 0
    for n in lengths:
        block = flat[start:start + n]
        out.append(block if per_word else block[0])
        start += n
    return out


def teacher_logits(teacher, data: TaskData, *, cache_dir: str | Path | None = None, batch_size: int = 128,
                   use_cache: bool = True) -> list[np.ndarray]:
    """Teacher logits per example of ``data`` ([C], or [num_words, C] for tagging), from cache when possible.

    Args:
        teacher: a :class:`summon.predictors.predictor.Predictor`.
        data: the split to label.
        cache_dir: cache root (default ``$SUMMON_CACHE`` or ``~/.cache/summon``); files go under ``teacher/``.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    settings = teacher.featurizer.to_config()
    quantization = (getattr(teacher, "manifest", None) or {}).get("quantization")
    if quantization:  # an int8 teacher keeps its fp32 weights' fingerprint, not its fp32 outputs
        settings = {**settings, "quantization": quantization}
    key = cache_key(teacher.fingerprint, settings, data)
    path = root / "teacher" / f"{key}.safetensors"
    rows = read_cached(path, _unpack, len(data), "teacher logits", data.source) if use_cache else None
    if rows is None:
        rows = teacher.logits(data.examples, batch_size=batch_size, progress="teacher outputs")
        if use_cache:
            write_cached(path, _pack(rows), data, "teacher logits")
    return rows


def read_cached(path: Path, unpack: Any, rows: int, what: str, source: str) -> list | None:
    """The cached rows at ``path`` (``unpack`` of its tensors) when the file is there, readable and holds
    ``rows`` rows; else None (an unreadable file is logged and ignored: it is computed again)."""
    if not path.is_file():
        return None
    try:
        out = unpack(load_file(str(path)))
    except Exception as err:
        logger.warning("ignoring unreadable teacher cache %s (%s)", path, err)
        return None
    if len(out) != rows:
        return None
    logger.info("%s for %s from cache %s", what, source, path)
    return out


def write_cached(path: Path, tensors: dict[str, torch.Tensor], data: TaskData, what: str) -> None:
    """Write ``tensors`` to ``path`` atomically (a temporary file, then a rename), with the data's source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"source": data.source, "examples": str(len(data))})
    follow_umask(tmp)  # safetensors writes owner-only: a shared cache is read by others too
    os.replace(tmp, path)
    logger.info("cached %s for %s at %s", what, data.source, path)
