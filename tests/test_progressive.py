"""Tests for progressive ensemble distillation (B-DISTIL, reconstructed): the boosting losses against naive
references, the log-barrier as a training signal, composed members, the recipe's errors, and one end-to-end
run (a tiny-bert teacher, then an ensemble of n-gram and one-layer truncated members) that is loaded, resumed,
run batched and one by one, given deadlines, tampered with and re-saved.

Only tiny models are trained; the end-to-end runs are module-scoped fixtures (trained once).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from toy import median_threshold, run_config, sentiment_files, sentiment_rows

import summon
from summon.adaptive.progressive import ProgressivePredictor
from summon.core.config import ConfigError, from_dict
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec
from summon.losses.boosting import (
    adaboost_step,
    barrier_loss,
    bounded,
    centre,
    edge,
    residual_log_weights,
    row_edges,
)
from summon.methods.progressive import ROUND_INPUTS, Candidate, ProgressiveConfig, step
from summon.models import ModelConfig, build_model
from summon.models.member import ComposedMember, hidden_width, member_batch, member_forward, member_outputs
from summon.predictors.predictor import Predictor, load_predictor
from summon.training.config import RunConfig
from summon.training.loop import train

LABELS = ["neg", "pos"]
CPU = torch.device("cpu")
NGRAM = {"kind": "ngram", "num_buckets": 256, "embed_dim": 8, "dropout": 0.0}
TEXTS = ["great fun", "a terrible boring plot", "the movie was really good", "worst film",
         "the story and the acting", "love it", "awful", "so so", "the plot was fine and the acting great"]


# --- naive references ---------------------------------------------------------------------------------------


def _naive_log_weights(teacher: np.ndarray, ensemble: np.ndarray, eta: float, clip: float, centred: bool):
    n, c = teacher.shape
    plus, minus = np.zeros((n, c)), np.zeros((n, c))
    for i in range(n):
        mean = sum(teacher[i]) / c if centred else 0.0
        for j in range(c):
            r = min(max(teacher[i, j] - mean - ensemble[i, j], -clip), clip)
            plus[i, j], minus[i, j] = eta * r, -eta * r
    total = math.log(sum(math.exp(v) for v in plus.ravel()) + sum(math.exp(v) for v in minus.ravel()))
    return plus - total, minus - total


def _naive_row_edges(h: np.ndarray, lp: np.ndarray, lm: np.ndarray):
    edges, row_total = [], []
    for i in range(h.shape[0]):
        wp, wm = [math.exp(v) for v in lp[i]], [math.exp(v) for v in lm[i]]
        total = sum(wp) + sum(wm)
        edges.append(sum((p - m) * x for p, m, x in zip(wp, wm, h[i], strict=True)) / total)
        row_total.append(total)
    return np.array(edges), np.array(row_total)


def _naive_edge(h: np.ndarray, lp: np.ndarray, lm: np.ndarray) -> float:
    wp, wm = np.exp(lp), np.exp(lm)
    num = sum((wp[i, j] - wm[i, j]) * h[i, j] for i in range(h.shape[0]) for j in range(h.shape[1]))
    return num / (wp.sum() + wm.sum())


def _naive_bounded(logits: np.ndarray, output: str) -> np.ndarray:
    if output == "tanh":
        return np.tanh(logits)
    rows = []
    for row in logits:
        exps = [math.exp(x - max(row)) for x in row]
        rows.append([2.0 * e / sum(exps) - 1.0 for e in exps])
    return np.array(rows)


def _naive_barrier(logits: np.ndarray, lp: np.ndarray, lm: np.ndarray, gamma: float, shift: float, barrier: str,
                   output: str = "softmax"):
    keep = [i for i in range(lp.shape[0]) if np.isfinite(np.logaddexp(lp[i], lm[i])).any()]
    h = _naive_bounded(logits[keep], output)
    edges, totals = _naive_row_edges(h, lp[keep], lm[keep])
    weights = totals / totals.sum()
    total_edge = float((weights * edges).sum())
    if barrier == "row":
        loss = -sum(w * math.log(e - gamma + shift) for w, e in zip(weights, edges, strict=True))
    else:
        loss = -math.log(total_edge - gamma + shift)
    return loss, total_edge


def _random_case(n: int = 7, c: int = 3, seed: int = 0, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    ensemble = torch.randn(n, c, generator=gen, dtype=torch.float64) * 0.5
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64)
    return teacher, ensemble, logits


# --- a. the losses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("eta", "clip", "centred"), [(1.0, 10.0, True), (4.0, 10.0, False), (2.0, 0.5, True)])
def test_residual_log_weights_match_a_naive_reference(eta, clip, centred):
    teacher, ensemble, _ = _random_case(scale=3.0)
    lp, lm = residual_log_weights(teacher, ensemble, eta=eta, clip=clip, centred=centred)
    ref_p, ref_m = _naive_log_weights(teacher.numpy(), ensemble.numpy(), eta, clip, centred)
    np.testing.assert_allclose(lp.numpy(), ref_p, atol=1e-10)
    np.testing.assert_allclose(lm.numpy(), ref_m, atol=1e-10)
    # jointly normalised: Σ w⁺ + Σ w⁻ = 1
    assert float(torch.logsumexp(torch.cat([lp.reshape(-1), lm.reshape(-1)]), dim=0)) == pytest.approx(0.0, abs=1e-12)


def test_residual_log_weights_clip_centre_and_reject_bad_arguments():
    teacher = torch.tensor([[100.0, -100.0], [0.0, 0.0]], dtype=torch.float64)
    lp, lm = residual_log_weights(teacher, torch.zeros_like(teacher), eta=1.0, clip=3.0)
    # residuals clipped to ±3: the log weights differ by exactly 2·η·clip within a clipped cell
    assert float(lp[0, 0] - lm[0, 0]) == pytest.approx(6.0) and float(lp[0, 1] - lm[0, 1]) == pytest.approx(-6.0)
    assert torch.isfinite(lp).all() and torch.isfinite(lm).all()
    # centring: a per-row shift of the teacher changes nothing; without it, it does
    shifted = teacher + torch.tensor([[5.0], [-2.0]], dtype=torch.float64)
    a = residual_log_weights(teacher, torch.zeros_like(teacher), clip=200.0)
    b = residual_log_weights(shifted, torch.zeros_like(teacher), clip=200.0)
    torch.testing.assert_close(a, b)
    c = residual_log_weights(shifted, torch.zeros_like(teacher), clip=200.0, centred=False)
    assert not torch.allclose(a[0], c[0])
    assert torch.allclose(centre(shifted), centre(teacher)) and torch.allclose(centre(teacher).sum(-1),
                                                                               torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="eta"):
        residual_log_weights(teacher, teacher, eta=0.0)
    with pytest.raises(ValueError, match="clip"):
        residual_log_weights(teacher, teacher, clip=-1.0)
    with pytest.raises(ValueError, match="shape"):
        residual_log_weights(teacher, teacher[:, :1])


def test_row_edges_and_edge_match_a_naive_reference():
    teacher, ensemble, logits = _random_case(n=9, c=4, seed=1)
    lp, lm = residual_log_weights(teacher, ensemble, eta=2.0)
    h = torch.tanh(logits)
    edges, log_row = row_edges(h, lp, lm)
    ref_edges, ref_totals = _naive_row_edges(h.numpy(), lp.numpy(), lm.numpy())
    np.testing.assert_allclose(edges.numpy(), ref_edges, atol=1e-10)
    np.testing.assert_allclose(log_row.numpy(), np.log(ref_totals), atol=1e-10)
    assert float(edge(h, lp, lm)) == pytest.approx(_naive_edge(h.numpy(), lp.numpy(), lm.numpy()), abs=1e-10)
    # the edge is in (−1, 1), and the sign of the residual is the best bounded answer: edge near its maximum
    best = torch.sign(torch.exp(lp) - torch.exp(lm)) * 0.999999
    assert -1.0 < float(edge(h, lp, lm)) < 1.0 and float(edge(best, lp, lm)) > float(edge(h, lp, lm))
    assert float(edge(-best, lp, lm)) == pytest.approx(-float(edge(best, lp, lm)))


@pytest.mark.parametrize("output", ["softmax", "tanh"])
@pytest.mark.parametrize("barrier", ["row", "total"])
@pytest.mark.parametrize(("gamma", "shift"), [(0.1, 1.5), (0.3, 2.0)])
def test_barrier_loss_matches_a_naive_reference(barrier, gamma, shift, output):
    teacher, ensemble, logits = _random_case(n=8, c=3, seed=2)
    lp, lm = residual_log_weights(teacher, ensemble, eta=1.5)
    loss, value = barrier_loss(logits.float(), lp, lm, gamma=gamma, shift=shift, barrier=barrier, output=output)
    ref_loss, ref_edge = _naive_barrier(logits.float().double().numpy(), lp.numpy(), lm.numpy(), gamma, shift,
                                        barrier, output)
    assert float(loss) == pytest.approx(ref_loss, abs=1e-5)
    assert float(value) == pytest.approx(ref_edge, abs=1e-5)
    assert float(value) == pytest.approx(float(edge(bounded(logits.float(), output).double(), lp, lm)), abs=1e-5)
    assert not value.requires_grad


@pytest.mark.parametrize("barrier", ["row", "total"])
def test_barrier_loss_ignores_held_out_rows_with_finite_gradients(barrier):
    teacher, ensemble, logits = _random_case(n=8, c=3, seed=3)
    lp, lm = residual_log_weights(teacher, ensemble, eta=2.0)
    held = torch.tensor([False, True, False, False, True, False, True, False])
    lp_masked, lm_masked = lp.masked_fill(held[:, None], -math.inf), lm.masked_fill(held[:, None], -math.inf)
    x = logits.float().clone().requires_grad_(True)
    loss, value = barrier_loss(x, lp_masked, lm_masked, barrier=barrier)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert torch.all(x.grad[held] == 0) and torch.any(x.grad[~held] != 0)
    # the same as the loss on the counted rows alone (their weights renormalised among themselves)
    kept_p, kept_m = lp[~held], lm[~held]
    shift = torch.logsumexp(torch.cat([kept_p.reshape(-1), kept_m.reshape(-1)]), dim=0)
    alone, alone_edge = barrier_loss(logits.float()[~held], kept_p - shift, kept_m - shift, barrier=barrier)
    assert float(loss.detach()) == pytest.approx(float(alone), abs=1e-6)
    assert float(value) == pytest.approx(float(alone_edge), abs=1e-6)
    ref_loss, _ = _naive_barrier(logits.float().double().numpy(), lp_masked.numpy(), lm_masked.numpy(), 0.1, 1.5,
                                 barrier)
    assert float(loss.detach()) == pytest.approx(ref_loss, abs=1e-5)
    # every row held out: a zero loss that still back-propagates (finite zero gradients)
    y = logits.float().clone().requires_grad_(True)
    minus_inf = torch.full_like(lp, -math.inf)
    loss, value = barrier_loss(y, minus_inf, minus_inf, barrier=barrier)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(value) == 0.0 and torch.all(y.grad == 0)


def test_barrier_loss_rejects_an_undefined_barrier():
    teacher, ensemble, logits = _random_case(seed=4)
    lp, lm = residual_log_weights(teacher, ensemble)
    for gamma, shift in [(0.1, 1.1), (0.1, 1.0), (0.5, 1.2), (0.0, 0.9)]:
        with pytest.raises(ValueError, match="shift"):
            barrier_loss(logits, lp, lm, gamma=gamma, shift=shift)
    with pytest.raises(ValueError, match="barrier"):
        barrier_loss(logits, lp, lm, barrier="rows")  # type: ignore[arg-type]
    # just above 1 + γ the barrier is defined even at the worst edge
    worst = -torch.sign(torch.exp(lp) - torch.exp(lm)) * 20.0
    loss, _ = barrier_loss(worst.float(), lp, lm, gamma=0.1, shift=1.1001, barrier="row")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("eta", [1.0, 4.0])
def test_adaboost_step_matches_the_formula_and_clips(eta):
    for e in [-0.9, -0.3, 0.0, 0.05, 0.5, 0.99]:
        assert adaboost_step(e, eta) == pytest.approx(0.5 * math.log((1 + e) / (1 - e)) / eta, rel=1e-12, abs=1e-15)
        assert adaboost_step(-e, eta) == pytest.approx(-adaboost_step(e, eta))
    assert adaboost_step(0.0, eta) == 0.0
    assert adaboost_step(1.0, eta) == adaboost_step(0.999, eta) == adaboost_step(5.0, eta)
    assert adaboost_step(-1.0, eta) == adaboost_step(-0.999, eta)
    assert math.isfinite(adaboost_step(1.0, eta)) and adaboost_step(0.5, 1.0) == pytest.approx(4 * adaboost_step(0.5, 4.0))
    assert adaboost_step(torch.tensor(0.3), eta) == pytest.approx(adaboost_step(0.3, eta))


# --- b. the barrier as a training signal --------------------------------------------------------------------


def test_bounded_outputs_are_in_the_open_interval_and_softmax_keeps_one_argmax():
    logits = torch.tensor([[30.0, 29.0, -5.0], [0.1, 0.0, -0.1]])
    for output in ("softmax", "tanh"):
        h = bounded(logits, output)
        assert bool(((h >= -1) & (h <= 1)).all())
    assert torch.equal(bounded(logits, "tanh")[0, :2], torch.ones(2))  # saturated: a tie at +1
    assert int(bounded(logits, "softmax")[0].argmax()) == 0 and bounded(logits, "softmax")[0, 0] > bounded(
        logits, "softmax")[0, 1]
    with pytest.raises(ValueError, match="output must be one of softmax, tanh"):
        bounded(logits, "sigmoid")


@pytest.mark.parametrize("output", ["softmax", "tanh"])
@pytest.mark.parametrize("barrier", ["row", "total"])
def test_descending_the_barrier_raises_the_edge(barrier, output):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=gen)
    teacher = (x @ torch.randn(6, 3, generator=gen)).double()
    lp, lm = residual_log_weights(teacher, torch.zeros_like(teacher), eta=1.0)
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        before = float(edge(bounded(model(x), output).double(), lp, lm))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(60):
        loss, _ = barrier_loss(model(x), lp, lm, gamma=0.1, shift=1.5, barrier=barrier, output=output)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        after = float(edge(bounded(model(x), output).double(), lp, lm))
    assert losses[-1] < losses[0]
    assert after > before + 0.2 and after > 0.1, (before, after)


# --- c. composed members ------------------------------------------------------------------------------------


def _examples(texts=TEXTS) -> list[dict]:
    return [{"text": t} for t in texts]


def test_a_composed_member_with_a_zero_projection_is_its_base():
    base = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, dropout=0.0), "classification", 2)
    member = ComposedMember(base.model, previous_width=5).eval()
    assert hidden_width(base.model) == 8 and hidden_width(member) == 8
    previous = torch.randn(len(TEXTS), 5, generator=torch.Generator().manual_seed(0))
    batch = member_batch(base.featurizer, "classification", _examples(), previous, CPU)
    with torch.no_grad():
        plain_logits, plain_hidden = member_forward(base.model, batch)
        logits, hidden = member_forward(member, batch)
        torch.testing.assert_close(member(batch), base.model(batch))
    torch.testing.assert_close(logits, plain_logits)
    torch.testing.assert_close(hidden, plain_hidden)
    with torch.no_grad():  # a non-zero projection adds W·z_{t−1} to the hidden layer
        member.project.weight.fill_(0.1)
        _, moved = member_forward(member, batch)
    torch.testing.assert_close(moved, plain_hidden + 0.1 * previous.sum(-1, keepdim=True).expand(-1, 8))
    with pytest.raises(ValueError, match="previous_width"):
        ComposedMember(base.model, previous_width=0)


def test_a_composed_encoder_member_with_a_zero_projection_is_its_base():
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=1, max_length=32, dropout=0.0),
                        "classification", 2)
    member = ComposedMember(built.model, previous_width=8).eval()
    assert hidden_width(member) == hidden_width(built.model) == built.model.head.classifier.in_features
    batch = member_batch(built.featurizer, "classification", _examples(TEXTS[:4]), torch.randn(4, 8), CPU)
    with torch.no_grad():
        torch.testing.assert_close(member(batch), built.model(batch))


def test_a_member_must_have_one_sequence_head():
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, exits="all", max_length=32),
                        "classification", 2)
    with pytest.raises(ValueError, match="one head"):
        hidden_width(built.model)


def test_a_composed_ngram_saves_and_reloads_to_identical_outputs(tmp_path):
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, compose_from=8, init_seed=3),
                        "classification", len(LABELS))
    assert built.architecture["type"] == "composed" and built.architecture["previous_width"] == 8
    assert built.architecture["base"]["type"] == "ngram"
    assert isinstance(built.model, ComposedMember) and hidden_width(built.model) == 8
    with torch.no_grad():
        built.model.project.weight.normal_(generator=torch.Generator().manual_seed(1))
    Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
        tmp_path / "member", architecture=built.architecture)
    loaded = load_predictor(tmp_path / "member", device="cpu")
    assert isinstance(loaded.model, ComposedMember) and loaded.manifest["architecture"]["type"] == "composed"
    previous = torch.randn(len(TEXTS), 8, generator=torch.Generator().manual_seed(2))
    built.model.eval()
    before = member_outputs(built.model, built.featurizer, "classification", _examples(), previous)
    after = member_outputs(loaded.model, loaded.featurizer, "classification", _examples(), previous)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    with torch.no_grad():  # the hidden layer handed on does depend on it
        other = member_outputs(loaded.model, loaded.featurizer, "classification", _examples(), previous * 0)
    assert not torch.allclose(other[0], after[0])
    batch = member_batch(loaded.featurizer, "classification", _examples(), None, CPU)
    with pytest.raises(ValueError, match="previous_hidden"):
        loaded.model(batch)
    with pytest.raises(ValueError, match="previous_hidden"):
        member_outputs(loaded.model, loaded.featurizer, "classification", _examples())


def test_the_method_step_needs_the_rounds_weights():
    built = build_model(ModelConfig(kind="ngram", num_buckets=64, embed_dim=4), "classification", 2)
    batch = member_batch(built.featurizer, "classification", _examples(TEXTS[:3]), None, CPU)
    with pytest.raises(ValueError, match=ROUND_INPUTS):
        step(built.model, batch, ProgressiveConfig())
    teacher = torch.randn(3, 2, dtype=torch.float64)
    batch["log_w_plus"], batch["log_w_minus"] = (w.float() for w in residual_log_weights(teacher, teacher * 0))
    out = step(built.model, batch, ProgressiveConfig())
    assert set(out) >= {"loss", "output", "edge"} and torch.isfinite(out["loss"])


# --- d. recipe errors ---------------------------------------------------------------------------------------


def _raw_recipe(**changes) -> dict:
    raw = {"method": "progressive", "output_dir": "/tmp/never-written",
           "data": {"train": {"path": "train.jsonl", "task": "classification"}},
           "method_args": {"candidates": [{"model": dict(NGRAM)}]}}
    raw.update(changes)
    return raw


def _config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, raw, source="test")
    return str(err.value)


def test_recipe_errors_name_the_key():
    cfg = from_dict(RunConfig, _raw_recipe(), source="test")
    assert cfg.trains_ensemble and cfg.model is None and cfg.method_args.candidates[0].name == "ngram"
    assert "method_args.candidates" in _config_error(_raw_recipe(method_args={}))
    assert "method_args.candidates" in _config_error(_raw_recipe(method_args={"candidates": []}))
    message = _config_error({k: v for k, v in _raw_recipe(method="finetune").items() if k != "method_args"})
    assert "model: required" in message
    message = _config_error(_raw_recipe(method_args={"barrier_shift": 1.0, "gamma": 0.1,
                                                     "candidates": [{"model": dict(NGRAM)}]}))
    assert "barrier_shift" in message
    message = _config_error(_raw_recipe(method_args={"candidates": [{"model": {**NGRAM, "compose_from": 8}}]}))
    assert "method_args.candidates[0]" in message and "compose_from" in message


def test_progressive_and_candidate_configs_validate():
    with pytest.raises(ValueError, match="barrier_shift"):
        ProgressiveConfig(barrier_shift=1.0, gamma=0.1)
    with pytest.raises(ValueError, match="barrier_shift"):
        ProgressiveConfig(barrier_shift=1.1, gamma=0.1)
    for bad in [{"rounds": 0}, {"gamma": 1.0}, {"eta": 0.0}, {"holdout": 0.5}]:
        with pytest.raises(ValueError):
            ProgressiveConfig(**bad)
    with pytest.raises(ValueError, match="compose_from"):
        Candidate(model=ModelConfig(kind="ngram", compose_from=8))
    with pytest.raises(ValueError, match="epochs"):
        Candidate(model=ModelConfig(kind="ngram"), epochs=0)
    assert Candidate(model=ModelConfig(kind="truncated", first=2)).name == "truncated_2"
    assert Candidate(model=ModelConfig(kind="ngram"), name="fast").name == "fast"


@pytest.mark.parametrize(("search", "starts"), [("from_cheapest", [0, 0, 0, 0]), ("from_previous", [0, 1, 1, 2]),
                                                ("from_round", [0, 1, 2, 2])])
def test_find_weak_learner_starts_where_search_says(search, starts):
    from summon.training.progressive import search_start

    pcfg = ProgressiveConfig(candidates=[Candidate(model=ModelConfig(kind="ngram"), name=str(k)) for k in range(3)],
                             search=search)
    last = [2, 1, 1, 2]  # the previous member's candidate index (ignored in round 0)
    assert [search_start(pcfg, t, last[t]) for t in range(4)] == starts


# --- e. end to end ------------------------------------------------------------------------------------------


def _ensemble_config(out: Path, teacher: Path, train_file: Path, dev: Path, candidates: list[dict],
                     **method_args) -> RunConfig:
    raw = {"method": "progressive", "output_dir": str(out), "teacher": str(teacher),
           "data": {"train": {"path": str(train_file), "task": "classification"},
                    "eval": {"path": str(dev), "task": "classification"}},
           "method_args": {"rounds": 2, "eta": 4.0, "candidates": candidates, **method_args},
           "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "progress": False, "log_every": 5},
           "cost": {"latency": False, "flop_examples": 32}, "cache_dir": str(out.parent / "cache")}
    return from_dict(RunConfig, raw, source="test")


def _events(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line).get("event") for line in lines if line.strip()]


def _candidate_runs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "rounds").glob("*/*") if p.is_dir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny-bert teacher and a 2-round ensemble of n-gram / one-layer members (trained once, then run again)."""
    root = tmp_path_factory.mktemp("progressive")
    train_file, dev = sentiment_files(root / "data")
    teacher = train(run_config(root / "teacher", train_file, dev))
    candidates = [{"model": dict(NGRAM), "epochs": 5, "lr": 0.05},
                  {"model": {"kind": "truncated", "first": 1, "max_length": 32}}]
    # γ out of reach: FIND-WL trains every candidate each round (round 1's truncated one composed with the
    # n-gram member's hidden layer) and on_failure: best takes the best edge
    cfg = _ensemble_config(root / "ensemble", teacher, train_file, dev, candidates, gamma=0.95, barrier_shift=2.0)
    path = train(cfg)
    first = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    runs = _candidate_runs(root / "ensemble")
    first_events = {run: _events(run) for run in runs}
    again = train(cfg)
    return {"root": root, "cfg": cfg, "path": path, "again": again, "manifest": first, "runs": runs,
            "first_events": first_events, "teacher": teacher, "train": train_file, "dev": dev,
            "data": load_split(DatasetSpec(path=str(dev), task="classification"))}


