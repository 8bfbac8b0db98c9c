"""Tests for adaptive inference: exit policies, temperature scaling, threshold selection (incl. Learn-then-Test),
models with exits, the early-exit training step, the batched executor, stage costs, the adaptive predictor and
the adaptive evaluation.

Only tiny random encoders are used (no pretrained weights); the trained predictor is a 4-epoch tiny-bert run.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import stage_scores
from torch import nn
from toy import gap_thresholds, median_threshold, run_config, sentiment_files, sentiment_rows, write_jsonl

from summon import load
from summon.adaptive.calibration import (
    Calibration,
    CalibrationSpec,
    calibration_report,
    fit_calibration,
    fit_temperature,
    split_rows,
)
from summon.adaptive.cascade_stages import StageUnavailable
from summon.adaptive.early_exit import EarlyExitPredictor, ExitRunner
from summon.adaptive.executor import Execution, collect_stage_logits, execute, row_thresholds
from summon.adaptive.policies import POLICIES, entropy, margin, max_prob, patience
from summon.adaptive.scoring import Readout
from summon.adaptive.thresholds import (
    OperatingPoint,
    ThresholdTable,
    binom_cdf,
    candidate_thresholds,
    exit_stage,
    sweep,
)
from summon.data.features import collate
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec, TaskData
from summon.evaluation.adaptive import (
    area_between,
    cost_at_accuracy,
    envelope,
    evaluate_adaptive,
    measure_speedup,
    oracle_curve,
)
from summon.measure.cost import FlopMeter
from summon.measure.stage_costs import MS_INCLUDES, StageCosts, measure_costs
from summon.methods.early_exit import EarlyExitConfig, exit_losses, step
from summon.models import EncoderClassifier, ModelConfig, build_model
from summon.models.build import Source
from summon.models.exits import MultiExitClassifier, resolve_exits
from summon.predictors.saved import read_manifest
from summon.training.loop import train

INF = float("inf")
PNG = b"\x89PNG\r\n\x1a\n"
# Eight texts of very different lengths (3 to 34 sub-tokens with [CLS]/[SEP]).
TEXTS = [
    "bad",
    "the movie was great fun",
    "a terrible , boring plot with awful acting and no story at all , really not good",
    "fine",
    "people love this film",
    "the stock market won a new election this year , really",
    "it was ok i guess but the music was too loud and the actor was lost in the city for most of the time",
    "win",
]


# --- helpers ----------------------------------------------------------------------------------------------


def _encode(featurizer, texts) -> list[dict]:
    return featurizer.encode([{"text": t} for t in texts], "classification")


# --- 1. policies ------------------------------------------------------------------------------------------


def test_policies_against_hand_computed_values():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.7, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(max_prob(probs)[0], torch.tensor([0.5, 0.7], dtype=torch.float64))
    torch.testing.assert_close(margin(probs)[0], torch.tensor([0.25, 0.5], dtype=torch.float64))
    h0 = 0.5 * math.log(2) + 2 * 0.25 * math.log(4)
    h1 = -(0.1 * math.log(0.1) + 0.7 * math.log(0.7) + 0.2 * math.log(0.2))
    expected = torch.tensor([1 - h0 / math.log(3), 1 - h1 / math.log(3)], dtype=torch.float64)
    torch.testing.assert_close(entropy(probs)[0], expected)
    for policy in (max_prob, margin, entropy):
        assert policy(probs)[1] is None  # stateless


def test_entropy_score_is_zero_for_uniform_and_one_for_one_hot():
    uniform = torch.full((2, 4), 0.25)
    one_hot = F.one_hot(torch.tensor([0, 3]), 4).float()
    torch.testing.assert_close(entropy(uniform)[0], torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy(one_hot)[0], torch.ones(2), atol=1e-6, rtol=0)
    assert margin(uniform)[0].abs().max() < 1e-7 and margin(one_hot)[0].min() == 1.0


def test_single_class_scores_are_one():
    probs = torch.ones(3, 1)
    for policy in (margin, entropy):
        assert policy(probs)[0].tolist() == [1.0, 1.0, 1.0]


def _one_hot_sequence(rows: list[list[int]], classes: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor(rows), classes).double()  # [N, S, C]


def test_patience_counts_consecutive_agreeing_stages_through_the_carry():
    probs = _one_hot_sequence([[0, 0, 1, 1, 1], [2, 1, 2, 2, 0], [1, 1, 1, 1, 1]])
    carry, got = None, []
    for k in range(probs.shape[1]):
        score, carry = patience(probs[:, k], carry)
        got.append(score.tolist())
        assert carry.shape == (3, 2)
    assert [list(col) for col in zip(*got, strict=True)] == [[1, 2, 1, 2, 3], [1, 1, 1, 2, 1], [1, 2, 3, 4, 5]]
    assert stage_scores(probs, patience).tolist() == [[1, 2, 1, 2, 3], [1, 1, 1, 2, 1], [1, 2, 3, 4, 5]]


# --- 2. temperature scaling -------------------------------------------------------------------------------


def _sampled(t_true: float, n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z / t_true)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=gen, dtype=torch.float64) * 3.0
    labels = torch.multinomial((z / t_true).softmax(-1), 1, generator=gen).squeeze(1)
    return z, labels


def test_fit_temperature_recovers_a_known_temperature():
    z, labels = _sampled(2.5)
    assert abs(fit_temperature(z, labels) - 2.5) <= 0.1
    z1, labels1 = _sampled(1.0, seed=1)
    assert abs(fit_temperature(z1, labels1) - 1.0) <= 0.05
    temps = [fit_temperature(z, labels), fit_temperature(z * 2.5, labels)]  # stage 2 has logits 2.5x larger
    assert abs(temps[0] - 2.5) <= 0.1 and abs(temps[1] - 6.25) <= 0.25


def test_fit_temperature_rejects_misshapen_inputs():
    with pytest.raises(ValueError, match="expected logits"):
        fit_temperature(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_calibration_report_improves_ece_on_miscalibrated_data():
    z, labels = _sampled(2.5, n=8000, seed=2)
    report = calibration_report(z[:, None, :].float(), labels, [2.5])
    assert len(report) == 1 and report[0]["stage"] == 0 and report[0]["temperature"] == 2.5
    row = report[0]
    assert row["ece_after"] <= row["ece_before"]
    assert row["ece_before"] > 0.05 and row["ece_after"] < 0.03  # overconfident before, calibrated after
    assert row["nll_after"] < row["nll_before"]


# --- 3. thresholds ------------------------------------------------------------------------------------------


def _naive_binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, min(k, n) + 1))


@pytest.mark.parametrize(("k", "n", "p"), [
    (3, 10, 0.3), (0, 5, 0.5), (7, 20, 0.05), (50, 200, 0.2), (30, 1000, 0.05), (499, 1000, 0.5),
    (-1, 10, 0.3), (10, 10, 0.3), (12, 10, 0.3), (3, 10, 0.0), (3, 10, 1.0), (10, 10, 1.0), (0, 0, 0.4),
])
def test_binom_cdf_equals_the_naive_sum(k, n, p):
    assert binom_cdf(k, n, p) == pytest.approx(_naive_binom_cdf(k, n, p), rel=1e-9, abs=1e-300)


def test_binom_cdf_rejects_bad_arguments():
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="0 <= p <= 1"):
            binom_cdf(1, 10, p)
    with pytest.raises(ValueError):
        binom_cdf(1, -1, 0.5)


# A hand-made table: 4 rows, 3 stages; stage costs 0.3 / 0.6 / 1.0 of the full model.
SCORES = np.array([[0.9, 0.5, 0.1], [0.3, 0.8, 0.2], [0.2, 0.4, 0.7], [0.6, 0.6, 0.3]])
PREDS = np.array([[1, 0, 0], [0, 1, 1], [2, 2, 0], [1, 1, 1]])
COSTS = np.array([0.3, 0.6, 1.0])
GOLD = np.array([1, 1, 0, 0])
# threshold -> (exit stages, cost, disagreement with the last stage, accuracy), worked out by hand
HAND = {
    -INF: ([0, 0, 0, 0], 0.3, 0.75, 0.25),
    0.2: ([0, 0, 0, 0], 0.3, 0.75, 0.25),
    0.3: ([0, 0, 1, 0], 0.375, 0.75, 0.25),
    0.4: ([0, 1, 1, 0], 0.45, 0.5, 0.5),
    0.5: ([0, 1, 2, 0], 0.55, 0.25, 0.75),
    0.55: ([0, 1, 2, 0], 0.55, 0.25, 0.75),
    0.6: ([0, 1, 2, 0], 0.55, 0.25, 0.75),
    0.8: ([0, 1, 2, 2], 0.725, 0.25, 0.75),
    0.85: ([0, 2, 2, 2], 0.825, 0.25, 0.75),
    0.9: ([0, 2, 2, 2], 0.825, 0.25, 0.75),
    INF: ([2, 2, 2, 2], 1.0, 0.0, 0.5),
}


def test_candidate_thresholds_lie_between_early_stage_scores_plus_infinities():
    # Midway between adjacent distinct scores (0.2 0.3 0.4 0.5 0.6 0.8 0.9), so no row sits on a threshold.
    assert candidate_thresholds(SCORES).tolist() == pytest.approx([-INF, 0.25, 0.35, 0.45, 0.55, 0.7, 0.85, INF])
    thinned = candidate_thresholds(np.random.default_rng(0).random((1000, 2)), max_points=50)
    assert len(thinned) == 52 and thinned[0] == -INF and thinned[-1] == INF and np.all(np.diff(thinned) > 0)


def test_sweep_matches_the_hand_computed_table():
    thresholds = np.array(sorted(HAND))
    for t in thresholds:
        assert exit_stage(SCORES, t).tolist() == HAND[t][0]
    points = sweep(SCORES, PREDS, COSTS, GOLD, thresholds=thresholds)
    for t, point in zip(thresholds, points, strict=True):
        stages, cost, disagreement, accuracy = HAND[t]
        assert point.threshold == t
        assert point.cost == pytest.approx(cost)
        assert point.disagreement == pytest.approx(disagreement)
        assert point.accuracy == pytest.approx(accuracy)
        assert point.exit_counts == np.bincount(stages, minlength=3).tolist()
    default = sweep(SCORES, PREDS, COSTS)  # default candidates, no gold
    assert [p.threshold for p in default] == pytest.approx([-INF, 0.25, 0.35, 0.45, 0.55, 0.7, 0.85, INF])
    assert all(p.accuracy is None for p in default)
    with pytest.raises(ValueError, match="do not line up"):
        sweep(SCORES, PREDS[:, :2], COSTS)


def _hand_table(gold=GOLD) -> ThresholdTable:
    return ThresholdTable.build("max_prob", "flops", SCORES, PREDS, COSTS, gold)


def test_budget_returns_the_most_accurate_point_under_the_budget():
    table = _hand_table()
    assert table.full_accuracy == 0.5 and table.n == 4
    assert table.budget(0.5).threshold == pytest.approx(0.35)  # accuracy 0.5 at cost 0.45
    chosen = table.budget(0.6)
    assert chosen.cost == pytest.approx(0.55) and chosen.accuracy == 0.75
    assert table.budget(1.0).cost == pytest.approx(0.55)  # the cheapest of the most accurate points
    assert table.budget(0.3).cost == pytest.approx(0.3)  # exactly the cheapest point is feasible
    for budget in np.linspace(0.3, 1.0, 29):  # brute force: best accuracy under the budget, then cheapest
        feasible = [p for p in table.points if p.cost <= budget + 1e-12]
        best = max(p.accuracy for p in feasible)
        cheapest_best = min(p.cost for p in feasible if p.accuracy == best)
        got = table.budget(budget)
        assert got.cost <= budget + 1e-12 and got.accuracy == best and got.cost == cheapest_best
    with pytest.raises(ValueError, match="below the cheapest operating point"):
        table.budget(0.29)


def test_budget_without_labels_minimises_disagreement():
    table = _hand_table(gold=None)
    assert table.full_accuracy is None
    chosen = table.budget(0.6)
    assert chosen.disagreement == 0.25 and chosen.cost == pytest.approx(0.55)
    assert table.budget(1.0).threshold == INF  # only the full model never disagrees with itself


def test_max_drop_picks_the_cheapest_feasible_point():
    table = _hand_table()
    assert table.max_drop(0.0).threshold == INF
    assert table.max_drop(0.25).cost == pytest.approx(0.55)
    assert table.max_drop(0.5).cost == pytest.approx(0.45)
    assert table.max_drop(0.75).cost == pytest.approx(0.3)
    assert table.max_drop(0.0, against="gold").cost == pytest.approx(0.45)  # accuracy 0.5 = the full model's
    assert table.max_drop(0.25, against="gold").cost == pytest.approx(0.3)
    rng = np.random.default_rng(3)
    big = ThresholdTable.build("max_prob", "flops", rng.random((300, 4)), rng.integers(0, 3, (300, 4)),
                               np.array([0.25, 0.5, 0.75, 1.0]), rng.integers(0, 3, 300))
    for eps in (0.0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.7):
        for against, drop in (("reference", lambda p: p.disagreement),
                              ("gold", lambda p: big.full_accuracy - p.accuracy)):
            feasible = [p for p in big.points if drop(p) <= eps + 1e-12]
            got = big.max_drop(eps, against=against)
            assert drop(got) <= eps + 1e-12 and got.cost == min(p.cost for p in feasible)
    with pytest.raises(ValueError, match="'reference'"):
        table.max_drop(0.1, against="labels")
    with pytest.raises(ValueError, match="labels"):
        _hand_table(gold=None).max_drop(0.1, against="gold")


def _point(threshold: float, cost: float, disagreements: int, n: int) -> OperatingPoint:
    return OperatingPoint(threshold=threshold, cost=cost, disagreement=disagreements / n, accuracy=None,
                          exit_counts=[0, n])


def test_guaranteed_is_fixed_sequence_testing_and_stops_at_the_first_non_rejection():
    n, eps, delta = 100, 0.1, 0.1
    points = [_point(INF, 1.0, 0, n), _point(0.9, 0.8, 2, n), _point(0.8, 0.6, 5, n),
              _point(0.7, 0.5, 15, n), _point(0.6, 0.3, 0, n)]  # the last would pass but is never tested
    assert binom_cdf(2, n, eps) <= delta and binom_cdf(5, n, eps) <= delta < binom_cdf(15, n, eps)
    table = ThresholdTable("max_prob", "flops", n, None, points[::-1])
    chosen, tests = table.guaranteed(eps, delta)
    assert chosen.threshold == 0.8
    assert [t["threshold"] for t in tests] == [0.9, 0.8, 0.7]
    assert [t["disagreements"] for t in tests] == [2, 5, 15]
    for t in tests:
        assert t["p_value"] == pytest.approx(binom_cdf(t["disagreements"], n, eps))


def test_guaranteed_returns_the_cheapest_rejected_point():
    n = 200
    points = [_point(INF, 1.0, 0, n), _point(0.9, 0.7, 0, n), _point(0.8, 0.9, 1, n), _point(0.7, 0.8, 2, n)]
    chosen, tests = ThresholdTable("max_prob", "flops", n, None, points).guaranteed(0.05, 0.1)
    assert len(tests) == 3 and all(t["p_value"] <= 0.1 for t in tests)
    assert chosen.threshold == 0.9  # every test rejected; 0.9 is the cheapest of them


def test_guaranteed_falls_back_to_the_full_model():
    n = 10  # too few rows: even 0 disagreements has p = 0.95^10 > delta
    points = [_point(INF, 1.0, 0, n), _point(0.5, 0.5, 0, n), _point(0.2, 0.3, 0, n)]
    chosen, tests = ThresholdTable("max_prob", "flops", n, None, points).guaranteed(0.05, 0.1)
    assert chosen.threshold == INF and len(tests) == 1
    assert tests[0]["p_value"] == pytest.approx(0.95**10)
    with pytest.raises(ValueError, match="epsilon"):
        ThresholdTable("max_prob", "flops", n, None, points).guaranteed(0.0, 0.1)


def test_guaranteed_holds_its_risk_bound_on_synthetic_data():
    """Learn-then-Test: P(true disagreement of the chosen threshold > eps) <= delta over calibration draws."""
    rng = np.random.default_rng(12345)
    size, n, draws, eps, delta = 200_000, 500, 300, 0.05, 0.1
    score0 = rng.integers(0, 100, size) / 100  # scores on a grid of 100 values: ~100 candidate thresholds per draw
    disagree = rng.random(size) < 0.2 * (1.0 - score0)  # stage 0 disagrees with the last stage more when unsure
    scores = np.stack([score0, np.ones(size)], axis=1)
    preds = np.stack([disagree.astype(int), np.zeros(size, dtype=int)], axis=1)
    costs = np.array([0.5, 1.0])
    order = np.argsort(score0)
    # Population disagreement rate of threshold t: the share of rows with score >= t that disagree.
    tail = np.concatenate([np.cumsum(disagree[order][::-1])[::-1], [0]]) / size

    def true_rate(t: float) -> float:
        return float(tail[np.searchsorted(score0[order], t, side="left")])

    violations, costs_chosen = 0, []
    for _ in range(draws):
        rows = rng.integers(0, size, n)  # i.i.d. draws from the population
        table = ThresholdTable.build("max_prob", "flops", scores[rows], preds[rows], costs)
        chosen, _ = table.guaranteed(eps, delta)
        violations += true_rate(chosen.threshold) > eps
        costs_chosen.append(chosen.cost)
    # delta is a bound on the share of violating draws; 0.03 allows for Monte-Carlo noise over 300 draws
    # (the standard error of a share near 0.1 over 300 draws is about 0.017).
    assert violations / draws <= delta + 0.03
    assert np.mean(costs_chosen) < 0.9  # and it does find cheaper thresholds than the full model


def test_threshold_table_round_trips_through_json():
    table = _hand_table()
    data = table.to_dict()
    thresholds = [p["threshold"] for p in data["points"]]
    assert "inf" in thresholds and "-inf" in thresholds
    restored = ThresholdTable.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert restored == table
    assert {p.threshold for p in restored.points} >= {INF, -INF}
    assert "*" in table.format(table.points[2]) and len(table.format().splitlines()) == len(table.points) + 1


# --- 4. models with exits -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_exits():
    built = build_model(ModelConfig(name="tiny-bert", exits="all", max_length=64), "classification", 3)
    built.model.eval()
    return built


def _batch(featurizer, texts=TEXTS) -> dict[str, torch.Tensor]:
    return collate(_encode(featurizer, texts), featurizer.pad_id)


def test_resolve_exits():
    assert resolve_exits("all", 3) == [1, 2, 3]
    assert resolve_exits([3, 1, 3], 3) == [1, 3]
    for bad in ([-1], [4], [], "some"):
        with pytest.raises(ValueError):
            resolve_exits(bad, 3)


def test_exits_model_gives_every_stage_and_its_last_exit_is_the_plain_classifier(tiny_exits):
    model = tiny_exits.model
    assert isinstance(model, MultiExitClassifier) and model.num_stages == 2
    assert tiny_exits.architecture["type"] == "exits" and tiny_exits.architecture["exit_layers"] == [1, 2]
    batch = _batch(tiny_exits.featurizer)
    with torch.no_grad():
        logits = model(batch)
        plain = EncoderClassifier(copy.deepcopy(model.backbone), copy.deepcopy(model.heads[-1])).eval()
        expected = plain(batch)
    assert logits.shape == (8, 2, 3)
    torch.testing.assert_close(logits[:, -1], expected, atol=1e-6, rtol=0)
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # two different heads at two depths


def test_a_single_exit_model_has_one_stage():
    built = build_model(ModelConfig(name="tiny-bert", exits=[1]), "classification", 3)
    model = built.model.eval()
    assert model.num_stages == 1
    batch = _batch(built.featurizer, TEXTS[:3])
    with torch.no_grad():
        assert model(batch).shape == (3, 1, 3)
        state = model.run_to(0, model.begin(batch))
    assert state.layer == 1  # stops after the first layer
    with pytest.raises(ValueError, match="reads layer 1"):
        model.exit_logits(0, model.begin(batch))


def test_copy_kind_reuses_the_source_head_as_the_last_exit():
    teacher = build_model(ModelConfig(name="tiny-bert", init_seed=3), "classification", 3)
    with torch.no_grad():  # stand-in for training: move every weight away from its initialisation
        gen = torch.Generator().manual_seed(1)
        for param in teacher.model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    teacher.model.eval()
    source = Source.of(teacher.model, teacher.featurizer.tokenizer)
    student = build_model(ModelConfig(kind="copy", exits="all"), "classification", 3, source=source).model.eval()
    assert student.backbone.model is not teacher.model.backbone.model  # a copy, not the same encoder
    batch = _batch(teacher.featurizer)
    with torch.no_grad():
        torch.testing.assert_close(student(batch)[:, -1], teacher.model(batch), atol=1e-6, rtol=0)
    assert not torch.equal(student.heads[0].classifier.weight, teacher.model.head.classifier.weight)
    again = Source.of(student, teacher.featurizer.tokenizer)  # an exits model as a source: its last head
    assert again.head is student.heads[-1]


def test_freeze_backbone_leaves_only_the_heads_trainable():
    model = build_model(ModelConfig(name="tiny-bert", exits="all", freeze=["backbone"]), "classification", 3).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    assert trainable  # the heads still train
    last = build_model(ModelConfig(name="tiny-bert", exits="all", freeze=["backbone", "heads.1"]),
                       "classification", 3).model
    assert {n for n, p in last.named_parameters() if p.requires_grad} == {"heads.0.classifier.weight",
                                                                        "heads.0.classifier.bias"}


def test_unknown_freeze_prefix_lists_the_prefixes():
    with pytest.raises(ValueError, match=r"no parameter starts with 'encoder'.*backbone\.model.*heads\.0.*heads\.1"):
        build_model(ModelConfig(name="tiny-bert", exits="all", freeze=["encoder"]), "classification", 3)


def test_exits_on_token_classification_are_token_heads_and_a_crf_with_exits_is_refused():
    built = build_model(ModelConfig(name="tiny-bert", exits="all"), "token_classification", 5)
    batch = {"input_ids": torch.tensor([[1, 5, 6, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    assert built.model(batch).shape == (1, built.model.num_stages, 4, 5)  # [B, S, L, C]: one tagging per exit
    with pytest.raises(ValueError, match=r"crf: not available with model\.exits"):
        build_model(ModelConfig(name="tiny-bert", exits="all", crf=True), "token_classification", 5)


# --- 5. the early-exit training step --------------------------------------------------------------------------


class _FixedLogits(nn.Module):
    """A 'model' whose output is a trainable [B, S, C] tensor, to inspect the loss and its gradients."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, batch):
        return self.logits


