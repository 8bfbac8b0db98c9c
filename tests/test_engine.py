"""The serving engine apart from HTTP: cross-request batching equals one by one, mixed knobs in one forward pass,
explicit overload (queue full, unmeetable deadlines, infeasible knobs), priorities with aging, draining, degrade
mode, and the budget controller on a stream shifted from the calibration data.

Models are tiny and untrained (the staged-contract factories); the checks are about plumbing, not accuracy.
Torch runs on one thread here: the engine's batcher threads and a busy machine make more threads slower.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_staged_contract import _data, _split_threshold, _texts, cascade, early_exit

import summon
from summon.adaptive.knob import Knob
from summon.adaptive.plain import PlainPredictor
from summon.models import ModelConfig, build_model
from summon.serve.engine import (
    DeadlineUnmeetable,
    Draining,
    Engine,
    InfeasibleKnob,
    QueueFull,
    TooLarge,
    UnknownModel,
    knob_from,
    row_limits,
)

BUDGET = 0.6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A calibrated early-exit model (with measured latencies), a calibrated cascade and a plain predictor."""
    root = tmp_path_factory.mktemp("engine")
    exits = summon.load(early_exit(root), device="cpu")
    summon.calibrate(exits, _data(120, 0), budget=BUDGET, latency=True)
    chain = summon.load(cascade(root), device="cpu")
    summon.calibrate(chain, _data(120, 0), max_drop=0.05, latency=False)
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=7), "classification", 2)
    plain = PlainPredictor(built.model, built.featurizer, "classification", ["neg", "pos"],
                           {"architecture": built.architecture})  # what summon.load gives for a plain folder
    return {"early_exit": exits, "cascade": chain, "plain": plain}


def _same(served, alone):
    assert [(p.label, p.stage, p.cost) for p in served] == [(p.label, p.stage, p.cost) for p in alone]
    np.testing.assert_allclose([p.probs for p in served], [p.probs for p in alone], atol=1e-5)


def _knobs(predictor, texts):
    split = _split_threshold(predictor, texts)
    return [Knob(), Knob(threshold=split), Knob(max_drop=0.1), Knob(threshold=math.inf), Knob(threshold=-math.inf)]


@pytest.mark.parametrize("name", ["early_exit", "cascade"])
def test_concurrent_requests_share_batches_and_equal_one_by_one(models, name):
    predictor = models[name]
    texts = _texts(40, 3)
    knobs = _knobs(predictor, texts)
    jobs = [(texts[i * 3:i * 3 + 1 + i % 3], knobs[i % len(knobs)]) for i in range(12)]
    with Engine({name: predictor}, max_batch_rows=32, max_wait_ms=100, controller=False) as engine, \
            ThreadPoolExecutor(6) as pool:
        futures = list(pool.map(lambda job: engine.submit(name, job[0], knob=job[1]), jobs))
        results = [f.result(timeout=30) for f in futures]
    assert any(r.batch_rows > len(r.predictions) for r in results), "requests should have shared a batch"
    for (chunk, knob), result in zip(jobs, results, strict=True):
        _same(result.predictions, predictor.predict(chunk, knob=knob))
        assert result.knob == result.requested == knob and result.threshold == predictor.threshold_for(knob)


def test_mixed_knobs_run_in_one_forward_pass(models):
    predictor = models["early_exit"]
    texts = _texts(30, 4)
    knobs = [*_knobs(predictor, texts), Knob(budget=BUDGET)]
    engine = Engine({"m": predictor}, max_batch_rows=64, controller=False)
    futures = [engine.submit("m", texts[i * 5:i * 5 + 5], knob=k) for i, k in enumerate(knobs)]
    engine.start()
    results = [f.result(timeout=30) for f in futures]
    engine.stop()
    assert {r.batch for r in results} == {1} and results[0].batch_rows == 30
    assert {p.stage for p in results[4].predictions} == {0}  # threshold -inf: every row stops at once
    assert {p.stage for p in results[3].predictions} == {predictor.num_stages - 1}
    for i, (knob, result) in enumerate(zip(knobs, results, strict=True)):
        _same(result.predictions, predictor.predict(texts[i * 5:i * 5 + 5], knob=knob))
    stats = engine.stats()["m"]
    assert stats.batches == 1 and sum(stats.exits) == stats.rows == 30 and stats.answered == 6
    assert stats.deferred_rows == sum(p.stage > 0 for r in results for p in r.predictions)


