"""The ``learned`` exit and deferral score (:mod:`summon.adaptive.learned`).

Checks: the logistic fit is at the optimum of its objective (gradient ~ 0, same as L-BFGS); features computed
for a batch equal features computed one row at a time; the executor's scores equal the offline ones through
regrouping; every staged kind calibrated with ``policy="learned"`` predicts the same batched and one by one,
and after a save/load round trip; the models see only the temperature rows, and Learn-then-Test still holds
over many random splits; bad input (a mistyped policy, a malformed saved section) is refused by name.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import stage_scores
from test_staged_contract import FACTORIES, TAGGERS, _data, _texts, check_batched_equals_one_by_one
from toy import median_threshold, sentiment_rows, write_jsonl

import summon
from summon.adaptive.calibration import Calibration, CalibrationSpec, fit_calibration, split_rows
from summon.adaptive.executor import execute
from summon.adaptive.learned import (
    FEATURES,
    LearnedScores,
    all_stage_features,
    fit_learned,
    fit_logistic,
    logistic_loss,
    stage_features,
)
from summon.adaptive.policies import entropy, margin, max_prob, patience
from summon.adaptive.scoring import Readout, score_all
from summon.adaptive.staged import row_lengths
from summon.adaptive.thresholds import exit_stage
from summon.cli.main import main
from summon.measure.stage_costs import StageCosts
from summon.predictors.saved import MANIFEST, read_json_manifest

# --- the logistic fit -----------------------------------------------------------------------------------------


def _logistic_problem(seed: int, n: int = 300, f: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 3.0, f)
    z = x @ rng.normal(size=f) + 0.3
    return x, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _lbfgs(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """The same objective minimised by torch's L-BFGS: the naive reference."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


@pytest.mark.parametrize("l2", [0.0, 1e-3, 0.1])
def test_the_logistic_fit_is_at_the_optimum_and_matches_lbfgs(l2):
    x, y = _logistic_problem(int(l2 * 1000))
    w, b = fit_logistic(x, y, l2)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    grad_w, grad_b = x.T @ (p - y) / len(y) + 2 * l2 * w, float(np.mean(p - y))
    assert np.abs(grad_w).max() < 1e-8 and abs(grad_b) < 1e-8
    ref_w, ref_b = _lbfgs(x, y, l2)
    np.testing.assert_allclose(w, ref_w, atol=1e-5)
    assert b == pytest.approx(ref_b, abs=1e-5)
    assert logistic_loss(x, y, w, b, l2) <= logistic_loss(x, y, ref_w, ref_b, l2) + 1e-12
    for dw in np.eye(x.shape[1]) * 1e-3:  # and no nearby point is better (a tiny brute-force check)
        for sign in (1, -1):
            assert logistic_loss(x, y, w + sign * dw, b, l2) >= logistic_loss(x, y, w, b, l2)


def test_the_logistic_fit_of_one_feature_matches_a_grid_search():
    x, y = _logistic_problem(7, n=80, f=1)
    w, b = fit_logistic(x, y, 0.05)
    gw, gb = np.meshgrid(np.linspace(-4, 4, 401), np.linspace(-3, 3, 301), indexing="ij")
    z = x[:, 0, None, None] * gw + gb  # [N, 401, 301]: the loss of every grid point at once
    losses = np.mean(np.logaddexp(0.0, z) - y[:, None, None] * z, axis=0) + 0.05 * gw**2
    best = np.unravel_index(losses.argmin(), losses.shape)
    best_w, best_b = gw[best], gb[best]
    assert logistic_loss(x, y, np.array([best_w]), best_b, 0.05) == pytest.approx(losses[best])
    assert abs(w[0] - best_w) <= 0.02 + 1e-9 and abs(b - best_b) <= 0.02 + 1e-9


def test_targets_all_alike_give_a_constant_score():
    x, _ = _logistic_problem(1, n=20)
    w, b = fit_logistic(x, np.ones(20), 1e-3)
    assert not w.any() and b == pytest.approx(np.log(20.5 / 0.5))
    with pytest.raises(ValueError, match="rows to learn from"):
        fit_logistic(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="l2"):
        fit_logistic(x, np.ones(20), -1.0)