def _naive_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return -probs[torch.arange(len(labels)), labels].log().mean()


def _naive_kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    p_t = (teacher / t).softmax(-1)
    p_s = (student / t).softmax(-1)
    return (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * t**2


def _logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64) * 2
    return logits, {"label": torch.randint(0, 4, (5,), generator=gen)}


def test_early_exit_loss_is_the_sum_of_the_exits_cross_entropies():
    logits, batch = _logits_and_labels()
    out = step(_FixedLogits(logits), batch, EarlyExitConfig())
    parts = [_naive_ce(logits[:, k], batch["label"]) for k in range(3)]
    torch.testing.assert_close(out["loss"], sum(parts))
    torch.testing.assert_close(out["first_exit_loss"], parts[0])
    torch.testing.assert_close(out["last_exit_loss"], parts[-1])
    depth = step(_FixedLogits(logits), batch, EarlyExitConfig(exit_weights="depth"))
    torch.testing.assert_close(depth["loss"], parts[0] / 3 + parts[1] * 2 / 3 + parts[2])


def test_self_distillation_mixes_ce_with_kl_from_the_detached_last_exit():
    logits, batch = _logits_and_labels(1)
    alpha, t = 0.4, 3.0
    losses = exit_losses(logits, batch["label"], EarlyExitConfig(distill_last=alpha, temperature=t))
    last = logits[:, -1]
    for k in range(2):
        expected = (1 - alpha) * _naive_ce(logits[:, k], batch["label"]) + alpha * _naive_kl(last, logits[:, k], t)
        torch.testing.assert_close(losses[k], expected)
    torch.testing.assert_close(losses[2], _naive_ce(last, batch["label"]))  # the last exit only learns from gold
    # Gradients: the KD term must not reach the last exit, so its gradient is the same with and without KD.
    grads = {}
    for a in (0.0, alpha):
        model = _FixedLogits(logits)
        step(model, batch, EarlyExitConfig(distill_last=a, temperature=t))["loss"].backward()
        grads[a] = model.logits.grad
    torch.testing.assert_close(grads[alpha][:, -1], grads[0.0][:, -1])
    assert not torch.allclose(grads[alpha][:, 0], grads[0.0][:, 0])  # ... while the earlier exits do change


