"""Batched inference of a model over featurized examples, shared by predictors, training and the teacher cache.

Examples are sorted by length before batching (less padding), then results are put back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from summon.data.batching import length_sorted_batches, to_device
from summon.data.features import Feature, collate


def word_level(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token logits [B, L, C] -> logits at each word's first sub-token [B, W, C] (padding rows are junk)."""
    index = batch["word_starts"].unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def split_word_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Per example [num_words, C]; words cut off by truncation get zero logits (so they predict label 0)."""
    return split_word_rows(word_level(logits, batch), batch)


def split_word_rows(words: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Word-level scores [B, W, C] -> per example [num_words, C], zero rows for words cut by truncation."""
    words = words.float().cpu().numpy()
    kept = batch["word_mask"].sum(dim=1).tolist()
    total = batch["num_words"].tolist()
    out = []
    for row, k, n in zip(words, kept, total, strict=True):
        full = np.zeros((n, row.shape[-1]), dtype=np.float32)
        full[:k] = row[:k]
        out.append(full)
    return out


@torch.inference_mode()
def predict_logits(
    model: nn.Module, features: Sequence[Feature], task: str, *, pad_id: int = 0, batch_size: int = 64,
    device: torch.device | str | None = None, progress: bool | str = False,
) -> list[np.ndarray]:
    """Logits per example, in input order: [C] for sequence tasks, [num_words, C] for tagging.

    A CRF tagger (a model with ``word_scores``, :class:`~summon.models.tagger.CRFTagger`) gives its Viterbi
    path as one-hot rows instead of logits, so the arg-max of each row is the decoded tag.

    Args:
        model: called as ``model(batch)``; put in eval mode for the call and restored afterwards.
        features: featurized examples (see :mod:`summon.data.features`).
        progress: show a progress bar (a string is used as its description).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[Any] = [None] * len(features)
    batches = list(length_sorted_batches(features, batch_size))
    desc = progress if isinstance(progress, str) else "predict"
    try:
        for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
            batch = to_device(collate([features[i] for i in idx], pad_id), device)
            logits = model(batch)
            rows = (_tagging_rows(model, logits, batch) if task == "token_classification"
                    else list(logits.float().cpu().numpy()))
            for i, row in zip(idx, rows, strict=True):
                results[i] = row
    finally:
        model.train(was_training)
    return results


def _tagging_rows(model: nn.Module, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    if logits.ndim == 4:  # a tagger with exits: [B, S, L, C] -> per example [S, num_words, C]
        stages = [split_word_logits(logits[:, k], batch) for k in range(logits.shape[1])]
        return [np.stack(rows) for rows in zip(*stages, strict=True)]
    if hasattr(model, "word_scores"):
        return split_word_rows(model.word_scores(batch, logits), batch)
    return split_word_logits(logits, batch)
