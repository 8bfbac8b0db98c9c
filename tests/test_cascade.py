"""Tests for cascades (*Summon the Titans*): the easy-example losses and hardness, easy_kd training, stage-major
cascade execution with local and remote (loopback HTTP) stages, calibration with every scorer, the learned
gate, saving and loading, the command line and the cascade evaluation.

Only tiny models are trained: a tiny-bert teacher (4 epochs) and bag-of-n-gram students with 256 buckets.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import find_free_port, serving
from toy import median_threshold, run_config, sentiment_files, sentiment_rows, write_jsonl

import summon
import summon.adaptive.remote as protocol
from summon import load
from summon.adaptive.calibration import CalibrationSpec, split_rows
from summon.adaptive.cascade import CascadePredictor, build_cascade
from summon.adaptive.cascade_stages import LocalStage, StageUnavailable
from summon.adaptive.gate import Gate, gate_features
from summon.adaptive.knob import Knob
from summon.adaptive.remote import RemoteStage
from summon.cli.main import main
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec
from summon.evaluation.runner import evaluate_staged
from summon.losses import defer_surrogate, kd_kl, selective_kd, uniform_kl
from summon.measure.profile import measure_costs
from summon.methods.easy_kd import hard_rows
from summon.predictors.predictor import MANIFEST, Predictor
from summon.training.loop import train

INF = float("inf")
BUDGET = 0.25
NGRAM = {"kind": "ngram", "num_buckets": 256, "embed_dim": 8, "dropout": 0.0}
TEXTS = ["great fun", "a terrible boring plot", "the movie was really good", "worst film",
         "the story and the acting", "love it", "awful", "so so"]


# --- helpers ----------------------------------------------------------------------------------------------


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(logits, dtype=np.float64)).softmax(-1).numpy()


def _calibrate(cascade, data, scorer="max_prob", **spec):
    return cascade.calibrate(data, CalibrationSpec(policy=scorer, **spec), latency=False)


def _examples(texts) -> list[dict]:
    return [{"text": t} for t in texts]


def _raw(predictor, examples) -> np.ndarray:
    return np.stack(predictor.logits(examples, raw=True)).astype(np.float64)


def _max_prob(raw: np.ndarray, k: int = 2, temperature: float = 1.0) -> np.ndarray:
    return softmax_rows(raw[:, :k] / temperature).max(axis=1)


def _record_calls(monkeypatch, stage) -> list[list[str]]:
    """Wrap ``stage.logits`` to record the texts of every call."""
    calls: list[list[str]] = []
    original = stage.logits

    def recording(examples, batch_size=64):
        calls.append([ex["text"] for ex in examples])
        return original(examples, batch_size)

    monkeypatch.setattr(stage, "logits", recording)
    return calls


def _post(url: str, payload) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> SimpleNamespace:
    """A tiny-bert teacher and two easy_kd n-gram students (variant selective and variant defer)."""
    root = tmp_path_factory.mktemp("cascade")
    train_path, dev_path = sentiment_files(root / "data", n_train=192, n_dev=48)
    cal_path = write_jsonl(root / "data" / "cal.jsonl", sentiment_rows(160, 7))
    teacher = train(run_config(root / "teacher", train_path, dev_path, epochs=4))
    students, configs = {}, {}
    for variant in ("selective", "defer"):
        model = {**NGRAM, "defer_output": variant == "defer"}
        cfg = run_config(root / variant, train_path, dev_path, method="easy_kd", model=model, lr=0.05, epochs=3)
        cfg.teacher = str(teacher)
        cfg.method_args = {"variant": variant, "budget": BUDGET}
        configs[variant] = cfg
        students[variant] = train(cfg)
    labels = load(teacher).labels
    cal = load_split(DatasetSpec(path=str(cal_path), task="classification", labels=labels))
    return SimpleNamespace(root=root, train=train_path, dev=dev_path, cal_path=cal_path, cal=cal, teacher=teacher,
                           selective=students["selective"], defer=students["defer"], configs=configs, labels=labels)


@pytest.fixture(scope="module")
def preds(toy) -> SimpleNamespace:
    return SimpleNamespace(teacher=load(toy.teacher), selective=load(toy.selective), defer=load(toy.defer))


def _two_stage(toy, preds, first: str = "selective") -> CascadePredictor:
    stages = [LocalStage("student", getattr(preds, first), str(getattr(toy, first))),
              LocalStage("teacher", preds.teacher, str(toy.teacher))]
    return CascadePredictor(stages, "classification", preds.teacher.labels)


@pytest.fixture(scope="module")
def calibrated(toy, preds, tmp_path_factory) -> SimpleNamespace:
    """A student -> teacher cascade calibrated with max_prob, saved and loaded again."""
    cascade = _two_stage(toy, preds)
    section = _calibrate(cascade, toy.cal).to_dict()
    directory = cascade.save(tmp_path_factory.mktemp("calibrated") / "cascade")
    return SimpleNamespace(cascade=cascade, section=section, dir=directory, loaded=summon.load(directory))


@pytest.fixture(scope="module")
def teacher_server(preds):
    pytest.importorskip("fastapi")
    from summon.serve.logits_server import create_app

    with serving(create_app(preds.teacher)) as url:
        yield url


# --- 1. losses --------------------------------------------------------------------------------------------


def _naive_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist())))


def test_uniform_kl_equals_the_naive_kl_from_uniform():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [5.0, 1.0, -3.0]], dtype=torch.float64)
    got = uniform_kl(s)
    expected = [_naive_kl(torch.full((3,), 1 / 3), row.softmax(-1)) for row in s]
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    assert abs(float(got[1])) < 1e-7  # uniform student: nothing to push


def _naive_selective(s, t, easy, temperature, weight) -> float:
    total = 0.0
    for s_row, t_row, e in zip(s, t, easy.tolist()):
        kd = temperature**2 * _naive_kl((t_row / temperature).softmax(-1), (s_row / temperature).softmax(-1))
        hard = _naive_kl(torch.full((len(s_row),), 1 / len(s_row)), s_row.softmax(-1))
        total += e * kd + weight * (1 - e) * hard
    return total / len(s)


@pytest.mark.parametrize("easy", [[1.0, 0.0, 1.0, 0.0], [0.3, 1.0, 0.0, 0.75]])
def test_selective_kd_equals_the_naive_per_row_mixture(easy):
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, generator=gen) * 2, torch.randn(4, 3, generator=gen) * 2
    easy_t = torch.tensor(easy)
    for temperature, weight in [(1.0, 1.0), (2.0, 0.5), (3.0, 2.0)]:
        got = float(selective_kd(s, t, easy_t, temperature, weight))
        assert got == pytest.approx(_naive_selective(s, t, easy_t, temperature, weight), rel=1e-5, abs=1e-6)
    # all easy: plain KD; all hard: the uniform target only
    assert float(selective_kd(s, t, torch.ones(4), 2.0, 1.0)) == pytest.approx(float(kd_kl(s, t, 2.0)), rel=1e-5)
    assert float(selective_kd(s, t, torch.zeros(4), 2.0, 0.5)) == pytest.approx(
        0.5 * float(uniform_kl(s).mean()), rel=1e-5)


def _naive_defer(s, t, easy) -> float:
    k = t.shape[1]
    total = 0.0
    for s_row, t_row, e in zip(s, t, easy.tolist()):
        p = s_row.softmax(-1)  # over K + 1
        p_t = t_row.softmax(-1)
        easy_part = -sum(float(p_t[j]) * math.log(float(p[j])) for j in range(k))
        total += e * easy_part + (1 - e) * -math.log(float(p[k]))
    return total / len(s)


@pytest.mark.parametrize("easy", [[1.0, 0.0, 0.0, 1.0, 1.0], [0.2, 0.5, 1.0, 0.0, 0.9]])
def test_defer_surrogate_equals_the_naive_per_row_reference(easy):
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=gen) * 2, torch.randn(5, 3, generator=gen) * 2
    easy_t = torch.tensor(easy)
    assert float(defer_surrogate(s, t, easy_t)) == pytest.approx(_naive_defer(s, t, easy_t), rel=1e-5, abs=1e-6)


def test_defer_surrogate_needs_the_defer_output():
    with pytest.raises(ValueError, match=r"K \+ 1 = 4"):
        defer_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="defer_output"):
        defer_surrogate(torch.zeros(2, 5), torch.zeros(2, 3), torch.ones(2))


@pytest.mark.parametrize("easy, sign", [(1.0, 1.0), (0.0, -1.0)])
def test_defer_loss_pushes_the_defer_probability_down_on_easy_rows_and_up_on_hard_rows(easy, sign):
    s = torch.tensor([[1.0, -0.5, 0.3]], requires_grad=True)  # K = 2 classes and the defer logit
    t = torch.tensor([[2.0, -1.0]])
    defer_surrogate(s, t, torch.tensor([easy])).backward()
    grad = float(s.grad[0, 2])
    assert grad * sign > 1e-3  # descent moves the defer logit against the gradient
    stepped = s.detach() - 0.1 * s.grad
    before, after = s.detach().softmax(-1)[0, 2], stepped.softmax(-1)[0, 2]
    assert (after - before) * -sign > 0


def test_kd_kl_reduction_none_is_per_row_and_averages_to_the_default():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    per_row = kd_kl(s, t, 2.0, reduction="none")
    assert per_row.shape == (6,)
    torch.testing.assert_close(per_row.mean(), kd_kl(s, t, 2.0))
    for i in range(6):
        expected = 4.0 * _naive_kl((t[i] / 2).softmax(-1), (s[i] / 2).softmax(-1))
        assert float(per_row[i]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        kd_kl(s, t, reduction="sum")


# --- 2. hardness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, budget", [(1, 0.4), (7, 0.2), (10, 0.25), (10, 0.35), (33, 0.5), (40, 0.9)])
def test_hard_rows_returns_exactly_the_budget_share(n, budget):
    rng = np.random.default_rng(n)
    teacher, student = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    for s in (None, student):
        hard = hard_rows(teacher, s, budget)
        assert len(hard) == round(budget * n) and len(set(hard.tolist())) == len(hard)
        assert list(hard) == sorted(hard) and all(0 <= i < n for i in hard)


def test_hard_rows_without_a_student_are_the_least_confident_teacher_rows():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.01, 0.99], [0.4, 0.6], [0.7, 0.3]])
    assert hard_rows(np.log(probs), None, 0.4).tolist() == [1, 3]  # confidences .55 and .6
    assert hard_rows(np.log(probs), None, 0.2).tolist() == [1]


def test_hard_rows_with_a_student_are_the_largest_disagreements():
    teacher = np.log(np.array([[0.9, 0.1], [0.5, 0.5], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    student = teacher.copy()
    student[2] = np.log([0.1, 0.9])  # a confident teacher row the student gets wrong: the largest KL
    student[4] = np.log([0.4, 0.6])  # a small disagreement
    student[0] = np.log([0.85, 0.15])  # a tiny one
    assert hard_rows(teacher, student, 0.4).tolist() == [2, 4]
    assert hard_rows(teacher, student, 0.2).tolist() == [2]
    # the least confident teacher row (1) is not hard by disagreement, but is by confidence
    assert hard_rows(teacher, None, 0.2).tolist() == [1]
    # a defer column on the student is ignored
    with_defer = np.concatenate([student, np.full((5, 1), 10.0)], axis=1)
    assert hard_rows(teacher, with_defer, 0.4).tolist() == [2, 4]


# --- 3. easy_kd training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["selective", "defer"])
def test_easy_kd_writes_the_hard_set_of_every_epoch(toy, preds, variant):
    out = Path(getattr(toy, variant)).parent
    files = sorted((out / "hardness").glob("epoch_*.json"))
    assert [f.name for f in files] == ["epoch_0.json", "epoch_1.json", "epoch_2.json"]
    n = len(load_split(DatasetSpec(path=str(toy.train), task="classification")))
    records = [json.loads(f.read_text()) for f in files]
    for e, record in enumerate(records):
        assert record["epoch"] == e and record["budget"] == BUDGET
        assert len(record["hard"]) == round(BUDGET * n) == len(set(record["hard"]))
        assert record["criterion"] == ("teacher_confidence" if e == 0 else "disagreement")
    # epoch 0: the least confident teacher rows (up to ties within float noise)
    train_examples = [{"text": r["text"]} for r in map(json.loads, toy.train.read_text().splitlines())]
    confidence = _max_prob(_raw(preds.teacher, train_examples))
    hard = np.zeros(n, dtype=bool)
    hard[records[0]["hard"]] = True
    assert confidence[hard].max() <= confidence[~hard].min() + 1e-5
    manifest = preds.selective.manifest if variant == "selective" else preds.defer.manifest
    assert manifest["training"]["method"] == "easy_kd"
    assert manifest["training"]["method_args"]["variant"] == variant


def test_defer_student_has_a_raw_defer_column_but_predicts_the_classes(preds):
    examples = _examples(TEXTS)
    assert preds.defer.defer_output and not preds.selective.defer_output
    assert preds.defer.manifest["architecture"]["defer_output"] is True
    assert all(row.shape == (2,) for row in preds.defer.logits(examples))
    raw = preds.defer.logits(examples, raw=True)
    assert all(row.shape == (3,) for row in raw)
    np.testing.assert_allclose(np.stack(raw)[:, :2], np.stack(preds.defer.logits(examples)))
    for p in preds.defer.predict(TEXTS):
        assert p.label in preds.defer.labels and len(p.probs) == 2 and p.label_id < 2
    assert all(row.shape == (2,) for row in preds.selective.logits(examples, raw=True))


def test_rerunning_a_finished_easy_kd_run_changes_no_hard_set(toy):
    cfg = toy.configs["selective"]
    out = Path(cfg.output_dir)
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in (out / "hardness").iterdir()}
    steps_before = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e]
    start = time.monotonic()
    train(cfg)
    assert time.monotonic() - start < 20
    after = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in (out / "hardness").iterdir()}
    assert after == before
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if "loss" in e] == steps_before  # no training step ran again
    assert any(e.get("event") == "resume" for e in events)


# --- 4. execution -----------------------------------------------------------------------------------------


def test_extreme_thresholds_answer_everything_at_the_last_or_first_stage(toy, preds):
    cascade = _two_stage(toy, preds)
    examples = _examples(TEXTS)
    full = cascade.run(examples, INF)
    assert full.stage.tolist() == [1] * len(TEXTS) and not full.fallback.any()
    np.testing.assert_allclose(full.logits, _raw(preds.teacher, examples), atol=1e-5)
    first = cascade.run(examples, -INF)
    assert first.stage.tolist() == [0] * len(TEXTS) and not first.fallback.any()
    np.testing.assert_allclose(first.logits, _raw(preds.selective, examples), atol=1e-5)
    # uncalibrated: the default runs the full model, and predictions carry no cost
    out = cascade.predict(TEXTS)
    assert [p.stage for p in out] == [1] * len(TEXTS) and all(p.cost is None for p in out)
    assert [p.label for p in out] == [p.label for p in preds.teacher.predict(TEXTS)]


def test_stage_major_batching_sends_only_the_deferred_rows_in_full_batches(toy, preds, monkeypatch):
    cascade = _two_stage(toy, preds)
    examples = [{"text": ex["text"]} for ex in toy.cal.examples[:40]]
    texts = [ex["text"] for ex in examples]
    scores = _max_prob(_raw(preds.selective, examples))
    threshold = median_threshold(scores)
    deferred = [t for t, s in zip(texts, scores) if s < threshold]
    assert 0 < len(deferred) < len(texts)
    first_calls = _record_calls(monkeypatch, cascade.stages[0])
    last_calls = _record_calls(monkeypatch, cascade.stages[1])
    sizes: list[int] = []
    hook = preds.teacher.model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0]["input_ids"])))
    try:
        result = cascade.run(examples, threshold, batch_size=4)
    finally:
        hook.remove()
    assert sorted(itertools.chain(*first_calls)) == sorted(texts) and all(len(c) == 4 for c in first_calls)
    assert sorted(itertools.chain(*last_calls)) == sorted(deferred)  # exactly the deferred rows, each once
    d = len(deferred)
    full_batches = [4] * (d // 4) + ([d % 4] if d % 4 else [])
    assert [len(c) for c in last_calls] == full_batches and sizes == full_batches  # regrouped into full batches
    assert result.stage.tolist() == [int(s < threshold) for s in scores]
    for i, ex in enumerate(examples):  # each row's answer is the answer it gets alone
        alone = cascade.run([ex], threshold)
        assert alone.stage[0] == result.stage[i]
        np.testing.assert_allclose(alone.logits[0], result.logits[i], atol=1e-5)


def test_a_stage_gets_no_call_when_no_row_is_left(toy, preds, monkeypatch):
    cascade = _two_stage(toy, preds)
    calls = _record_calls(monkeypatch, cascade.stages[1])
    cascade.run(_examples(TEXTS), -INF)
    assert calls == []


def test_three_stage_cascade_rows_answered_by_stage_one_never_reach_stage_two(toy, preds, monkeypatch):
    stages = [LocalStage("ngram", preds.selective, str(toy.selective)),
              LocalStage("defer", preds.defer, str(toy.defer)),
              LocalStage("teacher", preds.teacher, str(toy.teacher))]
    cascade = CascadePredictor(stages, "classification", preds.teacher.labels)
    examples = [{"text": ex["text"]} for ex in toy.cal.examples[:60]]
    texts = [ex["text"] for ex in examples]
    s0 = _max_prob(_raw(preds.selective, examples))
    s1 = _max_prob(_raw(preds.defer, examples))
    t0 = median_threshold(s0)
    past0 = s0 < t0
    t1 = median_threshold(s1[past0])
    assert np.abs(s1 - t1).min() > 1e-5
    expected = np.where(~past0, 0, np.where(s1 >= t1, 1, 2))
    assert {0, 1, 2} <= set(expected.tolist())
    calls1 = _record_calls(monkeypatch, stages[1])
    calls2 = _record_calls(monkeypatch, stages[2])
    result = cascade.run(examples, np.tile([t0, t1, 0.5], (len(examples), 1)))  # one per row and stage
    assert result.stage.tolist() == expected.tolist()
    assert sorted(itertools.chain(*calls1)) == sorted(t for t, e in zip(texts, expected) if e >= 1)
    assert sorted(itertools.chain(*calls2)) == sorted(t for t, e in zip(texts, expected) if e == 2)
    np.testing.assert_allclose(result.logits[expected == 1], _raw(preds.defer, examples)[expected == 1][:, :2],
                               atol=1e-5)


# --- 5. calibration ---------------------------------------------------------------------------------------


def _expected_scores(scorer: str, raw: np.ndarray, temperature: float, gate: Gate | None) -> np.ndarray:
    probs = softmax_rows(raw[:, :2] / temperature)
    if scorer == "max_prob":
        return probs.max(axis=1)
    if scorer == "margin":
        top = np.sort(probs, axis=1)[:, ::-1]
        return top[:, 0] - top[:, 1]
    if scorer == "entropy":
        return 1 + (probs * np.log(probs)).sum(axis=1) / math.log(2)
    if scorer == "defer":
        return 1 - softmax_rows(raw / temperature)[:, 2]
    return gate(probs).numpy()


def _flops(predictor, data) -> float:
    features = predictor.featurizer.encode(data.examples, data.task)
    return measure_costs(predictor.model, features, predictor.featurizer.pad_id, latency=False)["flops_per_example"]


@pytest.mark.parametrize("scorer", ["max_prob", "margin", "entropy", "gate", "defer"])
def test_calibrate_cascade_with_every_scorer(toy, preds, scorer):
    student = "defer" if scorer == "defer" else "selective"
    cascade = _two_stage(toy, preds, student)
    calibration = _calibrate(cascade, toy.cal, scorer)
    section = calibration.to_dict()
    assert cascade.adaptive == section and section["policy"] == scorer
    temps = section["temperatures"]
    assert len(temps) == 2 and all(t > 0 for t in temps)
    costs = section["costs"]
    flops_student, flops_teacher = (_flops(getattr(preds, name), toy.cal) for name in (student, "teacher"))
    assert costs["flops"][0] < costs["flops"][1]
    assert costs["flops"][0] == pytest.approx(flops_student)
    assert costs["flops"][1] == pytest.approx(flops_student + flops_teacher)  # cumulative
    assert costs["flops_full"] == pytest.approx(flops_teacher)  # the last stage alone
    fractions = cascade.stage_fractions()
    assert fractions[0] < 1 < fractions[-1]
    fit_rows, test_rows = split_rows(len(toy.cal), 0.3, 0)
    assert section["rows"] == {"temperature": len(fit_rows), "thresholds": len(test_rows), "seed": 0}
    table = cascade.calibration.table
    assert table.policy == scorer and table.n == len(test_rows) and len(table.points) >= 2
    assert len(section["calibration"]) == 2
    gates = section.get("gates")
    if scorer == "gate":
        assert gates[1] is None and len(gates[0]["weight"]) == 6
        assert isinstance(cascade.calibration.gates[0], Gate) and cascade.calibration.gates[1] is None
    else:
        assert gates is None
    # serving uses the calibrated scorer: a row stops at stage 0 exactly when its score reaches the threshold
    examples = [{"text": ex["text"]} for ex in toy.cal.examples[:50]]
    raw = _raw(getattr(preds, student), examples)
    scores = _expected_scores(scorer, raw, temps[0], (cascade.calibration.gates or [None])[0])
    threshold = median_threshold(scores)
    result = cascade.run(examples, threshold)
    assert result.stage.tolist() == (scores < threshold).astype(int).tolist()
    np.testing.assert_allclose(result.logits[scores >= threshold], raw[scores >= threshold][:, :2] / temps[0],
                               atol=1e-5)
    np.testing.assert_allclose(result.logits[scores < threshold],
                               _raw(preds.teacher, examples)[scores < threshold] / temps[1], atol=1e-5)


def test_calibrate_cascade_rejects_a_defer_scorer_without_defer_output_and_unknown_scorers(toy, preds):
    with pytest.raises(ValueError, match="defer output"):
        _calibrate(_two_stage(toy, preds), toy.cal, "defer")
    with pytest.raises(ValueError, match="unknown confidence score"):
        _calibrate(_two_stage(toy, preds), toy.cal, "nonsense")


def test_patience_works_for_cascades_too(toy, preds):
    """One scorer set for every staged kind: a cascade may stop when consecutive stages agree."""
    cascade = _two_stage(toy, preds)
    calibration = _calibrate(cascade, toy.cal, "patience")
    assert calibration.policy == "patience"
    assert all(p.stage in (0, 1) for p in cascade.predict(TEXTS, threshold=1.5))  # two agreeing stages stop at 1


def test_a_calibrated_cascade_saves_loads_and_serves_the_knob(calibrated, toy, preds):
    loaded = calibrated.loaded
    assert isinstance(loaded, CascadePredictor) and loaded.num_stages == 2
    assert loaded.adaptive["table"] == calibrated.section["table"]
    fractions = loaded.stage_fractions()
    temps = loaded.calibration.temperatures
    assert temps == calibrated.section["temperatures"]
    cheap = loaded.predict(TEXTS, threshold=-INF)
    assert all(p.stage == 0 and p.cost == fractions[0] and p.fallback is False for p in cheap)
    assert {"stage", "cost", "fallback"} <= set(cheap[0].to_dict())
    assert [p.label for p in cheap] == [p.label for p in preds.selective.predict(TEXTS)]
    full = loaded.predict(TEXTS, threshold=INF)
    assert all(p.stage == 1 and p.cost == fractions[1] for p in full)
    result = loaded.run(_examples(TEXTS), INF)
    np.testing.assert_allclose(result.logits, _raw(preds.teacher, _examples(TEXTS)) / temps[1], atol=1e-5)
    assert all(p.stage == 0 for p in loaded.predict(TEXTS, budget=fractions[0]))
    with pytest.raises(ValueError, match="budget"):
        loaded.predict(TEXTS, budget=fractions[0] / 2)


def test_budget_reproduces_the_table_point_on_the_calibration_rows(calibrated, toy):
    loaded = calibrated.loaded
    table = loaded.calibration.table
    costs = sorted({p.cost for p in table.points})
    budget = costs[len(costs) // 2]
    point = table.budget(budget)
    assert 0 < point.exit_counts[0] < table.n
    _, test_rows = split_rows(len(toy.cal), 0.3, 0)
    texts = [toy.cal.examples[i]["text"] for i in test_rows]
    out = loaded.predict(texts, budget=budget)  # stage counts replayed: the contract check, test_staged_contract.py
    assert np.mean([p.cost for p in out]) == pytest.approx(point.cost) and point.cost <= budget + 1e-12


# --- 6. gate ----------------------------------------------------------------------------------------------


def test_gate_fit_scores_confident_rows_higher():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.7, 0.7, 0.7], size=600)
    agree = (probs.max(axis=1) > 0.7).astype(float)
    assert 0.2 < agree.mean() < 0.8
    gate = Gate.fit(probs, agree)
    assert len(gate.weight) == 6 and math.isfinite(gate.bias)
    score = gate(probs).numpy()
    assert score.shape == (600,) and ((score >= 0) & (score <= 1)).all()
    assert score[agree == 1].mean() > score[agree == 0].mean() + 0.4
    assert ((score > 0.5) == (agree == 1)).mean() > 0.9
    again = Gate(**json.loads(json.dumps(gate.to_dict())))
    np.testing.assert_allclose(again(probs).numpy(), score)
    with pytest.raises(ValueError, match="rows"):
        Gate.fit(np.zeros((0, 3)), np.zeros(0))


def test_gate_features_by_hand_and_for_two_classes():
    p3 = np.array([[0.2, 0.7, 0.1]])
    h = -(0.2 * math.log(0.2) + 0.7 * math.log(0.7) + 0.1 * math.log(0.1)) / math.log(3)
    torch.testing.assert_close(gate_features(p3), torch.tensor([[0.7, 0.2, 0.1, 0.5, h, math.log(0.7)]],
                                                               dtype=torch.float64))
    p2 = np.array([[0.25, 0.75], [0.5, 0.5]])
    f2 = gate_features(p2)
    assert f2.shape == (2, 6)
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    torch.testing.assert_close(f2, torch.tensor([[0.75, 0.25, 0.0, 0.5, h2, math.log(0.75)],
                                                 [0.5, 0.5, 0.0, 0.0, 1.0, math.log(0.5)]], dtype=torch.float64))
    assert Gate(weight=[0.0] * 6, bias=0.0)(p2).tolist() == [0.5, 0.5]


# --- 7. remote stages over loopback HTTP ------------------------------------------------------------------


def test_remote_stage_connects_and_returns_the_local_logits(teacher_server, preds):
    stage = RemoteStage.connect(teacher_server + "/", name="titan", timeout=5)
    assert stage.url == teacher_server and stage.name == "titan" and stage.timeout == 5
    assert stage.labels == preds.teacher.labels and stage.task == "classification"
    assert stage.flops_per_example == preds.teacher.manifest["costs"]["flops_per_example"] > 0
    assert stage.defer_output is False
    examples = _examples(TEXTS)
    np.testing.assert_allclose(stage.logits(examples), _raw(preds.teacher, examples), atol=1e-5)
    stage.max_rows = 3  # several requests, rows still in order
    np.testing.assert_allclose(stage.logits(examples), _raw(preds.teacher, examples), atol=1e-5)
    assert stage.logits([]).shape == (0, 2)


def test_a_remote_stage_splits_requests_the_server_finds_too_large_and_names_refused_inputs(preds):
    pytest.importorskip("fastapi")
    from summon.serve.logits_server import create_app

    with serving(create_app(preds.teacher, max_rows=2)) as url:
        stage = RemoteStage.connect(url)
        examples = _examples(TEXTS)  # 8 rows in one request: 413, halved until the server takes them
        np.testing.assert_allclose(stage.logits(examples), _raw(preds.teacher, examples), atol=1e-5)
        with pytest.raises(ValueError, match=r"refused the inputs: input 1: "):  # a bad input is no outage
            stage.logits([{"text": "fine"}, {"text": 3}])


def test_a_remote_defer_student_reports_its_defer_column(preds):
    pytest.importorskip("fastapi")
    from summon.serve.logits_server import create_app

    with serving(create_app(preds.defer, name="student")) as url:
        stage = RemoteStage.connect(url)
        assert stage.defer_output is True
        examples = _examples(TEXTS)
        np.testing.assert_allclose(stage.logits(examples), _raw(preds.defer, examples), atol=1e-5)


def test_a_cascade_with_a_remote_last_stage_predicts_like_the_local_one(teacher_server, toy, preds, calibrated):
    local = calibrated.cascade
    remote_stage = RemoteStage.connect(teacher_server, name="teacher")
    remote = CascadePredictor([local.stages[0], remote_stage], "classification", local.labels,
                              {"adaptive": local.adaptive})
    texts = [ex["text"] for ex in toy.cal.examples[:40]]
    threshold = median_threshold(_max_prob(_raw(preds.selective, _examples(texts)),
                                           temperature=local.calibration.temperatures[0]))
    a, b = local.predict(texts, threshold=threshold), remote.predict(texts, threshold=threshold)
    assert {p.stage for p in a} == {0, 1}
    assert [(p.label, p.stage, p.cost, p.fallback) for p in a] == [(p.label, p.stage, p.cost, p.fallback) for p in b]
    np.testing.assert_allclose([p.probs for p in a], [p.probs for p in b], atol=1e-5)


class _Slow:
    """A predictor whose logits take a second."""

    def __init__(self, predictor: Predictor, seconds: float = 1.0):
        self.inner, self.seconds = predictor, seconds
        self.task, self.labels, self.manifest = predictor.task, predictor.labels, predictor.manifest

    def logits(self, examples, **kwargs):
        time.sleep(self.seconds)
        return self.inner.logits(examples, **kwargs)


def _check_fallback(cascade: CascadePredictor, preds, texts) -> None:
    examples = _examples(texts)
    raw = _raw(preds.selective, examples)
    scores = _max_prob(raw)
    threshold = median_threshold(scores)
    deferred = scores < threshold
    assert deferred.any() and (~deferred).any()
    out = cascade.predict(texts, threshold=threshold)
    assert [p.stage for p in out] == [0] * len(texts)
    assert [p.fallback for p in out] == deferred.tolist()
    np.testing.assert_allclose([p.probs for p in out], softmax_rows(raw), atol=1e-5)  # stage 0's answers
    result = cascade.run(examples, threshold)
    assert result.fallback.tolist() == deferred.tolist() and result.stage.tolist() == [0] * len(texts)


def test_a_remote_stage_that_times_out_falls_back_to_the_earlier_stage(toy, preds):
    pytest.importorskip("fastapi")
    from summon.serve.logits_server import create_app

    with serving(create_app(_Slow(preds.teacher))) as url:
        stage = RemoteStage.connect(url, name="slow", timeout=0.2)  # /v1/info is fast
        with pytest.raises(StageUnavailable):
            stage.logits(_examples(TEXTS[:2]))
        cascade = CascadePredictor([LocalStage("s", preds.selective, str(toy.selective)), stage],
                                   "classification", preds.teacher.labels)
        start = time.monotonic()
        _check_fallback(cascade, preds, [ex["text"] for ex in toy.cal.examples[:30]])
        assert time.monotonic() - start < 2.0  # two timed-out requests of 0.2 s, not the server's second each


def test_a_down_server_falls_back_and_cannot_be_connected(toy, preds):
    url = f"http://127.0.0.1:{find_free_port()}"  # bound, then closed: nothing listens there
    with pytest.raises(ValueError, match="summon serve-logits"):
        RemoteStage.connect(url, timeout=1)
    down = RemoteStage(url=url, name="down", task="classification", labels=preds.teacher.labels,
                       flops_per_example=1.0, timeout=1)
    with pytest.raises(StageUnavailable, match=r"127\.0\.0\.1"):
        down.logits(_examples(TEXTS))
    assert down.measure(_examples(TEXTS)) == (1.0, None, f"remote {url}")  # FLOPs as reported, no latency
    cascade = CascadePredictor([LocalStage("s", preds.selective, str(toy.selective)), down], "classification",
                               preds.teacher.labels)
    costs = cascade.measure_costs(_examples(TEXTS))
    assert costs.flops[1] == costs.flops[0] + 1.0 and costs.flops_full == 1.0 and costs.ms is None
    _check_fallback(cascade, preds, [ex["text"] for ex in toy.cal.examples[:30]])
    # a first stage that cannot answer has nothing to fall back on
    first_down = CascadePredictor([down, LocalStage("t", preds.teacher, str(toy.teacher))], "classification",
                                  preds.teacher.labels)
    with pytest.raises(StageUnavailable):
        first_down.run(_examples(TEXTS), 0.5)


def test_a_server_answering_the_wrong_number_of_rows_is_unavailable(preds):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/v1/info")
    def info():
        return {"protocol": protocol.PROTOCOL, "name": "liar", "task": "classification", "labels": preds.teacher.labels,
                "flops_per_example": 5.0, "defer_output": False}

    @app.post("/v1/logits")
    def logits(body: dict):
        return {"logits": [[0.0, 1.0]] * (len(body["inputs"]) - 1)}

    with serving(app) as url:
        stage = RemoteStage.connect(url)
        with pytest.raises(StageUnavailable, match="expected 3 rows of 2 numbers under 'logits'"):
            stage.logits(_examples(TEXTS[:3]))


@pytest.mark.parametrize("body, status", [(b'{"logits": [[0.0, 1.0]', 200), (b'{"error": "boom"}', 500)])
def test_a_server_answering_nonsense_or_an_error_is_unavailable(preds, body, status):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.post("/v1/logits")
    def logits(payload: dict):
        return fastapi.Response(content=body, status_code=status, media_type="application/json")

    with serving(app) as url:
        stage = RemoteStage(url=url, name="r", task="classification", labels=preds.teacher.labels,
                            flops_per_example=1.0, timeout=5)
        with pytest.raises(StageUnavailable, match="invalid JSON" if status == 200 else "Internal Server Error"):
            stage.logits(_examples(TEXTS[:2]))


def test_a_server_answering_bytes_that_are_not_utf8_is_unavailable(preds):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.post("/v1/logits")
    def logits(payload: dict):
        return fastapi.Response(content=b"\x80\x81 not json", media_type="application/json")

    with serving(app) as url:
        stage = RemoteStage(url=url, name="r", task="classification", labels=preds.teacher.labels,
                            flops_per_example=1.0, timeout=5)
        with pytest.raises(StageUnavailable):
            stage.logits(_examples(TEXTS[:2]))


@pytest.mark.parametrize("answer", [{"logits": [[0.0, 1.0, 2.0]] * 3}, {"logits": "nope"}, {"rows": []}, [1, 2]])
def test_malformed_answers_are_unavailable(preds, monkeypatch, answer):
    stage = RemoteStage(url="http://127.0.0.1:9", name="r", task="classification", labels=preds.teacher.labels,
                        flops_per_example=1.0)
    monkeypatch.setattr(protocol, "_request", lambda url, payload, timeout: answer)
    with pytest.raises(StageUnavailable):
        stage.logits(_examples(TEXTS[:3]))


def test_rows_that_are_not_lists_are_unavailable(preds, monkeypatch):
    stage = RemoteStage(url="http://127.0.0.1:9", name="r", task="classification", labels=preds.teacher.labels,
                        flops_per_example=1.0)
    monkeypatch.setattr(protocol, "_request", lambda url, payload, timeout: {"logits": [0.5, 0.5, 0.5]})
    with pytest.raises(StageUnavailable):
        stage.logits(_examples(TEXTS[:3]))


@pytest.mark.parametrize("payload", [{"inputs": "great fun"}, {"inputs": [{"nope": 1}]}, {"inputs": [5]},
                                     {"inputs": [{"text": 5}]}, {}, [1, 2]])
def test_the_logits_server_answers_bad_inputs_with_422(teacher_server, payload):
    code, _ = _post(teacher_server + "/v1/logits", payload)
    assert code == 422


def test_the_logits_server_info_and_a_good_request(teacher_server, preds):
    with urllib.request.urlopen(teacher_server + "/v1/info", timeout=10) as resp:
        info = json.loads(resp.read())
    assert info["protocol"] == "summon-logits/1" and info["labels"] == preds.teacher.labels
    code, body = _post(teacher_server + "/v1/logits", {"inputs": [{"text": "great fun"}]})
    assert code == 200
    np.testing.assert_allclose(body["logits"], _raw(preds.teacher, [{"text": "great fun"}]), atol=1e-5)


# --- 8. saving and loading --------------------------------------------------------------------------------


def test_a_cascade_folder_moved_elsewhere_still_loads(toy, preds, tmp_path):
    parent = tmp_path / "project"
    shutil.copytree(toy.selective, parent / "stages" / "student")
    shutil.copytree(toy.teacher, parent / "stages" / "teacher")
    cascade = build_cascade([str(parent / "stages" / "student"), str(parent / "stages" / "teacher")])
    cascade.save(parent / "cascade")
    manifest = json.loads((parent / "cascade" / MANIFEST).read_text())
    assert manifest["format"] == "summon-cascade" and manifest["labels"] == preds.teacher.labels
    assert [s["path"] for s in manifest["stages"]] == ["../stages/student", "../stages/teacher"]
    assert [s["type"] for s in manifest["stages"]] == ["local", "local"]
    expected = [p.to_dict() for p in cascade.predict(TEXTS, threshold=0.9)]
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(str(parent), str(moved))
    assert not parent.exists()
    loaded = summon.load(moved / "cascade")
    assert isinstance(loaded, CascadePredictor)
    assert [Path(s.path) for s in loaded.stages] == [(moved / "stages" / n).resolve() for n in ("student", "teacher")]
    got = [p.to_dict() for p in loaded.predict(TEXTS, threshold=0.9)]
    assert [(d["label"], d["stage"]) for d in got] == [(d["label"], d["stage"]) for d in expected]
    np.testing.assert_allclose([d["probs"] for d in got], [d["probs"] for d in expected], atol=1e-6)


def test_saving_a_cascade_of_an_in_memory_stage_is_refused(toy, preds, tmp_path):
    cascade = CascadePredictor([LocalStage("mem", preds.selective), LocalStage("t", preds.teacher, str(toy.teacher))],
                               "classification", preds.teacher.labels)
    with pytest.raises(ValueError, match="'mem' was built in memory"):
        cascade.save(tmp_path / "c")
    assert not (tmp_path / "c" / MANIFEST).exists()


def test_stages_must_agree_on_labels_and_be_at_least_two(toy, preds):
    other = RemoteStage(url="http://127.0.0.1:9", name="other", task="classification", labels=["pos", "neg"],
                        flops_per_example=1.0)
    student = LocalStage("s", preds.selective, str(toy.selective))
    with pytest.raises(ValueError, match="'other' predicts"):
        CascadePredictor([student, other], "classification", preds.teacher.labels)
    with pytest.raises(ValueError, match="at least two stages"):
        CascadePredictor([student], "classification", preds.teacher.labels)


def test_remote_stages_are_saved_by_url_and_load_without_the_server(toy, preds, tmp_path, monkeypatch):
    remote = RemoteStage(url="http://127.0.0.1:9", name="titan", task="classification", labels=preds.teacher.labels,
                         flops_per_example=123.0, timeout=3.5)
    cascade = CascadePredictor([LocalStage("s", preds.selective, str(toy.selective)), remote], "classification",
                               preds.teacher.labels)
    cascade.save(tmp_path / "c")
    entry = json.loads((tmp_path / "c" / MANIFEST).read_text())["stages"][1]
    assert entry["type"] == "remote" and entry["url"] == "http://127.0.0.1:9" and entry["timeout"] == 3.5

    def no_network(*args, **kwargs):
        raise AssertionError("loading contacted the server")

    monkeypatch.setattr(protocol, "_request", no_network)
    loaded = summon.load(tmp_path / "c")
    stage = loaded.stages[1]
    assert isinstance(stage, RemoteStage)
    assert (stage.url, stage.name, stage.timeout, stage.flops_per_example, stage.labels) == (
        "http://127.0.0.1:9", "titan", 3.5, 123.0, preds.teacher.labels)


def test_unknown_stage_types_are_refused_on_load(toy, preds, tmp_path):
    cascade = _two_stage(toy, preds)
    cascade.save(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    manifest["stages"][1]["type"] = "carrier-pigeon"
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="carrier-pigeon"):
        summon.load(tmp_path / "c")


# --- 9. command line --------------------------------------------------------------------------------------


def test_cli_cascade_calibrate_predict(toy, preds, tmp_path, capsys):
    out = tmp_path / "cli_cascade"
    assert main(["cascade", str(toy.selective), str(toy.teacher), "--out", str(out)]) == 0
    assert isinstance(summon.load(out), CascadePredictor)
    assert main(["calibrate", str(out), "--data", str(toy.cal_path), "--policy", "max_prob", "--no-latency"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "summon-cascade" and manifest["adaptive"]["policy"] == "max_prob"
    assert manifest["adaptive"]["data"] == str(toy.cal_path)
    assert [s["type"] for s in manifest["stages"]] == ["local", "local"]
    capsys.readouterr()
    assert main(["predict", str(out), "great fun", "awful"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    fractions = summon.load(out).stage_fractions()
    for row in lines:
        assert row["label"] in preds.teacher.labels and row["stage"] in (0, 1)
        assert row["cost"] == fractions[row["stage"]] and row["fallback"] is False


def test_cli_eval_of_a_calibrated_cascade(calibrated, toy, capsys):
    assert main(["eval", str(calibrated.dir), "--data", str(toy.cal_path), "--no-latency"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert sum(row["answered_by_stage"]) == len(toy.cal)


def test_cli_eval_of_an_uncalibrated_cascade_runs_the_last_stage(toy, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["cascade", str(toy.selective), str(toy.teacher), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(toy.cal_path), "--no-latency"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["answered_by_stage"] == [0, len(toy.cal)]
    assert main(["eval", str(out), "--data", str(toy.cal_path), "--no-latency", "--budget", "0.5"]) == 2
    assert "summon calibrate" in capsys.readouterr().err


def test_cli_refuses_to_calibrate_a_plain_predictor_and_to_cascade_a_down_server(toy, tmp_path, capsys):
    assert main(["calibrate", str(toy.teacher), "--data", str(toy.cal_path), "--no-latency"]) == 2
    assert "has no stages to calibrate" in capsys.readouterr().err
    url = f"http://127.0.0.1:{find_free_port()}"
    assert main(["cascade", str(toy.selective), url, "--out", str(tmp_path / "c"), "--timeout", "1"]) == 2
    assert "summon serve-logits" in capsys.readouterr().err
    assert main(["cascade", str(toy.selective), "--out", str(tmp_path / "c1")]) == 2
    assert "at least two stages" in capsys.readouterr().err


# --- 10. evaluation ---------------------------------------------------------------------------------------


def test_evaluate_cascade_reports_stages_fallbacks_and_flops(calibrated, toy):
    cascade = calibrated.loaded
    flops = cascade.costs.flops
    entry = evaluate_staged(cascade, toy.cal, name="c", latency=False)
    metrics, n = entry["metrics"], len(toy.cal)
    assert entry["name"] == "c" and entry["path"] == str(calibrated.dir)
    assert sum(metrics["answered_by_stage"]) == n and len(metrics["answered_by_stage"]) == 2
    assert "fallbacks" not in metrics and 0 <= metrics["accuracy"] <= 1
    assert flops[0] <= entry["cost"]["flops_per_example"] <= flops[-1]
    share = metrics["answered_by_stage"][1] / n
    assert entry["cost"]["flops_per_example"] == pytest.approx(flops[0] + share * (flops[1] - flops[0]))
    low = evaluate_staged(cascade, toy.cal, name="c", knob=Knob(threshold=-INF), latency=False)
    assert low["metrics"]["answered_by_stage"] == [n, 0] and low["cost"]["flops_per_example"] == pytest.approx(flops[0])
    high = evaluate_staged(cascade, toy.cal, name="c", knob=Knob(threshold=INF), latency=False)
    assert high["metrics"]["answered_by_stage"] == [0, n]
    assert high["cost"]["flops_per_example"] == pytest.approx(flops[-1])
    gold = np.array([ex["label"] for ex in toy.cal.examples])
    teacher_acc = float((_raw(calibrated.loaded.stages[1].predictor, toy.cal.examples).argmax(1) == gold).mean())
    assert high["metrics"]["accuracy"] == pytest.approx(teacher_acc)
    params = sum(p.numel() for s in cascade.stages for p in s.predictor.model.parameters())
    assert entry["cost"]["params"] == params
