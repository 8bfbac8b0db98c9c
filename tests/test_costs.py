"""Cost is measured once: one function over a kind's stage runner (FLOPs counted by torch, milliseconds timed by the
one timing loop), with one stated meaning of a stage's milliseconds that every kind reports."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_staged_contract import FACTORIES, _data
from torch import nn

import summon
from summon.adaptive.cascade import CascadePredictor
from summon.adaptive.cascade_stages import LocalStage
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.adaptive.kinds import KINDS
from summon.adaptive.remote import RemoteStage
from summon.data.features import collate
from summon.measure.cost import FlopMeter
from summon.measure.stage_costs import MS_INCLUDES, StageCosts, StageMeasurement, measure_costs
from summon.measure.timing import MIN_RUNS, time_call, time_calls
from summon.models import ModelConfig, build_model
from summon.serve.ray_app import HandleStage

WIDTH, CLASSES = 8, 2
PER_STAGE = 2 * WIDTH * WIDTH + 2 * WIDTH * CLASSES  # one Linear(w, w) and one Linear(w, c) read-out, per row


class Chain:
    """A toy stage runner: stage k is a Linear(w, w) on the previous stage's state and a Linear(w, c) read-out.
    It hands rows on by ``unpack`` and ``begin`` (no ``follow``)."""

    def __init__(self, stages: int = 3):
        gen = torch.Generator().manual_seed(0)
        self.layers = [nn.Linear(WIDTH, WIDTH) for _ in range(stages)]
        self.heads = [nn.Linear(WIDTH, CLASSES) for _ in range(stages)]
        for module in self.layers + self.heads:
            nn.init.normal_(module.weight, generator=gen)
        self.num_stages = stages

    def length(self, item):
        return item["length"]

    def begin(self, stage, pieces):
        return torch.stack([p["x"] for p in pieces] if stage == 0 else list(pieces))

    def run(self, stage, x):
        hidden = torch.relu(self.layers[stage](x))
        return hidden, self.heads[stage](hidden)

    def unpack(self, stage, hidden, rows):
        return [(hidden[i], 1) for i in rows]


class Following(Chain):
    """The same runner, handing a whole batch on as it is."""

    def follow(self, stage, hidden):
        return hidden


class SelfMeasured(Following):
    """Stage 1 measures itself (as a remote stage does): it reports its FLOPs and milliseconds."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def measure(self, stage, examples, *, latency=True, **rule):
        if stage != 1:
            return None
        self.asked.append((len(examples), latency, sorted(rule)))
        return StageMeasurement(1000.0, 5.0 if latency else None, "remote over there")


def _examples(n: int = 40) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(WIDTH, generator=gen), "length": i % 7} for i in range(n)]


# --- FLOPs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", [Chain(), Following()], ids=["unpack", "follow"])
def test_answering_at_stage_k_costs_stages_0_to_k(runner):
    costs = measure_costs(runner, _examples(), latency=False)
    assert costs.flops == [PER_STAGE * (k + 1) for k in range(3)]  # exact: torch counts 2 FLOPs a multiply-add
    assert costs.flops_full == costs.flops[-1]  # no reference given: every stage
    assert costs.ms is None and costs.ms_includes is None and costs.batch_size is None


def test_the_reference_is_every_stage_one_stage_alone_or_what_the_kind_runs():
    runner = Following()
    alone = measure_costs(runner, _examples(), reference=-1, latency=False)
    assert alone.flops_full == PER_STAGE and alone.fractions()[-1] == 3.0
    ran = []
    head = nn.Linear(WIDTH, CLASSES)
    only_head = measure_costs(runner, _examples(), reference=lambda pieces: ran.append(len(pieces)) or head(
        torch.stack([p["x"] for p in pieces])), latency=False, batch_size=16)
    assert only_head.flops_full == 2 * WIDTH * CLASSES and ran == [16, 16, 8]  # on each counted batch


