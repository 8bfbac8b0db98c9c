"""Tests for summon.evaluate: metrics against naive loops, FLOP/latency counting, and the report writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from torch import nn

from summon.data.features import collate
from summon.evaluation import (
    accuracy,
    classification_metrics,
    count_parameters,
    expected_calibration_error,
    macro_f1,
    markdown_table,
    nll,
    reliability_bins,
    span_f1,
    write_report,
)
from summon.measure.cost import FlopMeter
from summon.measure.profile import LATENCY_INCLUDES, measure_costs

# ---------------------------------------------------------------- naive reference implementations


def naive_accuracy(pred, gold):
    return sum(1 for p, g in zip(pred, gold) if p == g) / len(gold)


def naive_macro_f1(pred, gold):
    f1s = []
    for c in sorted(set(pred) | set(gold)):
        tp = sum(1 for p, g in zip(pred, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(pred, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(pred, gold) if p != c and g == c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


def naive_nll(probs, gold):
    return -sum(math.log(max(row[g], 1e-12)) for row, g in zip(probs, gold)) / len(gold)


def naive_ece(probs, gold, n_bins):
    edges = list(np.linspace(0.0, 1.0, n_bins + 1))  # same floats as the implementation
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = []
        for row, g in zip(probs, gold):
            conf = max(row)
            if lo < conf <= hi or (b == 0 and conf <= lo):
                members.append((conf, int(row.index(conf) == g)))
        if members:
            acc = sum(c for _, c in members) / len(members)
            conf = sum(p for p, _ in members) / len(members)
            total += abs(acc - conf) * len(members) / len(gold)
    return total


def random_case(seed, n=60, c=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    gold = rng.integers(0, c, size=n)
    return probs, gold


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_metrics_match_naive_loops(seed):
    probs, gold = random_case(seed)
    pred = probs.argmax(axis=1)
    assert accuracy(pred, gold) == pytest.approx(naive_accuracy(pred.tolist(), gold.tolist()))
    assert macro_f1(pred, gold) == pytest.approx(naive_macro_f1(pred.tolist(), gold.tolist()))
    assert nll(probs, gold) == pytest.approx(naive_nll(probs.tolist(), gold.tolist()))
    for n_bins in (5, 15):
        assert expected_calibration_error(probs, gold, n_bins) == pytest.approx(
            naive_ece(probs.tolist(), gold.tolist(), n_bins)
        )
    out = classification_metrics(probs, gold)
    assert set(out) == {"accuracy", "macro_f1", "nll", "ece", "n"}
    assert out["n"] == len(gold) and all(type(v) in (float, int) for v in out.values())


def test_macro_f1_degenerate_classes():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 1, 1])  # class 2 never predicted
    assert macro_f1(pred, gold) == pytest.approx(naive_macro_f1(pred.tolist(), gold.tolist()))
    # a label that occurs nowhere (3) is skipped, whatever num_labels says
    assert macro_f1(pred, gold, num_labels=5) == pytest.approx(macro_f1(pred, gold))
    # a predicted-only class counts as F1 0
    assert macro_f1(np.array([0, 3]), np.array([0, 0])) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(np.array([1, 1]), np.array([1, 1])) == 1.0


def test_nll_clips_zero_probability():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert nll(probs, np.array([1, 0])) == pytest.approx((-math.log(1e-12) - math.log(0.5)) / 2)


def test_ece_zero_when_perfectly_calibrated():
    # 10 examples at confidence 0.8 with 8 right, 5 at confidence 0.6 with 3 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    gold = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(probs, gold) == pytest.approx(0.0, abs=1e-12)
    bins = reliability_bins(probs, gold, n_bins=5)
    assert len(bins["edges"]) == 6 and sum(bins["count"]) == 15
    assert bins["count"] == [0, 0, 5, 10, 0]
    assert bins["confidence"][0] is None and bins["accuracy"][3] == pytest.approx(0.8)


def test_ece_confidence_one_goes_to_last_bin():
    bins = reliability_bins(np.array([[1.0, 0.0]]), np.array([1]), n_bins=4)
    assert bins["count"] == [0, 0, 0, 1]
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: nll(np.ones(3) / 3, np.array([0])), "2-D"),
        (lambda: nll(np.full((2, 2), 0.5), np.array([0, 1, 1])), "2 rows"),
        (lambda: nll(np.full((2, 2), 0.5), np.array([0, 2])), "label 2"),
        (lambda: nll(np.array([[3.0, -1.0]]), np.array([0])), "logits"),
        (lambda: accuracy(np.array([0, 1]), np.array([0])), "same length"),
        (lambda: accuracy(np.array([0.5]), np.array([0])), "integer"),
        (lambda: macro_f1(np.array([0, 4]), np.array([0, 1]), num_labels=3), "num_labels"),
        (lambda: expected_calibration_error(np.full((1, 2), 0.5), np.array([0]), n_bins=0), "n_bins"),
    ],
)
def test_metric_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_span_f1_known_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-MISC", "O"]]  # PER found, LOC and ORG missed, MISC spurious
    out = span_f1(gold, pred)
    assert out["precision"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert out["token_accuracy"] == pytest.approx(3 / 6)


def test_span_f1_length_mismatch():
    with pytest.raises(ValueError, match="sentence 1"):
        span_f1([["O"], ["O", "B-PER"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 sentences"):
        span_f1([["O"], ["O"]], [["O"]])


# ---------------------------------------------------------------- cost


class IdsLinear(nn.Module):
    """Summon-style model: a linear layer over the (float) input ids of a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, batch):
        return self.lin(batch["input_ids"].float())


