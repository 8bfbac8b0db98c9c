"""The one run-time knob shared by every staged predictor (exits, cascades): budget, max drop or threshold.

A calibrated predictor carries an ``adaptive`` manifest section: the policy, per-stage temperatures, the
stage costs, the threshold table built on held-out rows, and the default operating point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from summon.adaptive.costs import StageCosts
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable


class KnobMixin:
    """Needs ``self.manifest`` (with an optional ``adaptive`` section), ``self.path`` and ``self.num_stages``."""

    manifest: dict[str, Any]
    path: Any
    num_stages: int
    calibrate_hint = "summon calibrate {where} --data SPLIT"

    @property
    def adaptive(self) -> dict[str, Any] | None:
        return self.manifest.get("adaptive")

    def _require_calibration(self, what: str) -> dict[str, Any]:
        if not self.adaptive:
            where = self.path or "PREDICTOR"
            raise ValueError(f"{what} needs calibrated thresholds: run `{self.calibrate_hint.format(where=where)}` "
                             "on held-out data first")
        return self.adaptive

    @property
    def table(self) -> ThresholdTable:
        return ThresholdTable.from_dict(self._require_calibration("a threshold table")["table"])

    @property
    def costs(self) -> StageCosts:
        return StageCosts.from_dict(self._require_calibration("stage costs")["costs"])

    def operating_point(self, *, budget: float | None = None, max_drop: float | None = None,
                        threshold: float | None = None, against: str = "reference") -> OperatingPoint | float:
        """The threshold chosen by one knob (or the calibrated default when none is given)."""
        given = [x is not None for x in (budget, max_drop, threshold)]
        if sum(given) > 1:
            raise ValueError("give at most one of budget=, max_drop= or threshold=")
        if threshold is not None:
            return float(threshold)
        if not self.adaptive and budget is None and max_drop is None:
            return float("inf")  # uncalibrated: every input runs to the last stage (the full model)
        table = self.table
        if budget is not None:
            return table.budget(budget)
        if max_drop is not None:
            return table.max_drop(max_drop, against=against)
        return float(self.adaptive["default"]["threshold"])

    def threshold_for(self, **knob: float | None) -> float:
        point = self.operating_point(**knob)
        return point.threshold if isinstance(point, OperatingPoint) else point

    def stage_fractions(self) -> list[float] | None:
        """Cost of answering at each stage as a fraction of the reference model (None before calibration)."""
        if not self.adaptive:
            return None
        return self.costs.fractions(self.adaptive.get("cost_unit", "flops"))

    def temperatures(self) -> list[float]:
        return list(self.adaptive["temperatures"]) if self.adaptive else [1.0] * self.num_stages

    def policy_name(self) -> str:
        return self.adaptive["policy"] if self.adaptive else "max_prob"


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
