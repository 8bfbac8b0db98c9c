"""The cascade that continues (recipe ``sst2_cascade_continue``): the student is the teacher's own first layers,
frozen, plus a distilled exit; a deferred row runs the teacher's remaining layers on the student's hidden states.
Its last exit must be the teacher exactly, deferring must cost the teacher alone, and it runs as an early exit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy import FIXTURE_DATA

from summon import load
from summon.adaptive.calibration import CalibrationSpec
from summon.adaptive.cascade_stages import LocalStage
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec
from summon.measure.profile import measure_costs
from summon.training.loop import train
from summon.training.recipe import load_run_config

TINY = ["train.epochs=1", "train.max_steps=4", "train.batch_size=8", "train.progress=false", "cost.latency=false",
        "cost.flop_examples=16", "data.train.limit=48", "data.eval.limit=24", f"data.data_dir={FIXTURE_DATA}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("continue")
    train(load_run_config("sst2_finetune", [*TINY, "model.name=tiny-bert", "train.max_steps=8",
                                            f"output_dir={out / 'teacher'}", f"cache_dir={out / 'cache'}"]))
    teacher = out / "teacher" / "model"
    # tiny-bert has 2 layers: the student is layer 1, the teacher's own head the last exit
    train(load_run_config("sst2_cascade_continue", [*TINY, f"teacher={teacher}", "model.exits=[1, 2]",
                                                    f"output_dir={out / 'continue'}", f"cache_dir={out / 'cache'}"]))
    return load(teacher, device="cpu"), load(out / "continue" / "model", device="cpu")


@pytest.fixture(scope="module")
def examples():
    return load_split(DatasetSpec(name="sst2", split="dev"), data_dir=FIXTURE_DATA).examples


def test_the_student_is_the_teachers_frozen_first_layers_and_its_last_exit_is_the_teacher(trained, examples):
    teacher, cascade = trained
    assert isinstance(cascade, EarlyExitPredictor) and cascade.num_stages == 2
    teacher_state = teacher.model.state_dict()
    for name, value in cascade.model.backbone.state_dict().items():  # untouched by the student's training
        match = [v for k, v in teacher_state.items() if k.endswith(name)]
        assert match and any(torch.equal(value, m) for m in match), name
    stages = cascade.stage_logits(examples)
    np.testing.assert_allclose(stages[-1], LocalStage("teacher", teacher).logits(examples, 16), atol=1e-5)


def test_a_deferred_row_costs_the_teacher_alone_not_student_plus_teacher(trained, examples):
    teacher, cascade = trained
    costs = cascade.measure_costs(examples, latency=False)
    fractions = costs.fractions("flops")
    assert 0.3 < fractions[0] < 0.7  # one layer of two, plus embeddings and a head
    assert fractions[1] == pytest.approx(1.0, abs=1e-3)
    features = teacher.featurizer.encode(list(examples), teacher.task)
    alone = measure_costs(teacher.model, features, teacher.featurizer.pad_id, latency=False)["flops_per_example"]
    assert costs.flops[1] == pytest.approx(alone, rel=1e-3)  # + the student's head: a few hundred FLOPs


def test_it_calibrates_and_answers_like_any_early_exit(trained, examples):
    _, cascade = trained
    cascade.calibrate(load_split(DatasetSpec(name="sst2", split="dev"), data_dir=FIXTURE_DATA),
                      CalibrationSpec(rule="budget", value=0.8), latency=False)
    full = cascade.run_examples(examples, float("inf"))
    assert (full.stage == 1).all()
    cheap = cascade.run_examples(examples, -float("inf"))
    assert (cheap.stage == 0).all()
    one_by_one = [cascade.run_examples([e], cascade.threshold_for()).stage[0] for e in examples]
    np.testing.assert_array_equal(cascade.run_examples(examples, cascade.threshold_for()).stage, one_by_one)
