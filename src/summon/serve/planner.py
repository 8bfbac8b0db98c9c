"""The planner: the operating point each request's rows run at, and the per-row thresholds that say it.

Pure functions over values: a knob, the predictor's calibration (its threshold table and measured stage
costs, read by the caller and passed in) and the model's budget controllers go in; a :class:`Plan` per request
and ``[rows, stages]`` thresholds come out. No threads, no predictor calls; the queue's types are all it
imports of the engine.

* :func:`knob_threshold`: the threshold a knob sets on the calibration, or :class:`InfeasibleKnob` naming the
  cheapest feasible budget;
* :func:`plan`: the request's threshold — its budget controller's (:mod:`summon.serve.control`), lowered by
  :func:`degraded_point` in degrade mode — and the stage its deadline caps it at (:func:`stage_cap`);
* :func:`row_limits`: a plan as the executor's thresholds for the request's rows;
* :func:`in_force`: the thresholds used now, the default point's and each controlled budget's.

**Degrade mode**: at queue fill ``f`` past half, an operating point of nominal cost ``c`` is lowered to cost
``c - (2f - 1)(c - cheapest)``, as the budget knob of that cost (:func:`degraded_point`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from summon.adaptive.calibration import Calibration
from summon.adaptive.knob import KNOBS, Knob, deadline_stage, operating_point, threshold_for
from summon.adaptive.thresholds import ThresholdTable
from summon.serve.control import BudgetController, ControlConfig, ControlState
from summon.serve.queue import InfeasibleKnob

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """How one request's rows run in a batch."""

    knob: Knob | None  # the knob the rows run at: the request's, or the lowered budget when degraded
    threshold: float | None
    stage_cap: int | None = None  # the last stage the deadline allows, when before the last
    degraded: bool = False
    controller: BudgetController | None = None  # the rows run at its threshold: they feed it


@dataclass(frozen=True)
class ThresholdsInForce:
    """A staged model's thresholds now: the default operating point's, and each controlled budget's."""

    default: float
    budgets: list[ControlState]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (thresholds ``"inf"``/``"-inf"`` as strings)."""
        return {"default": json_float(self.default), "budgets": [
            {**asdict(s), "calibrated_threshold": json_float(s.calibrated_threshold),
             "threshold": json_float(s.threshold)} for s in self.budgets]}


# --- knobs --------------------------------------------------------------------------------------------------


def json_float(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")


def knob_dict(knob: Knob | None) -> dict[str, Any] | None:
    """A knob's given values (``{}`` for the default operating point, None for none)."""
    if knob is None:
        return None
    out = {k: v for k, v in asdict(knob).items() if v is not None and k != "delta"}
    if knob.guaranteed is not None:
        out["delta"] = knob.delta
    return out


def knob_from(values: Mapping[str, Any] | None) -> Knob | None:
    """A :class:`Knob` from a request's JSON object (``{"budget": 0.4}``), or :class:`InfeasibleKnob` saying
    what is wrong with it."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise InfeasibleKnob(f"the knob must be an object such as {{\"budget\": 0.4}}, got {type(values).__name__}")
    unknown = sorted(set(values) - {*KNOBS, "delta", "unit"})
    if unknown:
        raise InfeasibleKnob(f"unknown knob key(s) {', '.join(map(repr, unknown))}; give one of "
                             f"{', '.join(KNOBS)} (with 'delta' for guaranteed, 'unit' for budget)")
    try:
        return Knob.of(**values)
    except (TypeError, ValueError) as err:
        raise InfeasibleKnob(str(err)) from None


def table(calibration: Calibration | None, unit: str | None) -> ThresholdTable | None:
    """The calibration's operating points with costs in ``unit`` (None: the calibration's own)."""
    if calibration is None:
        return None
    unit = unit or calibration.cost_unit
    return calibration.table.in_unit(unit, calibration.fractions(unit))


def cheapest(calibration: Calibration | None, unit: str | None) -> float | None:
    """The cheapest feasible budget (None uncalibrated, or for a unit the calibration did not measure)."""
    try:
        points = table(calibration, unit)
    except ValueError:  # a unit the calibration did not measure
        return None
    return None if points is None else min(p.cost for p in points.points)


def knob_threshold(model: str, calibration: Calibration | None, knob: Knob, *, stages: int | None = None) -> float:
    """The threshold ``knob`` sets on the calibration; :class:`InfeasibleKnob` for one nothing meets (and for
    any knob on a one-stage predictor, ``stages=1``)."""
    try:
        if knob.unit is not None and calibration is not None:
            calibration.fractions(knob.unit)  # refuses a unit the calibration did not measure
        return float(threshold_for(calibration, knob, stages=stages, where="it"))
    except ValueError as err:
        raise InfeasibleKnob(f"model {model!r}: {err}", cheapest(calibration, knob.unit)) from None


def new_controller(calibration: Calibration, knob: Knob, threshold: float, config: ControlConfig) -> BudgetController:
    """A budget knob's controller, on the ladder of the calibration table's thresholds, starting at
    ``threshold`` and expecting the exits of the knob's calibrated point."""
    point = operating_point(calibration, knob)
    return BudgetController(knob.budget, knob.unit, [p.threshold for p in calibration.table.points], threshold,
                            None if point is None else point.exit_counts, config)