def test_the_ensemble_is_saved_with_its_rounds(trained):
    path, manifest = trained["path"], trained["manifest"]
    assert path == Path(trained["cfg"].output_dir) / "model"
    predictor = summon.load(path, device="cpu")
    assert isinstance(predictor, ProgressivePredictor) and predictor.kind == "progressive"
    rounds = manifest["training"]["rounds"]
    taken = [r for r in rounds if r["taken"] is not None]
    assert 1 <= len(taken) <= 2 and predictor.num_stages == len(taken) == len(manifest["members"])
    for r in rounds:
        assert [t["candidate"] for t in r["tried"]] == ["ngram", "truncated_1"]
        assert all({"candidate", "edge", "condition_held"} <= set(t) for t in r["tried"])
        assert {"edge", "condition_held", "alpha"} <= set(r)
        assert not r["condition_held"] and not any(t["condition_held"] for t in r["tried"])  # γ = 0.95
        assert all(-1.0 < t["edge"] < 1.0 for t in r["tried"])
    for r, member in zip(taken, manifest["members"], strict=True):
        best = max(r["tried"], key=lambda t: t["edge"])
        assert r["taken"] == best["candidate"] and r["edge"] == best["edge"] > 0
        assert member["name"] == r["taken"] and member["alpha"] == pytest.approx(adaboost_step(r["edge"], 4.0))
        assert member["alpha"] > 0
    assert json.loads((path.parent / "rounds.json").read_text(encoding="utf-8")) == rounds
    accuracy = manifest["metrics"]["eval"]["prefix_accuracy"]
    assert len(accuracy) == predictor.num_stages and all(0.0 <= a <= 1.0 for a in accuracy)
    # the trainer's prefix accuracy is the staged predictor's accuracy at each stage (up to float ties)
    gold = np.array([ex["label"] for ex in trained["data"].examples])
    raws = predictor.stage_logits(trained["data"].examples)
    for k, raw in enumerate(raws):
        assert float((raw.argmax(1) == gold).mean()) == pytest.approx(accuracy[k], abs=1.5 / len(gold))
    # the first member reads nothing; later ones (composition on by default) read their predecessor
    assert manifest["members"][0]["composed"] is False
    for k, member in enumerate(predictor.members):
        arch = member.predictor.manifest["architecture"]
        assert member.composed == (k > 0) and (arch["type"] == "composed") == (k > 0)
    assert [p.relative_to(path.parent / "rounds").as_posix() for p in trained["runs"]] == [
        f"{t}/{k}" for t in range(len(rounds)) for k in ("0_ngram", "1_truncated_1")]
    for run in trained["runs"]:  # round 1's candidates read round 0's member's hidden layer
        assert ("previous_hidden" in _round_keys(run)) == (run.parent.name == "1")
        arch = json.loads((run / "model" / "manifest.json").read_text(encoding="utf-8"))["architecture"]
        assert (arch["type"] == "composed") == (run.parent.name == "1")