@pytest.mark.parametrize("name", ["early_exit", "plain", "cascade"])
def test_batches_are_bounded_by_tokens_and_counted_in_tokens(models, name):
    predictor = models[name]
    texts = _texts(12, 21)
    if name == "cascade":  # rows count whitespace words: each stage tokenises for itself
        sizes = [len(t.split()) for t in texts]
    else:  # the model's own word pieces, special tokens included
        featurizer = predictor.featurizer
        sizes = [len(f["input_ids"]) for f in featurizer.encode([{"text": t} for t in texts], predictor.task)]
    bound = max(sizes) + min(sizes)  # room for two short rows, never three
    engine = Engine({"m": predictor}, max_batch_rows=64, max_batch_tokens=bound, controller=False)
    futures = [engine.submit("m", [t]) for t in texts]
    engine.start()
    results = [f.result(timeout=30) for f in futures]
    engine.stop()
    batches: dict[int, list[int]] = {}
    for size, result in zip(sizes, results, strict=True):
        batches.setdefault(result.batch, []).append(size)
    assert all(sum(b) <= bound for b in batches.values()) and len(batches) < len(texts)  # bounded, still shared
    stats = engine.stats()["m"]
    assert stats.batch_tokens.count == len(batches) and stats.batch_tokens.total == sum(sizes)
    for text, result in zip(texts, results, strict=True):  # features made at admission change no answer
        _same(result.predictions, predictor.predict([text]))
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive whole number"):
        Engine({"m": predictor}, max_batch_tokens=0)


def test_a_full_queue_refuses_with_retry_after_and_draining_fails_the_rest(models):
    engine = Engine({"m": models["early_exit"]}, max_queue_rows=4)
    queued = engine.submit("m", _texts(3, 5))
    with pytest.raises(QueueFull) as refused:
        engine.submit("m", _texts(2, 6))
    assert refused.value.retry_after_s >= 1 and "max_queue_rows" in str(refused.value)
    with pytest.raises(TooLarge, match="max_queue_rows"):
        engine.submit("m", _texts(5, 6))
    assert engine.stats()["m"].queue_rows == 3
    engine.stop(drain_seconds=0)  # never started: the queued request is failed, not lost
    with pytest.raises(Draining):
        queued.result(timeout=5)
    stats = engine.stats()["m"]
    assert stats.rejections == {"queue_full": 1, "deadline": 0, "infeasible_knob": 0, "too_large": 1, "draining": 1}


def test_an_unmeetable_deadline_is_refused_at_once_and_a_passed_one_fails(models):
    engine = Engine({"m": models["early_exit"]})
    started = time.monotonic()
    with pytest.raises(DeadlineUnmeetable, match="deadline_ms=1e-06") as refused:
        engine.submit("m", _texts(4, 7), deadline_ms=1e-6)
    assert time.monotonic() - started < 1.0 and refused.value.estimate_ms > 1e-6
    late = engine.submit("m", _texts(2, 7), deadline_ms=30)  # accepted: the queue is empty
    time.sleep(0.06)
    engine.start()
    with pytest.raises(DeadlineUnmeetable, match="passed"):
        late.result(timeout=10)
    ok = engine.submit("m", _texts(2, 8), deadline_ms=60_000).result(timeout=10)
    assert ok.stage_cap is None and len(ok.predictions) == 2
    engine.stop()
    assert engine.stats()["m"].rejections["deadline"] == 2