# --- features -------------------------------------------------------------------------------------------------


def _probs(seed: int, n: int = 30, stages: int = 4, classes: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, classes, generator=gen) * 2
    logits = base + torch.randn(n, stages, classes, generator=gen)  # correlated stages: agreement runs happen
    return [logits[:, k].double().softmax(-1) for k in range(stages)]


def test_features_batched_equal_features_one_row_at_a_time_and_mean_what_they_say():
    probs = _probs(0)
    lengths = np.arange(30) * 3 + 1
    batched = all_stage_features(probs, lengths)
    for i in range(30):
        alone = all_stage_features([p[i:i + 1] for p in probs], lengths[i:i + 1])
        for k in range(4):
            torch.testing.assert_close(alone[k][0], batched[k][i], rtol=0, atol=0)
    col = {name: j for j, name in enumerate(FEATURES)}
    runs = stage_scores(torch.stack(probs, dim=1), patience)
    for k, (x, p) in enumerate(zip(batched, probs, strict=True)):
        for name, policy in (("max_prob", max_prob), ("margin", margin), ("entropy", entropy)):
            torch.testing.assert_close(x[:, col[name]], policy(p)[0])
            prev = torch.zeros(30, dtype=torch.float64) if k == 0 else batched[k - 1][:, col[name]]
            torch.testing.assert_close(x[:, col["prev_" + name]], prev)
        torch.testing.assert_close(x[:, col["agree_run"]], runs[:, k])  # PABEE's count
        agree = torch.zeros(30) if k == 0 else (p.argmax(-1) == probs[k - 1].argmax(-1)).float()
        torch.testing.assert_close(x[:, col["agree_prev"]], agree.double())
        torch.testing.assert_close(x[:, col["log_length"]], torch.from_numpy(np.log1p(lengths.astype(float))))
    assert (runs[:, -1] >= 3).any()  # some rows agree over several stages
    with pytest.raises(ValueError, match="row lengths"):
        stage_features(probs[0], None, lengths[:3])


# --- the executor computes the same score ---------------------------------------------------------------------


@dataclass
class _TableRunner:
    """Stage ``k`` of row ``i`` returns ``table[i, k]``; row ``i`` is ``lengths[i]`` long."""

    table: torch.Tensor
    lengths: np.ndarray
    calls: list = field(default_factory=list)

    @property
    def num_stages(self) -> int:
        return self.table.shape[1]

    def length(self, item):
        return int(self.lengths[int(item)])

    def begin(self, k, pieces):
        return torch.tensor([int(p) for p in pieces])

    def run(self, k, rows):
        self.calls.append(k)
        return rows, self.table[rows, k]

    def unpack(self, k, rows, going):
        return [(int(rows[i]), 0) for i in going]  # a later stage's length says nothing: the carry has it