def test_teacher_distillation_mixes_every_exits_ce_with_kl_from_the_teacher():
    logits, batch = _logits_and_labels(2)
    teacher = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    alpha, t = 0.7, 2.0
    losses = exit_losses(logits, batch["label"], EarlyExitConfig(distill_teacher=alpha, temperature=t), teacher)
    for k in range(3):  # the last exit too: the teacher is outside the model
        expected = (1 - alpha) * _naive_ce(logits[:, k], batch["label"]) + alpha * _naive_kl(teacher, logits[:, k], t)
        torch.testing.assert_close(losses[k], expected)
    out = step(_FixedLogits(logits), {**batch, "teacher_logits": teacher}, EarlyExitConfig(distill_teacher=alpha,
                                                                                          temperature=t))
    torch.testing.assert_close(out["loss"], sum(losses))
    with pytest.raises(ValueError, match="teacher's logits in the batch"):
        step(_FixedLogits(logits), batch, EarlyExitConfig(distill_teacher=alpha))


def test_consistency_adds_kl_from_the_detached_next_exit():
    logits, batch = _logits_and_labels(4)
    beta, t = 0.5, 2.0
    losses = exit_losses(logits, batch["label"], EarlyExitConfig(consistency=beta, temperature=t))
    for k in range(2):
        expected = _naive_ce(logits[:, k], batch["label"]) + beta * _naive_kl(logits[:, k + 1], logits[:, k], t)
        torch.testing.assert_close(losses[k], expected)
    torch.testing.assert_close(losses[2], _naive_ce(logits[:, 2], batch["label"]))
    grads = {}
    for b in (0.0, beta):  # the term pulls exit k toward k+1 and never k+1 toward k
        model = _FixedLogits(logits)
        step(model, batch, EarlyExitConfig(consistency=b, temperature=t))["loss"].backward()
        grads[b] = model.logits.grad
    torch.testing.assert_close(grads[beta][:, -1], grads[0.0][:, -1])
    assert not torch.allclose(grads[beta][:, 0], grads[0.0][:, 0])


