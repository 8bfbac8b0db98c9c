"""The one run-time knob of every staged predictor: a budget, a maximum drop, a guaranteed drop or a threshold.

* ``budget=B``: the most accurate operating point whose mean cost is at most ``B`` (a fraction of the
  reference model, in the calibration's cost unit or ``unit``);
* ``max_drop=E``: the cheapest point whose disagreement with the reference model is at most ``E``
  (0.01 = 1 point);
* ``guaranteed=E, delta=D``: the cheapest point that Learn-then-Test certifies to lose at most ``E`` with
  probability at least ``1 - D``;
* ``threshold=T``: that confidence threshold itself.

A value that cannot be meant (NaN, a budget below the cheapest stage's cost, a drop outside [0, 1), a
threshold outside the calibrated score's range) is refused with the valid range (:data:`ALLOWED`) and,
for a budget, the cheapest feasible point. With no knob the calibrated default operating point is used; an
uncalibrated predictor runs every input to its last stage (the full model). The same :class:`Knob` is what
the CLI flags, the Python keywords and a served request carry.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from summon.adaptive.calibration import Calibration
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable

logger = logging.getLogger(__name__)

UNITS = ("flops", "ms")
KNOBS = ("budget", "max_drop", "threshold", "guaranteed")
ALLOWED = {
    "budget": "a finite fraction of the reference model's cost above 0 (0.4 = 40%), at least the cheapest "
              "stage's cost fraction",
    "max_drop": "in [0, 1) (0.01 = 1 point of disagreement with the reference model)",
    "guaranteed": "in (0, 1) (0.01 = 1 point of disagreement with the reference model)",
    "delta": "in (0, 1) (0.1: the guarantee holds with probability 90%)",
    "threshold": "a number (a row stops at the first stage whose confidence score reaches it; max_prob, margin, "
                 "entropy, gate, learned and defer scores lie in [0, 1], patience counts agreeing stages), +inf (every "
                 "input runs to the last stage) or -inf (every input stops at the first)",
}
_IN_RANGE = {
    "budget": lambda v: math.isfinite(v) and v > 0,
    "max_drop": lambda v: 0 <= v < 1,
    "guaranteed": lambda v: 0 < v < 1,
    "delta": lambda v: 0 < v < 1,
    "threshold": lambda v: not math.isnan(v),
}


def check_knob_value(name: str, value: Any) -> float:
    """``value`` as a float if it is a number in ``name``'s range (:data:`ALLOWED`), else a ValueError saying
    what is allowed. NaN is never allowed; infinity only as a threshold."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {ALLOWED[name]}, got {value!r} ({type(value).__name__})")
    if not _IN_RANGE[name](float(value)):
        raise ValueError(f"{name} must be {ALLOWED[name]}, got {value!r}")
    return float(value)


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
        given = [name for name in KNOBS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of budget, max_drop, threshold or guaranteed (got {', '.join(given)})")
        for name in [*given, "delta"]:
            check_knob_value(name, getattr(self, name))
        if self.unit is not None and self.unit not in UNITS:
            raise ValueError(f"unit must be 'flops' or 'ms', got {self.unit!r}")

    @property
    def empty(self) -> bool:
        return all(getattr(self, n) is None for n in KNOBS)

    def describe(self) -> str:
        for name in KNOBS:
            value = getattr(self, name)
            if value is not None:
                extra = f", delta {self.delta}" if name == "guaranteed" else ""
                return f"{name} {value}{extra}"
        return "default"

    @classmethod
    def of(cls, **values: Any) -> Knob:
        """A knob from keyword arguments, ``None`` values ignored (``Knob.of(budget=None, max_drop=0.01)``)."""
        return cls(**{k: v for k, v in values.items() if v is not None})


def one_stage_message(where: Any, what: str, given: str | None = None) -> str:
    """Why a one-stage predictor refuses ``what`` (a knob, calibration): there is nothing to choose."""
    name = where or "this predictor"
    if what == "calibration":
        return (f"{name} has one stage, so it has no stages to calibrate: train it with model.exits (e.g. 'all'), "
                "or build a cascade with summon.cascade([...])")
    return (f"{name} has one stage, so it has no knob (got {given or what}); give the knob to an early-exit model or "
            "a cascade, or drop it")


def refuse_knob(knob: Knob, stages: int | None, where: Any = None) -> None:
    """The one place a knob on a one-stage predictor is refused (``stages`` None: not known, nothing checked)."""
    if stages == 1 and (not knob.empty or knob.unit is not None):
        given = knob.describe() if not knob.empty else f"unit {knob.unit}"
        raise ValueError(one_stage_message(where, "knob", given))


def operating_point(calibration: Calibration | None, knob: Knob, *, stages: int | None = None,
                    where: Any = None) -> OperatingPoint | None:
    """The table point the knob selects (None for a bare threshold, or uncalibrated with no knob)."""
    refuse_knob(knob, stages, where)
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
        return table.budget(check_budget(table, knob.budget))
    if knob.max_drop is not None:
        return table.max_drop(knob.max_drop, "reference")
    return table.guaranteed(knob.guaranteed, knob.delta)[0]


def check_budget(table: ThresholdTable, budget: float) -> float:
    """``budget`` if some operating point of ``table`` fits it and it is not above every point's cost (or 1);
    else a ValueError giving the range and the cheapest feasible point."""
    costs = [p.cost for p in table.points]
    low, high = min(costs), max(1.0, max(costs))
    if low - 1e-12 <= budget <= high + 1e-9:
        return budget
    if budget < low:
        side, fix = "below the cheapest operating point", f"budget={low:.4g} for the cheapest point"
    else:
        side, fix = "above the cost of every input running to the end", f"budget={high:.4g} or less"
    raise ValueError(f"budget {budget:g} is {side}: with this calibration a budget must be from {low:.4g} (the "
                     f"cheapest feasible point: every input pays at least the first stage) to {high:.4g} (every "
                     f"input runs to the last stage), a fraction of the reference model's cost in {table.cost_unit}. "
                     f"Give {fix}")


def check_threshold(threshold: float, calibration: Calibration | None, *, stages: int | None = None,
                    where: Any = None) -> float:
    """``threshold`` if it is a number (or ±inf) that the calibrated score can meet or miss: a finite threshold
    outside the scorer's range ([0, 1]; [0, stages] for patience) cannot be meant, e.g. 90 for 90%."""
    threshold = check_knob_value("threshold", threshold)
    refuse_knob(Knob(threshold=threshold), stages, where)
    if calibration is None or math.isinf(threshold):
        return threshold
    high = len(calibration.temperatures) if calibration.policy == "patience" else 1
    if not 0 <= threshold <= high:
        raise ValueError(f"threshold {threshold:g} is outside the range of {calibration.policy} scores [0, {high}]: "
                         f"give a threshold in [0, {high}], +inf (every input runs to the last stage) or -inf "
                         "(every input stops at the first)")
    return threshold


def threshold_for(calibration: Calibration | None, knob: Knob, *, stages: int | None = None,
                  where: Any = None) -> float:
    """The confidence threshold the knob sets (``inf``, the full model, when uncalibrated with no knob).
    A one-stage predictor (``stages=1``) takes no knob (:func:`refuse_knob`)."""
    refuse_knob(knob, stages, where)
    if knob.threshold is not None:
        return check_threshold(knob.threshold, calibration)
    point = operating_point(calibration, knob)
    return math.inf if point is None else point.threshold


def deadline_stage(ms: Sequence[float] | None, deadline_ms: float, rows: int, *, stages: int,
                   where: str | None = None) -> int:
    """The last stage whose measured latency per row (``ms``: cumulative, per example) lets ``rows`` rows finish
    within ``deadline_ms``; stage 0 when even that does not fit (it always answers). A one-stage predictor's
    only stage answers whatever the deadline.

    Raises:
        ValueError: For a deadline that is not a positive number, or no measured latencies (a staged predictor
            calibrated with latency off, or not calibrated).
    """
    if not deadline_ms > 0:
        raise ValueError(f"deadline_ms must be a positive number of milliseconds, got {deadline_ms}")
    if stages == 1:
        return 0
    if not ms:
        raise ValueError("deadline_ms needs measured stage latencies; calibrate with latency on (the default)")
    fits = [k for k, each in enumerate(ms) if each * rows <= deadline_ms]
    if not fits:
        logger.warning("deadline %.3g ms: even stage 0 needs %.3g ms for %d rows (measured on %s); it answers "
                       "anyway", deadline_ms, ms[0] * rows, rows, where or "this machine")
        return 0
    return fits[-1]