def test_stage_flops_equal_a_count_by_hand_on_a_tiny_early_exit_model():
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=3, exits="embeddings+all",
                                    max_length=32, init_seed=3), "classification", 2)
    predictor = EarlyExitPredictor(built.model, built.featurizer, "classification", ["neg", "pos"], {})
    examples = _data(n=45, seed=2).examples  # two batches of the longest-first order
    costs = predictor.measure_costs(examples, latency=False)
    model, meter = built.model.eval(), FlopMeter()
    features = predictor.inputs(examples)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    by_hand, full = [0] * model.num_stages, 0
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            batch = collate([features[i] for i in order[start:start + 32]], built.featurizer.pad_id)
            state, spent = meter(model.begin, batch)
            for k in range(model.num_stages):  # answering at k: the input stage, layers and heads 0..k
                state, layers = meter(model.run_to, k, state)
                spent += layers + meter(model.exit_logits, k, state)[1]
                by_hand[k] += spent
            full += meter(model.full_logits, batch)[1]
    assert costs.flops == [f / len(examples) for f in by_hand]
    assert costs.flops_full == full / len(examples)
    assert costs.flops == sorted(costs.flops) and costs.flops[-1] > costs.flops_full  # heads cost something


def test_cumulative_costs_are_monotone_for_every_kind(tmp_path):
    for name in sorted(KINDS.names()):
        (tmp_path / name).mkdir()
        predictor = summon.load(FACTORIES[name](tmp_path / name), device="cpu")
        costs = predictor.measure_costs(_data(n=30, kind=name).examples, latency=False)
        assert len(costs.flops) == predictor.num_stages, name
        assert all(b > a for a, b in zip(costs.flops, costs.flops[1:], strict=False)), name
        assert costs.flops[0] > 0 and 0 < costs.flops_full <= costs.flops[-1] * (1 + 1e-12), name


# --- stages that measure themselves ---------------------------------------------------------------------------


def test_a_stage_that_measures_itself_plugs_in():
    runner = SelfMeasured()
    costs = measure_costs(runner, _examples(), timing_rows=8, warmup=1, repeats=3)
    assert costs.flops == [PER_STAGE, PER_STAGE + 1000.0, 2 * PER_STAGE + 1000.0]
    assert costs.ms[1] == pytest.approx(costs.ms[0] + 5.0) and costs.ms[2] > costs.ms[1]
    assert costs.device == "cpu, remote over there" and costs.batch_size == 8
    assert runner.asked == [(8, True, ["max_seconds", "repeats", "warmup"])]  # the timing batch, the one rule
    quiet = SelfMeasured()
    assert measure_costs(quiet, _examples(), latency=False).flops == costs.flops
    assert quiet.asked == [(32, False, ["max_seconds", "repeats", "warmup"])]


class _Measured:
    """A cascade stage that is not local (say, remote) and measures itself."""

    name, labels, defer_output = "far", ["neg", "pos"], False

    def logits(self, examples, batch_size=64):
        return np.zeros((len(examples), 2), np.float32)

    def measure(self, examples, *, latency=True, **rule):
        return StageMeasurement(500.0, 3.0 if latency else None, "remote far")


def test_a_cascade_asks_its_remote_stage_through_the_one_stage_method(tmp_path):
    plain = summon.load(FACTORIES["cascade"](tmp_path), device="cpu").stages[0]
    cascade = CascadePredictor([plain, _Measured()], "classification", ["neg", "pos"])
    examples = _data(n=20).examples
    costs = cascade.measure_costs(examples)
    local = CascadePredictor([plain, LocalStage("again", plain.predictor)], "classification", ["neg", "pos"])
    assert costs.flops == [local.measure_costs(examples, latency=False).flops[0],
                           local.measure_costs(examples, latency=False).flops[0] + 500.0]
    assert costs.flops_full == 500.0 and 3.0 <= costs.ms_full < 3.1  # the last stage alone, from the examples
    assert costs.ms[1] == pytest.approx(costs.ms[0] + 3.0) and costs.device == "cpu, remote far"
    # a remote model behind HTTP and a Ray Serve deployment measure themselves by the same method
    assert HandleStage.measure is RemoteStage.measure