def test_the_ensemble_follows_its_teacher(trained):
    predictor = summon.load(trained["path"], device="cpu")
    teacher = load_predictor(trained["teacher"], device="cpu")
    examples = load_split(DatasetSpec(path=str(trained["train"]), task="classification")).examples
    wanted = np.stack(teacher.logits(examples)).argmax(1)
    agreement = [float((raw.argmax(1) == wanted).mean()) for raw in predictor.stage_logits(examples)]
    assert agreement[-1] >= 0.75, agreement  # a sign error in a step or a weight would fall to about 0.5


def test_training_again_resumes_every_candidate(trained):
    assert trained["again"] == trained["path"]
    manifest = json.loads((trained["path"] / "manifest.json").read_text(encoding="utf-8"))
    before = [(m["name"], m["sha256"], m["alpha"]) for m in trained["manifest"]["members"]]
    assert [(m["name"], m["sha256"], m["alpha"]) for m in manifest["members"]] == before
    assert manifest["training"]["rounds"] == trained["manifest"]["training"]["rounds"]
    assert _candidate_runs(trained["root"] / "ensemble") == trained["runs"]
    for run in trained["runs"]:
        events = _events(run)
        assert trained["first_events"][run].count("start") == 1 and events.count("start") == 1, run
        assert events[len(trained["first_events"][run]):].count("epoch") == 0, run  # nothing retrained
        assert "resume" in events[len(trained["first_events"][run]):], run