def test_an_exit_on_the_embeddings_reads_them_before_the_first_layer():
    assert resolve_exits("embeddings+all", 3) == [0, 1, 2, 3] and resolve_exits([2, 0], 3) == [0, 2]
    with pytest.raises(ValueError, match=r"0\.\.3"):
        resolve_exits([-1, 2], 3)
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, exits="embeddings+all",
                                    max_length=16), "classification", 2)
    model = built.model.eval()
    batch = {"input_ids": torch.tensor([[1, 5, 6, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    state = model.begin(batch)
    assert model.run_to(0, state).layer == 0  # no layer runs for exit 0
    torch.testing.assert_close(model.exit_logits(0, state), model.heads[0](state.hidden, state.mask))
    assert model(batch).shape == (1, 3, 2)
    costs = measure_costs(ExitRunner(model, 0, torch.device("cpu")), [{"input_ids": [1, 5, 6, 2], "attention_mask": [1, 1, 1, 1]}],
                          reference=lambda items: model.full_logits(collate(list(items))), latency=False)
    assert costs.flops[0] < 0.05 * costs.flops_full < costs.flops[1]  # nearly free: embeddings and one read-out


def test_early_exit_step_needs_exits_and_valid_options():
    with pytest.raises(ValueError, match="model with exits"):
        step(_FixedLogits(torch.zeros(2, 3)), {"label": torch.tensor([0, 1])}, EarlyExitConfig())
    with pytest.raises(ValueError, match="distill_last"):
        EarlyExitConfig(distill_last=1.5)
    with pytest.raises(ValueError, match="set one of them"):
        EarlyExitConfig(distill_last=0.5, distill_teacher=0.5)
    with pytest.raises(ValueError, match="consistency"):
        EarlyExitConfig(consistency=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        EarlyExitConfig(temperature=0.0)


# --- 6. the executor --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged():
    """A 3-stage model (a random 3-layer tiny-bert with an exit after every layer) and its featurizer."""
    cfg = ModelConfig(kind="random", name="tiny-bert", num_layers=3, exits="all", max_length=64)
    built = build_model(cfg, "classification", 3)
    built.model.eval()
    return built.model, built.featurizer


TEMPS = [1.3, 0.8, 1.1]


def _calibrated_scores(model, batch) -> torch.Tensor:
    """max_prob scores of every stage at full depth, with TEMPS, in the executor's float64: [B, S]."""
    with torch.no_grad():
        logits = model(batch).double() / torch.tensor(TEMPS, dtype=torch.float64)[None, :, None]
    return stage_scores(logits.softmax(-1), max_prob)


def _run(model, featurizer, texts, threshold, *, policy="max_prob", batch_size=8) -> Execution:
    runner = ExitRunner(model, featurizer.pad_id, torch.device("cpu"))
    return execute(runner, _encode(featurizer, texts), Readout(policy, TEMPS, 3), threshold, batch_size=batch_size)


def test_executor_with_infinite_thresholds_runs_the_full_model_or_stops_at_once(staged):
    model, featurizer = staged
    batch = _batch(featurizer)
    with torch.no_grad():
        every, full_logits = model(batch), model.full_logits(batch)
    full = _run(model, featurizer, TEXTS, INF)
    assert full.stage.tolist() == [2] * 8 and not full.fallback.any()
    np.testing.assert_allclose(full.logits, (full_logits / TEMPS[-1]).numpy(), atol=1e-5)
    expected = (every[:, -1].double() / TEMPS[-1]).softmax(-1).max(-1).values  # scores are float64
    np.testing.assert_allclose(full.score, expected.numpy(), atol=1e-6)
    first = _run(model, featurizer, TEXTS, -INF)
    assert first.stage.tolist() == [0] * 8
    np.testing.assert_allclose(first.logits, (every[:, 0] / TEMPS[0]).numpy(), atol=1e-5)


def _record_run_to(model, monkeypatch) -> list[tuple[int, int, int]]:
    """Wrap model.run_to to record (stage, rows, length) of the state each stage computes."""
    calls = []
    original = model.run_to

    def recording(stage, state):
        out = original(stage, state)
        calls.append((stage, out.hidden.shape[0], out.hidden.shape[1]))
        return out

    monkeypatch.setattr(model, "run_to", recording)
    return calls


def _assert_rows_alone_match(model, featurizer, result, thresholds) -> None:
    limits = row_thresholds(thresholds, len(TEXTS), 3)
    for i, text in enumerate(TEXTS):
        alone = _run(model, featurizer, [text], limits[i:i + 1], batch_size=1)
        assert alone.stage[0] == result.stage[i], f"row {i}"
        np.testing.assert_allclose(alone.logits[0], result.logits[i], atol=1e-5)


def test_batched_execution_equals_each_row_alone_and_drops_finished_rows(staged, monkeypatch):
    model, featurizer = staged
    batch = _batch(featurizer)
    lengths = batch["attention_mask"].sum(1)
    scores = _calibrated_scores(model, batch)
    threshold = median_threshold(scores[:, 0].numpy())
    calls = _record_run_to(model, monkeypatch)
    result = _run(model, featurizer, TEXTS, threshold)
    monkeypatch.undo()
    expected_stage = exit_stage(scores.numpy(), threshold)
    assert result.stage.tolist() == expected_stage.tolist()
    assert 0 < int((result.stage == 0).sum()) < 8  # the threshold splits the batch
    assert calls[0] == (0, 8, batch["input_ids"].shape[1])
    going = torch.from_numpy(result.stage >= 1)
    assert calls[1][1] == int(going.sum()) < 8  # finished rows left the batch
    assert calls[1][2] == int(lengths[going].max())  # ... and padding was trimmed to the rest
    _assert_rows_alone_match(model, featurizer, result, threshold)


def test_per_stage_thresholds_trim_padding_to_the_longest_remaining_row(staged, monkeypatch):
    model, featurizer = staged
    batch = _batch(featurizer)
    lengths = batch["attention_mask"].sum(1).numpy()
    scores = _calibrated_scores(model, batch).numpy()
    longest = int(lengths.argmax())
    chosen = None  # (t0, t1): some rows stop at stage 0, the longest row stops at stage 1, some reach stage 2
    for t0 in sorted(gap_thresholds(scores[:, 0]), key=lambda t: abs(t - np.median(scores[:, 0]))):
        rest = np.flatnonzero(scores[:, 0] < t0)
        if len(rest) in (0, 8) or longest not in rest:
            continue
        below = [t for t in gap_thresholds(scores[rest, 1]) if t < scores[longest, 1]]
        if below and np.abs(scores[:, 1] - below[-1]).min() > 1e-4:
            chosen = (t0, below[-1])
            break
    assert chosen is not None, "no thresholds make the longest row leave at stage 1 with others remaining"
    thresholds = np.tile([*chosen, 0.5], (8, 1))  # one per row and stage; the last stage's never matters
    calls = _record_run_to(model, monkeypatch)
    result = _run(model, featurizer, TEXTS, thresholds)
    monkeypatch.undo()
    assert result.stage[longest] == 1
    rows = [8, int((result.stage >= 1).sum()), int((result.stage == 2).sum())]
    assert [c[1] for c in calls] == rows and rows[0] > rows[1] > rows[2] > 0
    assert calls[2][2] == int(lengths[result.stage == 2].max()) < int(lengths.max())
    _assert_rows_alone_match(model, featurizer, result, thresholds)


def test_per_row_thresholds_equal_each_row_run_alone_at_its_own_threshold(staged):
    """Requests with different knobs share one forward pass: each row stops by its own threshold."""
    model, featurizer = staged
    scores = _calibrated_scores(model, _batch(featurizer)).numpy()
    per_row = np.where(np.arange(8) % 2 == 0, -INF, INF)  # even rows stop at once, odd rows run to the end
    result = _run(model, featurizer, TEXTS, per_row)
    assert result.stage.tolist() == [0, 2] * 4
    mixed = np.array([median_threshold(scores[:, 0])] * 4 + [INF] * 4)
    both = _run(model, featurizer, TEXTS, mixed)
    assert (both.stage[4:] == 2).all()
    assert both.stage[:4].tolist() == exit_stage(scores[:4], mixed[0]).tolist()
    _assert_rows_alone_match(model, featurizer, both, mixed)


@dataclass
class _TableRunner:
    """A staged 'model' whose stage-k raw logits for row i are ``table[i, k]`` (executor bookkeeping)."""

    table: torch.Tensor
    calls: list = field(default_factory=list)

    @property
    def num_stages(self) -> int:
        return self.table.shape[1]

    def length(self, item):
        return 1

    def begin(self, k, pieces):
        return torch.tensor([int(p) for p in pieces])

    def run(self, k, rows):
        self.calls.append((k, rows.tolist()))
        return rows, self.table[rows, k]

    def unpack(self, k, rows, going):
        return [(int(rows[i]), 1) for i in going]


def _table_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    size, stages = 40, 5
    table = torch.randn(size, stages, 3, generator=gen) * 2
    table[:10] = table[:10, :1].expand(-1, stages, -1) + 0.1 * table[:10]  # stable predictions: patience runs
    return table, [1.0, 1.5, 0.7, 1.2, 0.9], gen


@pytest.mark.parametrize("batch_size", [40, 7, 1])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_executor_matches_the_reference_exit_rule_for_every_policy(name, batch_size):
    """Rows regrouped into batches of 7 (or 1, or all 40) after each stage: same stages, same logits, and
    the policy's carry (patience counters) follows each row through the regrouping."""
    table, temps, gen = _table_case(4)
    size = table.shape[0]
    probs = (table.double() / torch.tensor(temps, dtype=torch.float64)[None, :, None]).softmax(-1)
    scores = stage_scores(probs, POLICIES[name]).numpy()
    threshold = 2.5 if name == "patience" else median_threshold(scores[:, :-1])
    order = torch.randperm(size, generator=gen).tolist()
    runner = _TableRunner(table)
    result = execute(runner, order, Readout(name, temps, 3), threshold, batch_size=batch_size)
    expected = exit_stage(scores, threshold)[order]
    assert len(set(expected.tolist())) >= 3  # rows stop at several stages, so the carry is re-aligned
    assert result.stage.tolist() == expected.tolist()
    want = table[torch.tensor(order), torch.from_numpy(expected)] / torch.tensor(temps)[torch.from_numpy(expected), None]
    np.testing.assert_allclose(result.logits, want.numpy(), atol=1e-6)
    sizes: dict[int, list[int]] = {}
    for k, rows in runner.calls:
        sizes.setdefault(k, []).append(len(rows))
    for per_stage in sizes.values():  # every batch is full but the last of its stage
        assert all(n == batch_size for n in per_stage[:-1]) and per_stage[-1] <= batch_size


def test_regrouping_fills_later_batches_from_many_and_equals_each_row_alone(staged, monkeypatch):
    model, featurizer = staged
    texts = TEXTS * 2
    scores = _calibrated_scores(model, _batch(featurizer, texts)).numpy()
    threshold = median_threshold(scores[:8, 0])
    calls = _record_run_to(model, monkeypatch)
    result = _run(model, featurizer, texts, threshold, batch_size=8)
    monkeypatch.undo()
    going = int((scores[:, 0] < threshold).sum())
    assert 0 < going < 16
    assert [c[1] for c in calls[:2]] == [8, 8]  # stage 0: two batches of 8
    assert calls[2][1] == min(8, going)  # stage 1: the rows going on from both batches, regrouped and full
    _assert_rows_alone_match(model, featurizer, Execution(*(getattr(result, f)[:8] for f in
                                                          ("logits", "stage", "score", "fallback"))), threshold)


def test_row_thresholds():
    assert row_thresholds(0.5, 2, 3).tolist() == [[0.5] * 3] * 2
    assert row_thresholds([0.1, 0.2], 2, 3).tolist() == [[0.1] * 3, [0.2] * 3]
    assert row_thresholds(np.zeros((2, 3)), 2, 3).shape == (2, 3)
    with pytest.raises(ValueError, match="one per row"):
        row_thresholds([0.1, 0.2, 0.3], 2, 4)


def test_a_stage_that_cannot_answer_leaves_its_rows_with_the_earlier_answer():
    table, temps, _ = _table_case(6)

    class Failing(_TableRunner):
        def run(self, k, rows):
            if k == 2:
                raise StageUnavailable("down")
            return super().run(k, rows)

    result = execute(Failing(table), list(range(40)), Readout("max_prob", temps, 3), INF, batch_size=8)
    assert result.stage.tolist() == [1] * 40 and result.fallback.all()
    np.testing.assert_allclose(result.logits, (table[:, 1] / temps[1]).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="could not reach every stage"):
        collect_stage_logits(Failing(table), list(range(40)), Readout("max_prob", temps, 3))


# --- 7. stage costs -------------------------------------------------------------------------------------------


def test_stage_costs_in_flops_and_milliseconds(tiny_exits):
    model, featurizer = tiny_exits.model, tiny_exits.featurizer
    predictor = EarlyExitPredictor(model, featurizer, "classification", ["a", "b", "c"], {})
    examples = [{"text": t} for t in TEXTS]
    costs = predictor.measure_costs(examples, latency=False)
    assert len(costs.flops) == 2 and costs.ms is None and costs.ms_includes is None
    assert costs.flops[0] > 0 and all(b > a for a, b in itertools.pairwise(costs.flops))
    assert costs.flops_full < costs.flops[-1]  # the full model does not pay for the intermediate head
    plain = EncoderClassifier(copy.deepcopy(model.backbone), copy.deepcopy(model.heads[-1]))
    assert costs.flops_full == pytest.approx(FlopMeter()(plain, _batch(featurizer, TEXTS))[1] / len(TEXTS), rel=0.01)
    fractions = costs.fractions("flops")
    assert 1.0 < fractions[-1] < 1.1 and fractions[0] < fractions[1]
    with pytest.raises(ValueError, match="no measured latency"):
        costs.fractions("ms")
    with pytest.raises(ValueError, match="'flops' or 'ms'"):
        costs.fractions("seconds")
    timed = measure_costs(predictor.runner(), examples, inputs=predictor.inputs, reference=predictor._reference,
                          timing_rows=4, warmup=1, repeats=3, max_seconds=1.0)
    assert timed.flops == costs.flops and timed.flops_full == costs.flops_full
    assert len(timed.ms) == 2 and timed.ms_full > 0 and timed.batch_size == 4 and timed.ms_includes == MS_INCLUDES
    assert len(timed.fractions("ms")) == 2 and timed.ms[1] > timed.ms[0]
    assert StageCosts.from_dict(json.loads(json.dumps(timed.to_dict()))) == timed
    assert not model.training


# --- 8. the adaptive predictor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("adaptive")
    train_path, dev_path = sentiment_files(root)
    model = {"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "exits": "all"}
    path = train(run_config(root / "run", train_path, dev_path, method="early_exit", model=model, epochs=4))
    cal_path = write_jsonl(root / "cal.jsonl", sentiment_rows(300, 7))
    labels = load(path).labels
    data = load_split(DatasetSpec(path=str(cal_path), task="classification", labels=labels))
    return {"path": path, "data": data, "root": root}


@pytest.fixture(scope="module")
def calibrated(trained) -> dict:
    """The trained predictor calibrated (max_drop 1 point against the full model) and saved, then reloaded."""
    predictor = load(trained["path"])
    calibration = predictor.calibrate(trained["data"], latency=True)
    predictor.save_calibration()
    return {"predictor": load(trained["path"]), "calibration": calibration}


def test_uncalibrated_adaptive_predictor_runs_the_full_model(trained):
    predictor = load(trained["path"])
    assert isinstance(predictor, EarlyExitPredictor) and predictor.num_stages == 2
    assert predictor.calibration is None
    with pytest.raises(ValueError, match="summon calibrate"):
        predictor.predict(TEXTS, budget=0.5)
    with pytest.raises(ValueError, match="summon calibrate"):
        predictor.predict(TEXTS, max_drop=0.01)
    out = predictor.predict(TEXTS)
    assert [p.stage for p in out] == [1] * 8 and all(p.cost is None for p in out)
    full = predictor.run_full(_encode(predictor.featurizer, TEXTS))
    want = torch.from_numpy(full).softmax(-1).numpy()
    np.testing.assert_allclose([p.probs for p in out], want, atol=1e-5)
    with pytest.raises(ValueError, match="at most one"):
        predictor.predict(TEXTS, budget=0.5, threshold=0.9)


def test_calibration_is_typed_saved_and_read_back(calibrated, trained):
    predictor, calibration = calibrated["predictor"], calibrated["calibration"]
    assert isinstance(predictor.calibration, Calibration)
    assert predictor.calibration.to_dict() == json.loads(json.dumps(calibration.to_dict()))
    assert calibration.policy == "max_prob" and len(calibration.temperatures) == 2
    assert calibration.rows == {"temperature": 90, "thresholds": 210, "seed": 0}
    assert calibration.table.n == 210 and len(calibration.costs.ms) == 2 and calibration.costs.device == "cpu"
    assert calibration.spec == CalibrationSpec()
    point = calibration.table.max_drop(0.01)
    assert calibration.default.threshold == point.threshold and calibration.default.point.cost == point.cost
    assert predictor.threshold_for() == point.threshold


def test_extreme_thresholds_answer_at_the_first_or_last_stage(calibrated):
    predictor = calibrated["predictor"]
    fractions = predictor.calibration.fractions("flops")
    low = predictor.predict(TEXTS, threshold=-INF)
    assert [p.stage for p in low] == [0] * 8 and [p.cost for p in low] == [fractions[0]] * 8
    logits = predictor.stage_logits([{"text": t} for t in TEXTS])
    assert [p.label_id for p in low] == (logits[0] / predictor.calibration.temperatures[0]).argmax(-1).tolist()
    high = predictor.predict(TEXTS, threshold=INF)
    assert [p.stage for p in high] == [1] * 8 and [p.cost for p in high] == [fractions[-1]] * 8


def test_a_pre_core_adaptive_section_reads_back_typed(calibrated):
    """Manifests written by main before the core (no 'spec' key) load and run unchanged."""
    section = calibrated["calibration"].to_dict()
    section.pop("spec")
    old = Calibration.from_dict(section)
    assert old.spec is None and old.default.threshold == calibrated["calibration"].default.threshold
    with pytest.raises(ValueError, match="recalibrate"):
        Calibration.from_dict({**section, "table": {"policy": "max_prob"}}, where="x/manifest.json")


def test_predictions_equal_the_executors(calibrated):
    predictor = calibrated["predictor"]
    calibration = predictor.calibration
    features = _encode(predictor.featurizer, TEXTS)
    batch = collate(features, predictor.featurizer.pad_id)
    temps = torch.tensor(calibration.temperatures, dtype=torch.float64)
    with torch.no_grad():
        every = predictor.model(batch).double() / temps[None, :, None]
    scores = stage_scores(every.softmax(-1), max_prob).numpy()
    threshold = median_threshold(scores[:, 0])  # no row sits on the boundary
    out = predictor.predict(TEXTS, threshold=threshold)
    stages = exit_stage(scores, threshold)
    assert [p.stage for p in out] == stages.tolist() and 0 < sum(p.stage for p in out) < 8
    want = every[torch.arange(8), torch.from_numpy(stages)].softmax(-1).numpy()
    np.testing.assert_allclose([p.probs for p in out], want, atol=1e-5)
    fractions = calibration.fractions("flops")
    assert [p.cost for p in out] == [fractions[s] for s in stages.tolist()]
    for batch_size in (1, 3, 64):  # every batch size gives the same answers
        result = predictor.run(features, threshold, batch_size=batch_size)
        np.testing.assert_array_equal(result.stage, stages)


def test_budget_max_drop_guaranteed_and_unit_knobs_pick_table_points(calibrated):
    predictor = calibrated["predictor"]
    table = predictor.calibration.table
    cheapest = min(p.cost for p in table.points)
    assert predictor.operating_point(budget=cheapest).cost <= cheapest
    assert predictor.operating_point(budget=1.0) == table.budget(1.0)
    assert predictor.operating_point(max_drop=0.05) == table.max_drop(0.05)
    assert predictor.operating_point(guaranteed=0.2, delta=0.2) == table.guaranteed(0.2, 0.2)[0]
    in_ms = predictor.operating_point(budget=0.9, unit="ms")
    ms = np.asarray(predictor.calibration.fractions("ms"))
    assert in_ms.cost == pytest.approx(np.dot(in_ms.exit_counts, ms) / table.n) and in_ms.cost <= 0.9
    with pytest.raises(ValueError, match="below the cheapest"):
        predictor.predict(TEXTS, budget=cheapest * 0.9)
    with pytest.raises(ValueError, match="unit must be"):
        predictor.predict(TEXTS, budget=0.5, unit="seconds")
    with pytest.raises(ValueError, match="guaranteed must be in"):
        predictor.predict(TEXTS, guaranteed=1.5)


def test_budget_holds_on_the_calibration_rows(calibrated, trained):
    predictor = calibrated["predictor"]
    table = predictor.calibration.table
    _, rows = split_rows(len(trained["data"].examples), 0.3, 0)
    texts = [trained["data"].examples[i]["text"] for i in rows]
    cheapest = min(p.cost for p in table.points)
    out = predictor.predict(texts, budget=cheapest)
    assert np.mean([p.cost for p in out]) <= cheapest + 1e-9, "the cheapest budget overspent"
    # every operating point replayed by the executor: the contract check, test_staged_contract.py


def test_calibrate_with_the_guaranteed_rule(trained):
    predictor = load(trained["path"])
    spec = CalibrationSpec(rule="guaranteed", value=0.1, delta=0.1)
    calibration = predictor.calibrate(trained["data"], spec, latency=False)
    default = calibration.default
    assert default.rule == "guaranteed" and default.delta == 0.1 and default.tests >= 1
    point, tests = calibration.table.guaranteed(0.1, 0.1)
    assert default.threshold == point.threshold and default.tests == len(tests)
    assert calibration.costs.ms is None
    assert predictor.threshold_for() == point.threshold


def test_fit_calibration_is_a_pure_function_of_logits_labels_costs_and_spec():
    gen = np.random.default_rng(0)
    gold = gen.integers(0, 4, 200)
    raws = gen.normal(size=(200, 3, 4)) * 2 + 3 * np.eye(4)[gold][:, None, :]  # informative, overconfident
    costs = StageCosts(flops=[1.0, 2.0, 3.0], flops_full=3.0)
    first = fit_calibration(raws, gold, costs, CalibrationSpec(seed=3), num_labels=4)
    again = fit_calibration([raws[:, k] for k in range(3)], gold, costs, CalibrationSpec(seed=3), num_labels=4)
    assert first.to_dict() == again.to_dict()
    assert first.rows == {"temperature": 60, "thresholds": 140, "seed": 3}
    other = fit_calibration(raws, gold, costs, CalibrationSpec(seed=4), num_labels=4)
    assert other.temperatures != first.temperatures  # another split of the rows
    with pytest.raises(ValueError, match="stage costs for"):
        fit_calibration(raws, gold, StageCosts(flops=[1.0], flops_full=1.0), CalibrationSpec(), num_labels=4)


def test_calibrate_rejects_unlabelled_data_and_unknown_rules(trained):
    predictor = load(trained["path"])
    before = copy.deepcopy(predictor.manifest.get("adaptive"))
    unlabelled = TaskData("classification", predictor.labels, [{"text": t} for t in TEXTS], "texts")
    with pytest.raises(ValueError, match="needs labels"):
        predictor.calibrate(unlabelled, latency=False)
    with pytest.raises(ValueError, match="unknown confidence score"):
        CalibrationSpec(policy="nope")
    with pytest.raises(ValueError, match="unknown rule"):
        CalibrationSpec(rule="cheapest")
    assert predictor.manifest.get("adaptive") == before  # nothing half-calibrated was stored


def test_calibration_refuses_too_few_rows(trained):
    predictor = load(trained["path"])
    before = copy.deepcopy(predictor.manifest.get("adaptive"))
    few = TaskData("classification", predictor.labels, trained["data"].examples[:12], "few")
    with pytest.raises(ValueError, match="12 calibration rows are too few: 4 would fit the temperatures and 8"):
        predictor.calibrate(few, latency=False)
    assert predictor.manifest.get("adaptive") == before  # nothing half-calibrated was stored


def test_recalibrating_keeps_the_previous_calibration(trained, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(trained["path"], folder)
    predictor = load(folder)
    predictor.calibrate(trained["data"], latency=False)
    predictor.save_calibration()
    first = read_manifest(folder)["adaptive"]
    predictor.calibrate(trained["data"], CalibrationSpec(rule="budget", value=0.8), latency=False)
    predictor.save_calibration()
    manifest = read_manifest(folder)
    assert manifest["adaptive_previous"] == first and manifest["adaptive"]["default"]["rule"] == "budget"


# --- 9. adaptive evaluation -----------------------------------------------------------------------------------


def test_oracle_curves_on_a_hand_made_example():
    preds = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 2, 2]])
    gold = np.array([1, 1, 1, 1])
    costs = [0.2, 0.5, 1.0]
    correct = oracle_curve(preds, gold, gold, costs)
    assert np.allclose(correct, [(0.2, 0.25), (0.2, 0.25), (0.2, 0.25), (0.275, 0.5), (0.475, 0.75)])
    agree = oracle_curve(preds, preds[:, -1], gold, costs)
    assert np.allclose(agree, [(0.2, 0.25), (0.2, 0.25), (0.275, 0.5), (0.35, 0.5), (0.55, 0.75)])


def _op(cost: float, accuracy: float) -> OperatingPoint:
    return OperatingPoint(threshold=0.0, cost=cost, disagreement=0.0, accuracy=accuracy, exit_counts=[])


def test_envelope_cost_at_accuracy_and_area_between():
    points = [_op(0.5, 0.6), _op(0.3, 0.5), _op(0.4, 0.4), _op(0.5, 0.7), _op(0.7, 0.7), _op(0.9, 0.8)]
    curve = envelope(points)
    assert curve == [(0.3, 0.5), (0.5, 0.7), (0.9, 0.8)]
    assert cost_at_accuracy(curve, 0.7) == 0.5
    assert cost_at_accuracy(curve, 0.5) == 0.3
    assert cost_at_accuracy(curve, 0.85) is None
    assert area_between(curve, curve) == 0.0
    upper, lower = [(0.0, 0.6), (1.0, 0.6)], [(0.0, 0.5), (1.0, 0.5)]
    assert area_between(upper, lower) == pytest.approx(0.1)
    assert area_between(lower, upper) == pytest.approx(-0.1)
    better = [(c, a + 0.05) for c, a in curve]
    assert area_between(better, curve) > 0


def test_evaluate_adaptive_writes_plots_and_reports_curves(calibrated, trained, tmp_path):
    predictor = calibrated["predictor"]
    data = TaskData("classification", trained["data"].labels, trained["data"].examples[:120], "cal")
    result = evaluate_adaptive(predictor, data, out_dir=tmp_path / "eval")
    for key in ("chosen", "policy", "oracle_correct", "oracle_agree", "full_accuracy", "exit_accuracy",
                "area_policy_to_oracle_agree", "cost_at_drop_1pt", "reliability", "plots"):
        assert key in result
    assert result["chosen"]["threshold"] == calibrated["calibration"].default.to_dict()["threshold"]
    assert sum(result["chosen"]["exit_counts"]) == 120 and len(result["exit_accuracy"]) == 2
    assert result["kind"] == "early_exit" and result["device"] == "cpu"
    assert set(result["plots"]) == {"curve", "exits", "reliability"}
    for path in result["plots"].values():
        assert Path(path).read_bytes()[:8] == PNG
    # the agreeing oracle ends at the full model's accuracy, at a cost no higher than the full model's
    assert result["oracle_agree_end"]["accuracy"] == pytest.approx(result["full_accuracy"])


def test_measure_speedup_reports_each_batch_size(calibrated, trained):
    predictor = calibrated["predictor"]
    features = predictor.featurizer.encode(trained["data"].examples[:32], "classification")
    out = measure_speedup(predictor, features, -INF, batch_sizes=(1, 8), repeats=1)
    assert set(out) == {"1", "8"}
    fractions = predictor.calibration.fractions("flops")
    for row in out.values():
        assert set(row) == {"full_seconds", "adaptive_seconds", "realised", "theoretical",
                            "realised_over_theoretical", "theoretical_uniform", "realised_over_theoretical_uniform"}
        assert row["full_seconds"] > 0 and row["adaptive_seconds"] > 0
        assert row["theoretical"] == pytest.approx(1.0 / fractions[0])  # every row answers at stage 0
        assert row["theoretical_uniform"] == pytest.approx(1.0 / fractions[0])
        assert row["realised"] == pytest.approx(row["full_seconds"] / row["adaptive_seconds"])


def test_theoretical_speedup_weights_each_row_by_its_length(calibrated, trained, monkeypatch):
    """Long rows going deep cost more than the average row: the length-weighted promise is lower."""
    predictor = calibrated["predictor"]
    features = predictor.featurizer.encode(trained["data"].examples[:8], "classification")
    features = sorted(features, key=lambda f: len(f["input_ids"]))
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=float)
    stages = np.array([0] * 4 + [1] * 4)  # the four longest rows go to the last stage
    monkeypatch.setattr(predictor, "run", lambda feats, threshold, batch_size: SimpleNamespace(stage=stages))
    row = measure_speedup(predictor, features, 0.5, batch_sizes=(2,), repeats=1)["2"]
    f = np.asarray(predictor.calibration.fractions("flops"))[stages]
    assert row["theoretical"] == pytest.approx(lengths.sum() / (lengths * f).sum())
    assert row["theoretical_uniform"] == pytest.approx(1.0 / f.mean())
    assert lengths[4:].mean() > lengths[:4].mean() and row["theoretical"] < row["theoretical_uniform"]