def test_row_limits_stop_rows_at_the_deadline_stage():
    limits = row_limits(0.7, 1, 2, 3)
    assert limits.tolist() == [[0.7, -math.inf, -math.inf]] * 2
    assert row_limits(0.7, None, 1, 2).tolist() == [[0.7, 0.7]]


def test_an_infeasible_budget_names_the_cheapest_value(models):
    predictor = models["early_exit"]
    engine = Engine({"m": predictor})
    cheapest = min(p.cost for p in predictor.calibration.table.points)
    with pytest.raises(InfeasibleKnob) as refused:
        engine.submit("m", ["a film"], knob=Knob(budget=cheapest / 2))
    assert refused.value.cheapest == pytest.approx(cheapest)
    assert f"budget={cheapest:.4g}" in str(refused.value)
    with pytest.raises(InfeasibleKnob, match="unknown knob key"):
        knob_from({"budgt": 0.4})
    with pytest.raises(InfeasibleKnob, match="budget must be"):
        knob_from({"budget": "cheap"})
    assert knob_from({"budget": 0.4}) == Knob(budget=0.4)
    with pytest.raises(UnknownModel, match="serves 'm'"):
        engine.submit("n", ["a film"])
    with pytest.raises(UnknownModel, match="Did you mean 'sst2'"):
        Engine({"sst2": predictor}).submit("sst", ["a film"])
    with pytest.raises(ValueError, match="input 1: expected a string"):
        engine.submit("m", ["a film", 3])
    assert engine.stats()["m"].rejections["infeasible_knob"] == 1
    engine.stop()


def test_high_priority_first_and_low_ages_up(models):
    predictor = models["cascade"]
    engine = Engine({"m": predictor}, max_batch_rows=1, age_ms=60_000)
    order = [("low", "a"), ("high", "b"), ("high", "c"), ("low", "d")]
    futures = {text: engine.submit("m", [text], priority=level) for level, text in order}
    engine.start()
    batches = {text: f.result(timeout=10).batch for text, f in futures.items()}
    engine.stop()
    assert sorted(batches, key=batches.get) == ["b", "c", "a", "d"]

    engine = Engine({"m": predictor}, max_batch_rows=1, age_ms=20)
    old = engine.submit("m", ["old"], priority="low")
    time.sleep(0.05)
    highs = [engine.submit("m", [t], priority="high") for t in ("x", "y")]
    engine.start()
    assert old.result(timeout=10).batch == 1  # aged past age_ms: served before the highs that came later
    assert sorted(f.result(timeout=10).batch for f in highs) == [2, 3]
    engine.stop()


def test_stop_finishes_queued_and_in_flight_work_and_refuses_new(models):
    predictor = models["early_exit"]
    engine = Engine({"m": predictor}, max_batch_rows=2).start()
    futures = [engine.submit("m", _texts(2, 10 + i)) for i in range(5)]
    engine.stop(drain_seconds=30)
    assert all(len(f.result(timeout=0).predictions) == 2 for f in futures)
    with pytest.raises(Draining):
        engine.submit("m", ["late"])
    stats = engine.stats()["m"]
    assert stats.answered == 5 and stats.rejections["draining"] == 1 and stats.queue_rows == stats.in_flight_rows == 0
    assert not engine.ready


def test_a_plain_predictor_takes_no_knob(models):
    plain = models["plain"]
    texts = _texts(6, 11)
    with Engine({"p": plain}) as engine:
        result = engine.submit("p", texts).result(timeout=10)
        with pytest.raises(InfeasibleKnob, match="has one stage, so it has no knob"):
            engine.submit("p", texts, knob=Knob(budget=0.5))
        empty = engine.submit("p", []).result(timeout=1)
    assert [p.label for p in result.predictions] == [p.label for p in plain.predict(texts)]
    np.testing.assert_allclose([p.probs for p in result.predictions], [p.probs for p in plain.predict(texts)],
                               atol=1e-6)
    assert result.threshold == np.inf and result.knob == Knob() and result.flops is None and empty.predictions == []
    assert engine.thresholds_in_force()["p"].default == np.inf and engine.info()["p"]["kind"] == "plain"
    assert {p.stage for p in result.predictions} == {0} and {p.cost for p in result.predictions} == {1.0}