def test_batched_predictions_equal_one_by_one(trained):
    predictor = summon.load(trained["path"], device="cpu")
    texts = [r["text"] for r in sentiment_rows(24, 7)] + TEXTS
    raws = predictor.stage_logits(_examples(texts))
    scores = predictor.readout()(0, torch.from_numpy(raws[0]))[1].numpy()
    threshold = median_threshold(scores) if predictor.num_stages > 1 else 0.5
    batched = predictor.predict(texts, threshold=threshold, batch_size=5)
    if predictor.num_stages > 1:
        assert len({p.stage for p in batched}) == 2, "the threshold should split the rows"
    for text, together in zip(texts, batched, strict=True):
        alone = predictor.predict([text], threshold=threshold, batch_size=1)[0]
        assert (alone.label, alone.stage) == (together.label, together.stage)
        np.testing.assert_allclose(alone.probs, together.probs, atol=1e-5)
    # at full depth, the answer is the sum of every member's α·h
    full = predictor.predict(texts, threshold=math.inf)
    np.testing.assert_allclose([p.probs for p in full], torch.from_numpy(raws[-1]).double().softmax(-1).numpy(),
                               atol=1e-5)


def test_deadlines_stop_at_the_last_prefix_that_fits(trained, caplog):
    predictor = summon.load(trained["path"], device="cpu")
    texts = TEXTS
    with pytest.raises(ValueError, match="calibrat"):
        predictor.predict(texts, threshold=0.5, deadline_ms=1000.0)
    predictor.calibrate(trained["data"], latency=True)
    costs = predictor.calibration.costs
    assert costs.ms is not None and len(costs.ms) == predictor.num_stages and costs.ms == sorted(costs.ms)
    tiny = predictor.predict(texts, threshold=math.inf, deadline_ms=1e-9)
    assert [p.stage for p in tiny] == [0] * len(texts)
    assert [p.stage for p in predictor.predict(texts, deadline_ms=1e-9)] == [0] * len(texts)  # calibrated knob
    huge = predictor.predict(texts, threshold=math.inf, deadline_ms=1e9)
    assert [p.stage for p in huge] == [predictor.num_stages - 1] * len(texts)
    assert predictor.deadline_stage(1e9, len(texts)) == predictor.num_stages - 1
    assert predictor.deadline_stage(1e-9, len(texts)) == 0
    for bad in (0, -5.0):
        with pytest.raises(ValueError, match="deadline_ms"):
            predictor.predict(texts, threshold=math.inf, deadline_ms=bad)


