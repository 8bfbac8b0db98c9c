"""Stages of a cascade: separate models, each answering on raw inputs with its own tokenizer.

A stage turns canonical examples into raw logits ``[n, K]`` — or ``[n, K + 1]`` when it has a learned
"defer" output (the last column). Stages are local predictors (saved or in-process) or remote models
behind HTTP (:mod:`summon.adaptive.remote`). A stage that cannot answer raises :class:`StageUnavailable`;
the cascade then answers with the last stage that did, and marks those predictions. A local stage's cost is
counted and timed by :func:`~summon.measure.stage_costs.measure_costs`; a remote one measures itself
(``measure``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class StageUnavailable(RuntimeError):
    """A stage could not answer (a remote model timed out, refused the connection, or answered nonsense)."""


@dataclass
class LocalStage:
    """A :class:`summon.predictors.predictor.Predictor` used as a cascade stage (its own featurizer, its own batches)."""

    name: str
    predictor: Any
    path: str | None = None

    @property
    def labels(self) -> list[str]:
        return self.predictor.labels

    @property
    def defer_output(self) -> bool:
        return bool(self.predictor.manifest.get("architecture", {}).get("defer_output", False))

    def logits(self, examples: Sequence[dict[str, Any]], batch_size: int = 64) -> np.ndarray:
        if not examples:
            width = len(self.labels) + int(self.defer_output)
            return np.zeros((0, width), dtype=np.float32)
        rows = self.predictor.logits(examples, batch_size=batch_size, raw=True)
        return np.stack(rows).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"type": "local", "name": self.name, "path": self.path}


def split_defer(raw: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Class logits ``[n, K]`` and, if present, the defer logit column ``[n]`` of raw stage logits."""
    if raw.shape[1] == num_labels:
        return raw, None
    if raw.shape[1] == num_labels + 1:
        return raw[:, :num_labels], raw[:, num_labels]
    raise ValueError(f"a stage returned {raw.shape[1]} logits per row for {num_labels} labels")