def test_degrade_mode_lowers_the_budget_while_the_queue_is_past_half_full(models):
    predictor = models["early_exit"]
    knob = Knob(budget=0.9)
    engine = Engine({"m": predictor}, max_batch_rows=2, max_queue_rows=8, degrade=True, controller=False)
    futures = [engine.submit("m", _texts(2, 20 + i), knob=knob) for i in range(3)]
    engine.start()
    first, _, last = (f.result(timeout=10) for f in futures)
    engine.stop()
    assert first.degraded and first.threshold < first.calibrated_threshold and first.knob.budget < 0.9
    assert first.requested == knob
    assert not last.degraded and last.threshold == predictor.threshold_for(knob)
    assert engine.stats()["m"].degraded_requests == 1


def _shifted_stream(predictor, rows: int) -> list[str]:
    """Texts whose first-stage confidence is under the calibrated budget's threshold: on this stream more rows go
    on to later stages than on the calibration data, so the calibrated threshold overspends."""
    pool = _texts(6 * rows, 11)
    raws = predictor.stage_logits([{"text": t} for t in pool])
    scores = predictor.readout()(0, torch.from_numpy(raws[0]))[1].numpy()
    shifted = [t for t, s in zip(pool, scores, strict=True) if s < predictor.threshold_for(budget=BUDGET)]
    assert len(shifted) >= rows
    return shifted[:rows]


def _serve_stream(predictor, texts, *, controller: bool, window: int):
    with Engine({"m": predictor}, controller=controller, window=window, settle_rows=32, max_wait_ms=0) as engine:
        costs = []
        for i in range(0, len(texts), 8):
            result = engine.submit("m", texts[i:i + 8], knob=Knob(budget=BUDGET)).result(timeout=30)
            costs += [p.cost for p in result.predictions]
        return float(np.mean(costs[-window:])), engine.thresholds_in_force()["m"]


def test_the_budget_controller_holds_the_budget_on_a_shifted_stream(models):
    predictor = models["early_exit"]
    texts = _shifted_stream(predictor, 640)
    window = 160
    uncontrolled, _ = _serve_stream(predictor, texts, controller=False, window=window)
    controlled, in_force = _serve_stream(predictor, texts, controller=True, window=window)
    assert uncontrolled > BUDGET + 0.01, "the stream should overspend at the calibrated threshold"
    assert controlled <= BUDGET + 0.01, (controlled, uncontrolled)
    [state] = in_force.budgets
    assert state.budget == BUDGET and state.threshold < state.calibrated_threshold == predictor.threshold_for(
        budget=BUDGET)
    assert state.window_rows == window and state.window_mean_cost == pytest.approx(controlled)
    assert state.moves >= 1 and state.stage_drift is not None


def test_info_and_stats_are_ready_for_a_transport(models):
    engine = Engine({"exits": models["early_exit"], "plain": models["plain"]})
    engine.warmup((1, 4))
    with engine:
        engine.submit("exits", _texts(3, 30), knob=Knob(budget=BUDGET)).result(timeout=10)
        info = engine.info()
    json.dumps(info)
    assert info["exits"]["kind"] == "early_exit" and info["exits"]["operating_points"]
    assert info["exits"]["thresholds_in_force"]["budgets"][0]["budget"] == BUDGET
    stats = engine.stats()
    assert stats["exits"].answered == 1 and stats["exits"].batch_rows.count == 1 and stats["plain"].requests == 0
    assert stats["exits"].cost.count == 3 and stats["exits"].batch_rows.cumulative()[-1] == (math.inf, 1)