class Bag(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 6, **kwargs)

    def forward(self, batch):
        return self.bag(batch["input_ids"])


def rows(*ids):
    return [{"input_ids": list(row)} for row in ids]


def flops(model, features, pad_id=0, **options):
    return measure_costs(model, features, pad_id, latency=False, **options)["flops_per_example"]


def test_model_flops_linear_and_mode_restored():
    model = IdsLinear()
    model.train()
    assert flops(model, rows(*[[1] * 16] * 4)) == 2 * 16 * 8
    assert flops(model, rows(*[[1] * 16] * 40), flop_examples=33) == 2 * 16 * 8  # two batches: 32 and 1
    assert model.training and model.lin.training
    assert count_parameters(model) == 16 * 8 + 8
    out = measure_costs(model, rows(*[[1] * 16] * 40), 0, latency=False, flop_examples=33)
    assert out["flop_examples"] == 33 and out["params"] == 16 * 8 + 8 and "latency" not in out


def test_model_flops_embedding_bag_2d():
    assert flops(Bag(mode="mean"), rows([1, 2, 3, 4], [5, 6, 7, 8], [9, 1, 2, 3])) == 4 * 6  # indices x dim
    # padding entries (collation pads the shorter row with pad_id) are skipped by the kernel and not counted
    assert flops(Bag(mode="mean", padding_idx=0), rows([1, 2], [3])) == (3 * 6) / 2


def test_model_flops_equal_one_flop_meter_call_per_length_sorted_batch():
    lengths = [3, 9, 1, 7, 7, 2] * 7  # 42 rows: batches of 32 and 10, longest first
    features = rows(*[[1 + i % 19] * n for i, n in enumerate(lengths)])
    meter, model, total = FlopMeter(), Bag(mode="sum", padding_idx=0), 0
    order = sorted(range(len(features)), key=lambda i: -lengths[i])
    for start in (0, 32):
        total += meter(model, collate([features[i] for i in order[start:start + 32]], 0))[1]
    assert flops(model, features) == total / len(features)


def test_count_parameters_tied_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert count_parameters(nn.ModuleList([emb, head])) == 40


def test_model_costs_refuse_bad_input():
    with pytest.raises(ValueError, match="at least one example"):
        measure_costs(IdsLinear(), [], 0)
    with pytest.raises(ValueError, match="batch_sizes"):
        measure_costs(IdsLinear(), rows([1] * 16), 0, batch_sizes=[0])


def test_model_latency_is_the_forward_alone_at_each_batch_size():
    model = IdsLinear()
    out = measure_costs(model, rows(*[[1] * 16] * 3), 0, batch_sizes=(1, 4), max_seconds=0.001)
    assert set(out["latency"]) == {"1", "4"} and out["latency_includes"] == LATENCY_INCLUDES
    assert "tokenisation" in LATENCY_INCLUDES and "not inside" in LATENCY_INCLUDES
    for bs, stats in out["latency"].items():
        assert set(stats) == {"median_ms", "p90_ms", "per_example_ms", "runs"}
        assert stats["runs"] >= 3 and stats["per_example_ms"] == pytest.approx(stats["median_ms"] / int(bs))
    assert model.training
    json.dumps(out)


# ---------------------------------------------------------------- report


def entry(name, acc, flops, ms):
    return {
        "name": name,
        "metrics": {"accuracy": acc, "macro_f1": acc - 0.05, "n": 100},
        "cost": {
            "params": 1_000_000,
            "flops_per_example": flops,
            "latency": {bs: {"per_example_ms": ms / int(bs), "median_ms": ms} for bs in ("1", "32", "128")},
        },
        "notes": "kept",
    }


def test_write_report(tmp_path):
    entries = [entry("teacher-big", 0.91, 4e9, 40.0), entry("student-small", 0.88, 1e9, 8.0)]
    paths = write_report(entries, tmp_path / "rep", title="Demo", reference="teacher-big")
    assert set(paths) == {"json", "markdown", "png"} and all(p.exists() for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "teacher-big" in md and "student-small" in md
    assert "0.250x" in md and "1.000x" in md and "0.9100" in md
    header = next(line for line in md.splitlines() if line.startswith("| name"))
    assert header.index("accuracy") < header.index("macro_f1")
    data = json.loads(paths["json"].read_text())
    assert data["title"] == "Demo" and data["reference"] == "teacher-big"
    assert data["entries"][0]["notes"] == "kept" and "machine" in data and "created" in data


def test_write_report_bad_entries(tmp_path):
    bad = {"name": "broken", "metrics": {"accuracy": 0.5}}
    with pytest.raises(ValueError, match="broken"):
        write_report([entry("ok", 0.9, 1e6, 1.0), bad], tmp_path, title="x")
    with pytest.raises(ValueError, match="reference"):
        write_report([entry("ok", 0.9, 1e6, 1.0)], tmp_path, title="x", reference="missing")


def test_markdown_table():
    table = markdown_table([{"a": 1, "b": "x|y"}, {"a": 2}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 2 | - |"]
