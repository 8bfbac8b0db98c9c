"""The serving engine's planner on its own: pure functions over a calibration fitted to synthetic logits (no
predictor, no model): knob to threshold and its refusals, plans (controllers, degrade mode, deadline caps),
per-row thresholds, the thresholds in force, and the knob's JSON form.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from summon.adaptive.calibration import CalibrationSpec, fit_calibration
from summon.adaptive.knob import Knob, threshold_for
from summon.measure.stage_costs import StageCosts
from summon.serve import planner
from summon.serve.control import ControlConfig, Controllers
from summon.serve.queue import InfeasibleKnob

STAGES = 3


def calibrated(ms: bool = True):
    """Three stages, each more accurate and dearer than the last; latencies 1, 2 and 4 ms a row when ``ms``."""
    gen = np.random.default_rng(0)
    gold = gen.integers(0, 4, 400)
    raws = gen.normal(size=(400, STAGES, 4)) * 2 + np.array([1.0, 2.0, 4.0])[None, :, None] * np.eye(4)[gold][:, None]
    costs = StageCosts(flops=[1.0, 2.0, 4.0], flops_full=4.0, ms=[1.0, 2.0, 4.0] if ms else None,
                       ms_full=4.0 if ms else None)
    return fit_calibration(raws, gold, costs, CalibrationSpec(rule="budget", value=0.6), num_labels=4)


@pytest.fixture(scope="module")
def calibration():
    return calibrated()


def cheapest(calibration) -> float:
    return min(p.cost for p in calibration.table.points)


def test_a_knob_sets_the_calibrated_threshold_or_is_refused_with_the_cheapest_budget(calibration):
    for knob in (Knob(), Knob(budget=0.6), Knob(max_drop=0.05), Knob(threshold=0.7)):
        assert planner.knob_threshold("m", calibration, knob) == threshold_for(calibration, knob)
    with pytest.raises(InfeasibleKnob, match="model 'm': budget") as refused:
        planner.knob_threshold("m", calibration, Knob(budget=cheapest(calibration) / 2))
    assert refused.value.cheapest == pytest.approx(cheapest(calibration))
    with pytest.raises(InfeasibleKnob, match="measured latency") as refused:
        planner.knob_threshold("m", calibrated(ms=False), Knob(budget=0.6, unit="ms"))
    assert refused.value.cheapest is None  # no table in a unit the calibration did not measure
    assert planner.knob_threshold("m", None, Knob()) == math.inf  # uncalibrated: the full model
    with pytest.raises(InfeasibleKnob, match="calibrated"):
        planner.knob_threshold("m", None, Knob(budget=0.5))


def test_a_plan_runs_at_the_knobs_threshold_or_its_controllers(calibration):
    knob = Knob(budget=0.6)
    threshold = planner.knob_threshold("m", calibration, knob)
    plain = planner.plan(calibration, knob, threshold, None, num_stages=STAGES)
    assert (plain.knob, plain.threshold, plain.stage_cap, plain.degraded, plain.controller) == (
        knob, threshold, None, False, None)
    controllers = Controllers(limit=1)
    controllers.add(knob, lambda: planner.new_controller(calibration, knob, threshold, ControlConfig(settle_rows=1)))
    controllers.add(Knob(budget=0.7), lambda: pytest.fail("over the limit: no controller is made"))
    controller = controllers.get(knob)
    assert controller.observe([1.0] * 8, [STAGES - 1] * 8) < 0  # overspent: the threshold moves down
    steered = planner.plan(calibration, knob, threshold, controller, num_stages=STAGES)
    assert steered.threshold == controller.threshold < threshold and steered.controller is controller
    assert planner.plan(calibration, knob, threshold, controller, num_stages=STAGES, remaining_ms=10_000.0,
                        batch_rows=1).controller is controller  # a deadline that stops nothing earlier
    forced = planner.in_force(calibration, controllers.states())
    assert forced.default == threshold_for(calibration, Knob())
    assert [(s.budget, s.threshold, s.calibrated_threshold) for s in forced.budgets] == [
        (0.6, controller.threshold, threshold)]
    assert forced.to_dict()["budgets"][0]["moves"] == 1


def test_degrade_mode_lowers_the_point_toward_the_cheapest_past_half_full(calibration):
    knob = Knob(budget=0.9)
    threshold = planner.knob_threshold("m", calibration, knob)
    assert not planner.plan(calibration, knob, threshold, None, num_stages=STAGES, degrade=True, fill=0.5).degraded
    assert not planner.plan(calibration, knob, threshold, None, num_stages=STAGES, fill=0.9).degraded  # off
    half = planner.plan(calibration, knob, threshold, None, num_stages=STAGES, degrade=True, fill=0.75)
    full = planner.plan(calibration, knob, threshold, None, num_stages=STAGES, degrade=True, fill=1.0)
    assert half.degraded and full.degraded and half.controller is None
    assert full.threshold <= half.threshold < threshold
    assert full.knob.budget == pytest.approx(cheapest(calibration)) and full.knob.unit is None
    nominal = max((p for p in calibration.table.points if p.threshold <= threshold), key=lambda p: p.threshold).cost
    assert half.knob.budget == pytest.approx(nominal - 0.5 * (nominal - cheapest(calibration)))
    bottom = min(p.threshold for p in calibration.table.points)
    assert planner.degraded_point(calibration, knob, bottom, 1.0) is None  # nothing lower to go to
    assert planner.degraded_point(None, knob, threshold, 1.0) is None


def test_a_deadline_caps_the_rows_at_the_last_stage_whose_latency_fits(calibration, caplog):
    knob = Knob()
    threshold = planner.knob_threshold("m", calibration, knob)

    def cap(remaining_ms: float, rows: int):
        return planner.plan(calibration, knob, threshold, None, num_stages=STAGES, remaining_ms=remaining_ms,
                            batch_rows=rows).stage_cap

    assert cap(10.0, 4) == 1  # 4 rows: 4 and 8 ms fit, 16 does not
    assert cap(16.0, 4) is None  # the last stage fits: no cap
    with caplog.at_level(logging.WARNING):
        assert cap(1.0, 4) == 0  # even stage 0 does not fit: it answers anyway
    assert "even stage 0" in caplog.text
    assert planner.stage_cap(calibrated(ms=False), 1.0, 4, STAGES) is None  # no latencies: the wait only
    assert planner.stage_cap(None, 1.0, 4, STAGES) is None
    assert planner.least_row_ms(calibration) == 1.0 and planner.least_row_ms(calibrated(ms=False)) is None


def test_row_limits_say_a_plan_per_row_and_stage():
    assert planner.row_limits(0.7, 1, 2, 3).tolist() == [[0.7, -math.inf, -math.inf]] * 2
    assert planner.row_limits(0.7, None, 1, 2).tolist() == [[0.7, 0.7]]
    assert planner.row_limits(0.7, 0, 0, 2).shape == (0, 2)


def test_knobs_to_and_from_json():
    assert planner.knob_from(None) is None
    assert planner.knob_from({"budget": 0.4, "unit": "ms"}) == Knob(budget=0.4, unit="ms")
    with pytest.raises(InfeasibleKnob, match="unknown knob key"):
        planner.knob_from({"budgt": 0.4})
    with pytest.raises(InfeasibleKnob, match="must be an object"):
        planner.knob_from([0.4])
    assert planner.knob_dict(None) is None and planner.knob_dict(Knob()) == {}
    assert planner.knob_dict(Knob(guaranteed=0.05, delta=0.2)) == {"guaranteed": 0.05, "delta": 0.2}
    assert [planner.json_float(x) for x in (None, 0.5, math.inf, -math.inf)] == [None, 0.5, "inf", "-inf"]