# --- milliseconds ---------------------------------------------------------------------------------------------


def test_stage_0_and_the_reference_include_featurisation():
    def slow_inputs(examples):
        time.sleep(0.02)
        return list(examples)

    costs = measure_costs(Following(), _examples(), inputs=slow_inputs, reference=-1, timing_rows=4, warmup=0,
                          repeats=3)
    per_example = 0.02 * 1000.0 / 4  # 5 ms per example of the batch of 4
    assert costs.ms[0] >= per_example and costs.ms_full >= per_example  # the full model starts from text too
    assert costs.ms[1] - costs.ms[0] < per_example  # later stages are not charged for it
    assert costs.ms_includes == MS_INCLUDES and "inputs()" in MS_INCLUDES and "stages 0..k" in MS_INCLUDES


def test_an_early_exit_model_whose_featurizer_is_slow_shows_it_in_stage_0(tmp_path):
    predictor = summon.load(FACTORIES["early_exit"](tmp_path), device="cpu")
    encode = predictor.inputs

    def slow(examples):
        time.sleep(0.064)
        return encode(examples)

    fast = predictor.measure_costs(_data(n=20).examples)
    predictor.inputs = slow  # the kind's featurisation, as measure_costs reads it
    costs = predictor.measure_costs(_data(n=20).examples)
    assert costs.flops == fast.flops  # featurisation is timed, never counted
    assert costs.ms[0] >= 2.0 > fast.ms[0] and costs.ms_full >= 2.0  # 64 ms over a batch of 32: 2 ms each
    assert costs.ms[-1] - costs.ms[0] < 2.0


def test_every_kind_says_what_its_milliseconds_include(tmp_path):
    for name in sorted(KINDS.names()):
        (tmp_path / name).mkdir()
        predictor = summon.load(FACTORIES[name](tmp_path / name), device="cpu")
        costs = predictor.measure_costs(_data(n=20, kind=name).examples, latency=True)
        assert isinstance(costs, StageCosts) and costs.ms_includes == MS_INCLUDES, name
        assert costs.batch_size == 32 and costs.device == "cpu" and len(costs.ms) == predictor.num_stages, name
        assert costs.ms == sorted(costs.ms) and costs.ms_full > 0, name
        saved = json.loads(json.dumps(costs.to_dict()))
        assert saved["ms_includes"] == MS_INCLUDES and StageCosts.from_dict(saved) == costs


def test_costs_saved_before_ms_includes_still_load():
    old = {"flops": [1.0, 2.0], "flops_full": 2.0, "ms": [0.1, 0.2], "ms_full": 0.2, "batch_size": 32, "device": "cpu"}
    costs = StageCosts.from_dict(old)
    assert costs.ms_includes is None and costs.fractions("ms") == [0.5, 1.0]


# --- the one timing loop --------------------------------------------------------------------------------------


def test_the_one_timing_loop_warms_up_repeats_and_interleaves():
    calls = []
    first, second = time_calls(lambda: calls.append("a"), lambda: calls.append("b"), warmup=2, repeats=4)
    assert len(first) == len(second) == 4 and calls == ["a", "b"] * 6
    assert all(t >= 0 for t in first + second)
    slow = time_call(lambda: time.sleep(0.01), warmup=0, repeats=50, max_seconds=0.0)
    assert len(slow) == MIN_RUNS  # out of time at once, but never fewer than the minimum
    assert len(time_call(lambda: None, repeats=1, max_seconds=0.0)) == 1
    for bad in ({"warmup": -1}, {"repeats": 0}, {"max_seconds": -1.0}):
        with pytest.raises(ValueError, match="repeats >= 1"):
            time_call(lambda: None, **bad)
    with pytest.raises(ValueError, match="at least one"):
        time_calls()