# --- plans --------------------------------------------------------------------------------------------------


def plan(calibration: Calibration | None, knob: Knob, threshold: float, controller: BudgetController | None, *,
         num_stages: int, degrade: bool = False, fill: float = 0.0, remaining_ms: float | None = None,
         batch_rows: int = 0) -> Plan:
    """One request's plan in a batch of ``batch_rows`` rows taken at queue fill ``fill``: its threshold (its
    controller's when it has one, lowered in degrade mode past half full) and, with ``remaining_ms`` to its
    deadline, the stage that caps it. A capped or degraded request does not feed its controller."""
    current = controller.threshold if controller is not None else threshold
    out = Plan(knob, current, controller=controller)
    if degrade and fill > 0.5:
        lowered = degraded_point(calibration, knob, current, fill)
        if lowered is not None:
            out = Plan(lowered[1], lowered[0], degraded=True)
    if remaining_ms is not None:
        out.stage_cap = stage_cap(calibration, remaining_ms, batch_rows, num_stages)
        if out.stage_cap is not None:
            out.controller = None
    return out


def degraded_point(calibration: Calibration | None, knob: Knob, threshold: float,
                   fill: float) -> tuple[float, Knob] | None:
    """Degrade mode's lower operating point at queue fill ``fill`` (> 0.5): ``(threshold, Knob(budget=...))``,
    or None when it would not lower ``threshold``. The nominal cost (the calibrated cost of the point at
    ``threshold``) moves toward the cheapest point by ``2 * fill - 1`` of the way."""
    points = table(calibration, knob.unit)
    if points is None:
        return None
    least = min(p.cost for p in points.points)
    below = [p for p in points.points if p.threshold <= threshold]
    nominal = max(below, key=lambda p: p.threshold).cost if below else least
    share = min(1.0, max(0.0, 2.0 * fill - 1.0))
    budget = max(least, nominal - share * (nominal - least))
    point = points.budget(budget)
    if not point.threshold < threshold:
        return None
    return point.threshold, Knob(budget=budget, unit=knob.unit)


def stage_cap(calibration: Calibration | None, remaining_ms: float, rows: int, num_stages: int) -> int | None:
    """The last stage whose measured latency per row lets ``rows`` rows finish in ``remaining_ms`` (> 0), by the
    one rule (:func:`~summon.adaptive.knob.deadline_stage`; stage 0 when none fits: it always answers); None
    when that is the last stage, or without measured latencies (the deadline then bounds the wait only)."""
    ms = None if calibration is None else calibration.costs.ms
    if not ms:
        return None
    cap = deadline_stage(ms, remaining_ms, rows, stages=num_stages, where=calibration.costs.device)
    return cap if cap < num_stages - 1 else None


def least_row_ms(calibration: Calibration | None) -> float | None:
    """The least a row costs, measured: the first stage's latency per row (None without measured latencies)."""
    if calibration is not None and calibration.costs.ms:
        return float(calibration.costs.ms[0])
    return None


def row_limits(threshold: float, stage_cap: int | None, rows: int, stages: int) -> np.ndarray:
    """``[rows, stages]`` thresholds: ``threshold`` everywhere, ``-inf`` from ``stage_cap`` on (rows stop
    there at the latest)."""
    limits = np.full((rows, stages), threshold, dtype=np.float64)
    if stage_cap is not None:
        limits[:, stage_cap:] = -np.inf
    return limits


def in_force(calibration: Calibration | None, budgets: list[ControlState]) -> ThresholdsInForce:
    """The thresholds used now: the default point's, and the controlled budgets' (their states)."""
    return ThresholdsInForce(default=float(threshold_for(calibration, Knob())), budgets=budgets)
