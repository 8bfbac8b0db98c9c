"""The one run-time knob of every staged predictor: a budget, a maximum drop, a guaranteed drop or a threshold.

* ``budget=B``: the most accurate operating point whose mean cost is at most ``B`` (a fraction of the
  reference model, in the calibration's cost unit or ``unit``);
* ``max_drop=E``: the cheapest point whose disagreement with the reference model is at most ``E``
  (0.01 = 1 point);
* ``guaranteed=E, delta=D``: the cheapest point that Learn-then-Test certifies to lose at most ``E`` with
  probability at least ``1 - D``;
* ``threshold=T``: that confidence threshold itself.

With no knob the calibrated default operating point is used; an uncalibrated predictor runs every input to
its last stage (the full model). The same :class:`Knob` is what the CLI flags, the Python keywords and a
served request carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from summon.adaptive.calibration import Calibration
from summon.adaptive.thresholds import OperatingPoint

UNITS = ("flops", "ms")


@dataclass(frozen=True)
class Knob:
    """At most one of ``budget``, ``max_drop``, ``guaranteed`` (with ``delta``) or ``threshold``."""

    budget: float | None = None
    max_drop: float | None = None
    threshold: float | None = None
    guaranteed: float | None = None
    delta: float = 0.1
    unit: str | None = None  # cost unit of ``budget``: "flops" or "ms" (default: the calibration's)

    def __post_init__(self) -> None:
        given = [name for name in ("budget", "max_drop", "threshold", "guaranteed") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of budget, max_drop, threshold or guaranteed (got {', '.join(given)})")
        for name in given:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"budget must be a positive fraction of the full model's cost, got {self.budget}")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError(f"max_drop must be in [0, 1) (0.01 = 1 point), got {self.max_drop}")
        if self.guaranteed is not None and not 0 < self.guaranteed < 1:
            raise ValueError(f"guaranteed must be in (0, 1) (0.01 = 1 point), got {self.guaranteed}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.unit is not None and self.unit not in UNITS:
            raise ValueError(f"unit must be 'flops' or 'ms', got {self.unit!r}")

    @property
    def empty(self) -> bool:
        return all(getattr(self, n) is None for n in ("budget", "max_drop", "threshold", "guaranteed"))

    def describe(self) -> str:
        for name in ("budget", "max_drop", "threshold", "guaranteed"):
            value = getattr(self, name)
            if value is not None:
                extra = f", delta {self.delta}" if name == "guaranteed" else ""
                return f"{name} {value}{extra}"
        return "default"

    @classmethod
    def of(cls, **values: Any) -> Knob:
        """A knob from keyword arguments, ``None`` values ignored (``Knob.of(budget=None, max_drop=0.01)``)."""
        return cls(**{k: v for k, v in values.items() if v is not None})


def operating_point(calibration: Calibration | None, knob: Knob) -> OperatingPoint | None:
    """The table point the knob selects (None for a bare threshold, or uncalibrated with no knob)."""
    if knob.threshold is not None:
        return None
    if calibration is None:
        if knob.empty:
            return None
        raise ValueError(f"{knob.describe()} needs a calibrated predictor: run `summon calibrate` on held-out data")
    if knob.empty:
        return calibration.default.point
    unit = knob.unit or calibration.cost_unit
    table = calibration.table.in_unit(unit, calibration.fractions(unit))
    if knob.budget is not None:
        return table.budget(knob.budget)
    if knob.max_drop is not None:
        return table.max_drop(knob.max_drop, "reference")
    return table.guaranteed(knob.guaranteed, knob.delta)[0]


def threshold_for(calibration: Calibration | None, knob: Knob) -> float:
    """The confidence threshold the knob sets (``inf``, the full model, when uncalibrated with no knob)."""
    if knob.threshold is not None:
        return float(knob.threshold)
    point = operating_point(calibration, knob)
    return math.inf if point is None else point.threshold