def _copy_ensemble(trained, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(trained["path"], copy)
    return copy


def test_a_tampered_member_is_refused(trained, tmp_path):
    copy = _copy_ensemble(trained, tmp_path)
    k = len(trained["manifest"]["members"]) - 1
    weights = copy / "members" / str(k) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"members/{k}"):
        summon.load(copy, device="cpu")
    copy = _copy_ensemble(trained, tmp_path / "second")
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["members"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="members/0"):
        summon.load(copy, device="cpu")


def test_save_to_a_new_folder_and_load_again(trained, tmp_path):
    predictor = summon.load(trained["path"], device="cpu")
    examples = _examples()
    before = predictor.stage_logits(examples)
    path = predictor.save(tmp_path / "saved")
    assert path == tmp_path / "saved" and predictor.path == path
    again = summon.load(path, device="cpu")
    assert isinstance(again, ProgressivePredictor) and again.num_stages == len(before)
    for a, b in zip(again.stage_logits(examples), before, strict=True):
        np.testing.assert_array_equal(a, b)
    saved = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert saved["training"]["rounds"] == trained["manifest"]["training"]["rounds"]
    assert [m["sha256"] for m in saved["members"]] == [m["sha256"] for m in trained["manifest"]["members"]]
    assert [m.alpha for m in again.members] == [m["alpha"] for m in trained["manifest"]["members"]]