def _synthetic(n: int, seed: int, stages: int = 3, classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage logits ``[N, S, K]`` that get better with depth and worse with length, gold labels and lengths."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, n)
    lengths = rng.integers(2, 200, n)
    hard = np.log(lengths) / np.log(200) + 0.3 * rng.normal(size=n)
    shared = rng.normal(size=(n, classes))  # noise common to every stage: stages agree on some wrong answers
    signal = np.array([2.5, 3.5, 5.0, 6.0])[:stages]
    raws = np.stack([(signal[k] * (1.3 - hard))[:, None] * np.eye(classes)[gold] + 0.7 * shared
                     + 0.5 * rng.normal(size=(n, classes)) for k in range(stages)], axis=1) * 2.0
    return raws, gold, lengths


COSTS = StageCosts(flops=[1.0, 2.0, 3.0], flops_full=3.0)
LEARNED = CalibrationSpec(policy="learned", rule="max_drop", value=0.05)


@pytest.mark.parametrize("batch_size", [60, 7, 1])
def test_the_executor_scores_each_row_as_score_all_does(batch_size):
    raws, gold, lengths = _synthetic(60, 1)
    calibration = fit_calibration(raws, gold, COSTS, LEARNED, num_labels=4, lengths=lengths)
    readout = calibration.readout(4)
    scores, _, _ = score_all([raws[:, k] for k in range(3)], readout, lengths)
    threshold = median_threshold(scores[:, :-1])
    order = np.random.default_rng(2).permutation(60)
    runner = _TableRunner(torch.from_numpy(raws[order]).float(), lengths[order])
    result = execute(runner, list(range(60)), readout, threshold, batch_size=batch_size)
    expected = exit_stage(scores, threshold)[order]
    assert len(set(expected.tolist())) == 3  # rows stop at every stage: the carry follows the regrouping
    assert result.stage.tolist() == expected.tolist()
    np.testing.assert_allclose(result.score, scores[order, expected], atol=1e-6)
    with pytest.raises(ValueError, match="lengths"):
        score_all([raws[:, k] for k in range(3)], readout)


# --- calibration: the models see the temperature rows only ----------------------------------------------------


def test_learned_models_are_fitted_on_the_temperature_rows_only():
    raws, gold, lengths = _synthetic(400, 3)
    first = fit_calibration(raws, gold, COSTS, LEARNED, num_labels=4, lengths=lengths)
    fit_rows, test_rows = split_rows(400, LEARNED.temperature_fraction, LEARNED.seed)
    assert first.learned.rows == len(fit_rows) == first.rows["temperature"]
    assert first.learned.features == FEATURES and first.learned.stages[-1] is None
    changed = raws.copy()
    changed[test_rows] = np.random.default_rng(9).normal(size=changed[test_rows].shape) * 5  # threshold rows only
    other_lengths = lengths.copy()
    other_lengths[test_rows] = 1
    second = fit_calibration(changed, gold, COSTS, LEARNED, num_labels=4, lengths=other_lengths)
    assert second.learned == first.learned and second.temperatures == first.temperatures
    assert second.table != first.table  # ... which did change the table
    changed = raws.copy()
    changed[fit_rows[:20]] *= -1  # a few temperature rows
    assert fit_calibration(changed, gold, COSTS, LEARNED, num_labels=4, lengths=lengths).learned != first.learned


def test_learned_options_target_l2_and_features():
    raws, gold, lengths = _synthetic(300, 4)
    spec = CalibrationSpec(policy="learned", learned_target="gold", learned_l2=0.5,
                           learned_features=["max_prob", "agree_run"])
    calibration = fit_calibration(raws, gold, COSTS, spec, num_labels=4)  # no log_length: no lengths needed
    learned = calibration.learned
    assert (learned.target, learned.l2, learned.features) == ("gold", 0.5, ("max_prob", "agree_run"))
    assert len(learned.stages[0].weight) == 2
    assert calibration.spec.learned_features == ("max_prob", "agree_run")
    restored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored.spec == calibration.spec and restored.learned == learned
    with pytest.raises(ValueError, match="lengths"):
        fit_calibration(raws, gold, COSTS, LEARNED, num_labels=4)
    for bad, match in (({"learned_target": "labels"}, "learned_target"), ({"learned_l2": -1.0}, "learned_l2"),
                       ({"learned_features": ["max_prob", "size"]}, "learned features")):
        with pytest.raises(ValueError, match=match):
            CalibrationSpec(policy="learned", **bad)
    direct = fit_learned([raws[:, k] for k in range(3)], calibration.temperatures, gold, lengths)
    assert direct.features == FEATURES and direct.target == "reference"


# --- the guarantee --------------------------------------------------------------------------------------------


def test_learn_then_test_holds_for_the_learned_score_over_random_splits():
    """P(true disagreement of the guaranteed threshold > eps) <= delta over draws of the calibration rows, the
    learned score fitted on each draw's temperature rows (the harness of test_adaptive's LTT test)."""
    rng = np.random.default_rng(2024)
    size, n, draws, eps, delta = 10_000, 500, 200, 0.05, 0.1
    raws, gold, lengths = _synthetic(size, 5)
    stage_raws = [raws[:, k] for k in range(3)]
    preds = raws.argmax(axis=2)  # temperature scaling never changes a class
    rows = np.arange(size)
    spec = CalibrationSpec(policy="learned", rule="guaranteed", value=eps, delta=delta)
    violations, costs, informative = 0, [], 0
    for _ in range(draws):
        draw = rng.integers(0, size, n)  # i.i.d. calibration rows
        calibration = fit_calibration(raws[draw], gold[draw], COSTS, spec, num_labels=4, lengths=lengths[draw])
        threshold = calibration.default.threshold
        scores, _, _ = score_all(stage_raws, calibration.readout(4), lengths)
        stage = exit_stage(scores, threshold)
        violations += float((preds[rows, stage] != preds[:, -1]).mean()) > eps
        costs.append(calibration.default.point.cost)
        informative += np.corrcoef(scores[:, 0], preds[:, 0] == preds[:, -1])[0, 1] > 0.3
    # delta bounds the share of violating draws; 0.03 allows for Monte-Carlo noise over 200 draws
    assert violations / draws <= delta + 0.03
    assert np.mean(costs) < 0.8  # and the guarantee buys real savings
    assert informative == draws  # the score tracks agreement with the last stage


# --- every staged kind ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(set(FACTORIES) - TAGGERS - {"plain"}))  # taggers refuse it
# (test_token_exit.py), and a one-stage predictor has no score to learn (test_staged_contract.py)
def kind(request, tmp_path_factory):
    """A saved predictor of each kind calibrated with the learned score, its calibration data and a copy as
    calibrated in memory."""
    root = tmp_path_factory.mktemp(f"learned_{request.param}")
    path = FACTORIES[request.param](root)
    calibrated = summon.load(path, device="cpu")
    data = _data(200, 1)
    # untrained stages may agree with the last one on every row: target the gold labels, which vary
    summon.calibrate(calibrated, data, policy="learned", learned_target="gold", max_drop=0.05, latency=False)
    return {"name": request.param, "path": path, "calibrated": calibrated,
            "predictor": summon.load(path, device="cpu"), "data": data}


def _split_threshold(predictor, texts) -> float:
    examples = [{"text": t} for t in texts]
    scores, _, _ = score_all(predictor.stage_logits(examples), predictor.readout(), row_lengths(predictor, examples))
    return median_threshold(scores[:, 0])


def test_learned_policy_batched_equals_one_by_one(kind):
    predictor = kind["predictor"]
    assert predictor.calibration.policy == "learned" and predictor.readout().needs_lengths
    texts = _texts(24, 7)
    check_batched_equals_one_by_one(predictor, texts, _split_threshold(predictor, texts))


def test_learned_scores_round_trip_through_the_manifest(kind):
    loaded, calibrated = kind["predictor"], kind["calibrated"]
    section = read_json_manifest(kind["path"])["adaptive"]["learned"]
    assert section["features"] == list(FEATURES) and section["target"] == "gold" and section["l2"] == 1e-3
    assert section["stages"][-1] is None and len(section["stages"]) == loaded.num_stages
    assert loaded.calibration.learned == calibrated.calibration.learned
    texts = _texts(30, 8)
    for knob in ({}, {"threshold": _split_threshold(calibrated, texts)}, {"budget": 0.8}):
        before, after = calibrated.predict(texts, **knob), loaded.predict(texts, **knob)
        assert [(p.label, p.stage, p.probs) for p in before] == [(p.label, p.stage, p.probs) for p in after]


def test_evaluation_reads_the_learned_score_with_row_lengths(kind):
    result = summon.evaluate([kind["predictor"]], kind["data"], latency=False)[0]["adaptive"]
    assert result["scorer"] == "learned"


# --- bad input ------------------------------------------------------------------------------------------------


def test_a_mistyped_policy_suggests_learned(tmp_path, capsys):
    with pytest.raises(ValueError, match="Did you mean 'learned'"):
        CalibrationSpec(policy="learnd")
    with pytest.raises(ValueError, match="Did you mean 'learned'"):
        Readout("lerned", [1.0, 1.0], 2)
    assert main(["calibrate", str(tmp_path), "--data", "x.jsonl", "--policy", "learnd"]) == 2
    assert "Did you mean 'learned'?" in capsys.readouterr().err


@pytest.fixture(scope="module")
def early_exit(tmp_path_factory):
    """A saved early-exit predictor calibrated with the learned score (one kind is enough: every kind's
    calibration section is read by the same code)."""
    path = FACTORIES["early_exit"](tmp_path_factory.mktemp("learned_bad"))
    summon.calibrate(summon.load(path, device="cpu"), _data(), policy="learned", learned_target="gold",
                     latency=False)
    return path


def test_the_cli_calibrates_with_the_learned_score(early_exit, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(early_exit, copy)
    data = write_jsonl(tmp_path / "cal.jsonl", sentiment_rows(150, 4))
    assert main(["calibrate", str(copy), "--data", str(data), "--policy", "learned", "--learned-target", "gold",
                 "--no-latency", "--table-rows", "2"]) == 0
    section = read_json_manifest(copy)["adaptive"]
    assert section["policy"] == "learned" and section["learned"]["target"] == "gold"
    assert section["spec"]["learned_target"] == "gold" and section["learned"]["rows"] == section["rows"]["temperature"]


def _damaged(path, change) -> str:
    manifest = read_json_manifest(path)
    change(manifest["adaptive"])
    (path / MANIFEST).write_text(json.dumps(manifest))
    return str(path / MANIFEST)


@pytest.mark.parametrize(("change", "key"), [
    (lambda a: a["learned"]["stages"][0].update(weight=[1.0]), "adaptive.learned.stages[0].weight"),
    (lambda a: a["learned"]["stages"][0].update(scale=[0.0] * len(FEATURES)), "adaptive.learned.stages[0].scale"),
    (lambda a: a["learned"]["stages"][0].pop("bias"), "adaptive.learned.stages[0].bias"),
    (lambda a: a["learned"].update(features=["max_prob", "size"]), "adaptive.learned.features"),
    (lambda a: a["learned"].update(target="labels"), "adaptive.learned.target"),
    (lambda a: a["learned"].update(l2="much"), "adaptive.learned.l2"),
    (lambda a: a["learned"]["stages"].append(None), "adaptive.learned.stages"),
    (lambda a: a["learned"].update(stages="none"), "adaptive.learned.stages"),
    (lambda a: a.update(learned=[1, 2]), "adaptive.learned"),
    (lambda a: a.pop("learned"), "adaptive.learned"),
])
def test_a_malformed_learned_section_is_refused_naming_the_file_and_key(early_exit, tmp_path, change, key):
    copy = tmp_path / "copy"
    shutil.copytree(early_exit, copy)  # an early-exit folder holds its weights: the copy loads on its own
    manifest_file = _damaged(copy, change)
    predictor = summon.load(copy, device="cpu")
    with pytest.raises(ValueError) as err:
        predictor.predict(["good film"])
    assert manifest_file in str(err.value) and f"'{key}" in str(err.value)


def test_old_calibrations_without_learned_scores_still_load(kind):
    section = read_json_manifest(kind["path"])["adaptive"]
    old = {k: v for k, v in section.items() if k != "learned"}
    old.update(policy="max_prob", spec={k: v for k, v in old["spec"].items() if not k.startswith("learned")})
    old["spec"]["policy"] = "max_prob"
    calibration = Calibration.from_dict(old)
    assert calibration.learned is None and calibration.readout(2).policy == "max_prob"
    with pytest.raises(ValueError, match="needs fitted scores"):
        Readout("learned", [1.0, 1.0], 2)
    learned = LearnedScores.from_dict(section["learned"])
    stages = len(learned.stages) + 1
    with pytest.raises(ValueError, match=f"learned score models for {stages} stages"):
        Readout("learned", [1.0] * stages, 2, learned=learned)
