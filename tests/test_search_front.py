"""The pure parts of ``summon auto``: the front, the choice at a target, the certificate and its coverage, the
held-out cut, durations and the candidate plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from summon.adaptive.thresholds import binom_cdf
from summon.search.candidates import plan_candidates
from summon.search.config import AutoConfig, parse_duration
from summon.search.front import (
    Point,
    at_target,
    certify,
    clopper_pearson,
    front,
    guaranteed_choice,
    three_parts,
)


def _p(name, cost, accuracy):
    return Point(name, math.inf, cost, accuracy)


def test_front_keeps_what_no_cheaper_point_beats():
    points = [_p("a", 0.1, 0.80), _p("b", 0.2, 0.78), _p("c", 0.3, 0.85), _p("d", 0.3, 0.84), _p("e", 1.0, 0.85)]
    assert [p.candidate for p in front(points)] == ["a", "c"]


def test_at_target_picks_the_cheapest_within_the_drop_or_the_best_within_the_budget():
    points = [_p("a", 0.1, 0.80), _p("b", 0.4, 0.89), _p("c", 0.6, 0.895), _p("t", 1.0, 0.90)]
    assert at_target(points, teacher_accuracy=0.90, max_drop=0.01).candidate == "b"
    assert at_target(points, teacher_accuracy=0.90, max_drop=0.001).candidate == "t"
    assert at_target(points, teacher_accuracy=0.90, budget=0.5).candidate == "b"
    assert at_target(points, teacher_accuracy=0.90, budget=0.05) is None
    assert at_target(points[:1], teacher_accuracy=0.90, max_drop=0.01) is None
    with pytest.raises(ValueError, match="exactly one"):
        at_target(points, teacher_accuracy=0.9)


@pytest.mark.parametrize("k, n", [(0, 20), (3, 20), (19, 20), (40, 500)])
def test_clopper_pearson_is_the_exact_binomial_bound(k, n):
    upper = clopper_pearson(k, n, 0.05)
    assert binom_cdf(k, n, upper) == pytest.approx(0.05, abs=1e-6)  # the largest p not rejected at 0.05
    lower = clopper_pearson(k, n, 0.05, upper=False)
    assert lower <= k / n <= upper
    assert clopper_pearson(n, n, 0.05) == 1.0


def test_the_certificate_covers_the_true_drop_at_least_one_minus_delta_of_the_time():
    rng = np.random.default_rng(0)
    delta, n, misses = 0.1, 200, 0
    p_teacher, p_flip_down, p_flip_up = 0.9, 0.06, 0.3  # true drop: P(t right, c wrong) - P(t wrong, c right)
    truth = p_teacher * p_flip_down - (1 - p_teacher) * p_flip_up
    for _ in range(400):
        teacher = rng.random(n) < p_teacher
        chosen = teacher ^ np.where(teacher, rng.random(n) < p_flip_down, rng.random(n) < p_flip_up)
        misses += certify(teacher, chosen, delta=delta).drop_upper < truth
    assert misses / 400 <= delta


def test_certify_reports_the_observed_drop_and_whether_the_bound_meets_the_target():
    teacher = np.array([True] * 90 + [False] * 10)
    chosen = teacher.copy()
    chosen[:2] = False
    cert = certify(teacher, chosen, delta=0.1, max_drop=0.01)
    assert cert.drop == pytest.approx(0.02) and cert.drop_upper == pytest.approx(clopper_pearson(2, 100, 0.1))
    assert cert.holds is False
    assert certify(teacher, teacher, delta=0.1, max_drop=0.05).holds is True
    with pytest.raises(ValueError, match="paired rows"):
        certify(teacher, chosen[:5], delta=0.1)


def _h(name, cost, harmful):
    return Point(name, math.inf, cost, 0.9, harmful=harmful)


def test_learn_then_test_stops_at_the_first_point_it_cannot_reject():
    rows, eps, delta = 400, 0.02, 0.1  # binom_cdf(k, 400, 0.02) <= 0.1 for k <= 3
    points = [_h("teacher", 1.0, 0), _h("a", 0.8, 1), _h("b", 0.6, 3), _h("c", 0.5, 9), _h("d", 0.2, 0)]
    assert guaranteed_choice(points, rows, eps, delta).candidate == "b"  # d is cheaper but comes after c's failure
    assert guaranteed_choice(points[:1], 100, 0.01, 0.1) is None  # 0.99 ** 100 > 0.1: too few rows
    with pytest.raises(ValueError, match="no harmful count"):
        guaranteed_choice([Point("x", 1.0, 1.0, 0.9)], rows, eps, delta)


def test_the_held_out_cut_is_disjoint_covering_and_seeded():
    a, b, c = three_parts(200, seed=3)
    assert len(a) + len(b) + len(c) == 200 and not set(a) & set(b) and not set(b) & set(c) and not set(a) & set(c)
    assert [len(a), len(b), len(c)] == [80, 60, 60]
    assert all(np.array_equal(x, y) for x, y in zip(three_parts(200, seed=3), (a, b, c), strict=True))
    with pytest.raises(ValueError, match="at least 34 labelled held-out rows"):
        three_parts(20, seed=0)


@pytest.mark.parametrize("text, seconds", [("60m", 3600), ("1.5h", 5400), ("90s", 90), ("2", 120), (5, 300)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-3m", "0", "", "1d"])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match=r"60m, 1\.5h or 90s|positive duration"):
        parse_duration(bad)


@pytest.mark.parametrize("options, message", [
    ({"max_drop": 0.01, "budget": 0.5}, "give one target"),
    ({"max_drop": 1.5}, "max_drop must be a number between 0 and 1"),
    ({"budget": 0}, "budget must be a fraction"),
    ({"budget": 0.5, "guaranteed": True}, "--guaranteed bounds an accuracy drop"),
    ({"time": "forever"}, "a duration like 60m"),
    ({"train_limit": 0}, "train_limit must be a positive whole number"),
    ({"delta": 1}, "delta must be a number between 0 and 1"),
])
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        AutoConfig(**options)


def test_the_target_defaults_to_one_point():
    assert AutoConfig().target == {"max_drop": 0.01} and AutoConfig(budget=0.3).target == {"budget": 0.3}


def test_the_plan_fits_the_task_and_keeps_what_only_needs():
    encoder = {"kind": "encoder", "layers": 6, "pooling": "mean"}
    names = [c.name for c in plan_candidates("classification", encoder)]
    assert names[:2] == ["teacher", "teacher_int8"] and {"exits_frozen", "continue_2", "ngram_kd", "cascade_ngram",
                                                         "truncated2_kd", "cascade_truncated2"} <= set(names)
    assert [c.name for c in plan_candidates("token_classification", encoder)] == ["teacher", "teacher_int8"]
    hf = [c.name for c in plan_candidates("classification", {"kind": "hf", "layers": 12}, int8=False)]
    assert hf == ["teacher", "ngram_kd", "cascade_ngram"]  # exits and truncation need a summon encoder teacher
    kept = [c.name for c in plan_candidates("classification", encoder, only=("cascade_ngram",))]
    assert kept == ["teacher", "ngram_kd", "cascade_ngram"]
    with pytest.raises(ValueError, match=r"--only: nope is no candidate .* choose from teacher"):
        plan_candidates("classification", encoder, only=("nope",))