# --- f. composition off -------------------------------------------------------------------------------------


def test_without_composition_members_are_plain(trained):
    cfg = _ensemble_config(trained["root"] / "plain", trained["teacher"], trained["train"], trained["dev"],
                           [{"model": dict(NGRAM), "epochs": 2, "lr": 0.05}], composition=False, gamma=0.0)
    predictor = summon.load(train(cfg), device="cpu")
    assert predictor.num_stages == 2
    for member in predictor.members:
        assert not member.composed and member.predictor.manifest["architecture"]["type"] == "ngram"
    assert not any((run / ROUND_INPUTS).is_file() and "previous_hidden" in _round_keys(run)
                   for run in _candidate_runs(trained["root"] / "plain"))


def _round_keys(run: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(run / ROUND_INPUTS), framework="pt") as fh:
        return set(fh.keys())


def test_a_trained_composed_encoder_member_runs_in_its_ensemble(trained):
    cfg = _ensemble_config(trained["root"] / "encoders", trained["teacher"], trained["train"], trained["dev"],
                           [{"model": {"kind": "truncated", "first": 1, "max_length": 32}, "epochs": 1}], gamma=0.0)
    predictor = summon.load(train(cfg), device="cpu")
    assert predictor.num_stages == 2 and [m.composed for m in predictor.members] == [False, True]
    arch = predictor.members[1].predictor.manifest["architecture"]
    assert arch["type"] == "composed" and arch["base"]["type"] == "encoder"
    assert arch["previous_width"] == hidden_width(predictor.members[0].predictor.model)
    # the staged runner's answer at each stage is the running sum of α·h, member 1 reading member 0
    examples = _examples()
    first, second = (m.predictor for m in predictor.members)
    logits0, hidden0 = member_outputs(first.model, first.featurizer, "classification", examples)
    logits1, _ = member_outputs(second.model, second.featurizer, "classification", examples, hidden0)
    alpha = [m.alpha for m in predictor.members]
    assert [m.output for m in predictor.members] == ["softmax", "softmax"]  # the default bounded output
    expected0 = alpha[0] * bounded(logits0, "softmax")
    expected1 = expected0 + alpha[1] * bounded(logits1, "softmax")
    raws = predictor.stage_logits(examples, batch_size=4)
    np.testing.assert_allclose(raws[0], expected0.numpy(), atol=1e-5)
    np.testing.assert_allclose(raws[1], expected1.numpy(), atol=1e-5)
    without, _ = member_outputs(second.model, second.featurizer, "classification", examples, hidden0 * 0)
    assert not torch.allclose(without, logits1)  # the trained projection is not zero
