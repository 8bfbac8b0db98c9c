"""Multi-teacher KD (reconstructed RL-KD): the pure losses against naive loops, the REINFORCE sign, the schedule of
one step at a time, and whole runs on tiny models: every weighting, an n-gram and a truncated student, the policy in
the optimizer and the checkpoint, resume after an interruption, the per-row teacher weights, and bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from toy import sentiment_files, sentiment_rows

from summon import load
from summon.core.config import ConfigError, from_dict
from summon.data.features import collate
from summon.losses import (
    bernoulli_log_prob,
    confidence_weights,
    reinforce_loss,
    selection_weights,
    student_rewards,
    teacher_cross_entropy,
    weighted_kd,
)
from summon.methods import METHOD_MODULE, METHOD_MODULE_FILE
from summon.methods.multi_teacher_kd import (
    MultiTeacherConfig,
    MultiTeacherState,
    build_state,
    policy_states,
    schedule_phase,
    step,
)
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor
from summon.predictors.saved import read_manifest
from summon.training import recipe
from summon.training.config import RunConfig
from summon.training.loop import MetricsLog, build_optimizer, build_run, train

NGRAM = {"kind": "ngram", "num_buckets": 1024, "embed_dim": 16, "dropout": 0.1}
POLICY = {"weighting": "reinforced", "warmup_steps": 1, "policy_pretrain_steps": 2, "policy_lr": 0.05}


# --- pure losses -------------------------------------------------------------------------------------


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))


def _softmax(x: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


def test_weighted_kd_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    s, t, w = torch.randn(4, 3, generator=gen), torch.randn(4, 2, 3, generator=gen), torch.rand(4, 2, generator=gen)
    rows = []
    for j in range(4):
        ps = _softmax(s[j].tolist(), 2.0)
        rows.append(sum(w[j, k].item() * 4.0 * _kl(_softmax(t[j, k].tolist(), 2.0), ps) for k in range(2)))
    assert torch.allclose(weighted_kd(s, t, w, 2.0, reduction="none"), torch.tensor(rows), atol=1e-5)
    assert weighted_kd(s, t, w, 2.0).item() == pytest.approx(sum(rows) / 4, abs=1e-5)


def test_confidence_weights_match_a_loop_and_trust_the_teacher_right_on_each_example():
    t = torch.tensor([[[4.0, 0.0], [0.0, 4.0]], [[4.0, 0.0], [0.0, 4.0]]])  # teacher 0 says class 0, teacher 1 class 1
    y = torch.tensor([0, 1])
    ce = teacher_cross_entropy(t, y)
    assert torch.allclose(ce, torch.tensor([[-math.log(_softmax([4.0, 0.0])[0]), -math.log(_softmax([0.0, 4.0])[0])],
                                            [-math.log(_softmax([4.0, 0.0])[1]), -math.log(_softmax([0.0, 4.0])[1])]]))
    w = confidence_weights(t, y, tau=0.5)
    for j in range(2):
        assert w[j].tolist() == pytest.approx(_softmax([-c / 0.5 for c in ce[j].tolist()]), abs=1e-6)
    assert w[0, 0] > 0.99 and w[1, 1] > 0.99
    assert torch.allclose(confidence_weights(t, y, tau=1e6), torch.full((2, 2), 0.5), atol=1e-4)


def test_selection_weights_normalise_over_the_selected_and_fall_back_when_none_is():
    a = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert selection_weights(a).tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert selection_weights(a, empty="uniform")[1].tolist() == pytest.approx([1 / 3] * 3)
    assert selection_weights(a, normalise=False).tolist() == a.tolist()
    assert selection_weights(torch.tensor([[0.2, 0.6]]))[0].tolist() == pytest.approx([0.25, 0.75])


def test_bernoulli_log_prob_matches_a_loop():
    z, a = torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    p = [1 / (1 + math.exp(-v)) for v in z[0].tolist()]
    naive = sum(math.log(pk) if ak else math.log(1 - pk) for pk, ak in zip(p, a[0].tolist(), strict=True))
    assert bernoulli_log_prob(z, a).item() == pytest.approx(naive, abs=1e-6)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_reinforce_raises_the_probability_of_rewarded_actions_and_lowers_punished_ones(advantage):
    z = torch.zeros(1, 2, requires_grad=True)
    actions = torch.tensor([[1.0, 0.0]])
    reinforce_loss(z, actions, torch.tensor([advantage])).backward()
    with torch.no_grad():
        after = torch.sigmoid(z - 0.5 * z.grad)
    assert torch.sign(after[0, 0] - 0.5).item() == advantage  # the taken "select" action
    assert torch.sign(0.5 - after[0, 1]).item() == advantage  # the taken "skip" action


def test_student_rewards_are_their_definitions():
    s, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    t, w = torch.randn(3, 2, 2), torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    ce = F.cross_entropy(s, y, reduction="none")
    assert student_rewards("ce", s, y).tolist() == pytest.approx((-ce).tolist())
    assert student_rewards("accuracy", s, y).tolist() == [1.0, 1.0, 0.0]
    loss = 0.7 * ce + 0.3 * weighted_kd(s, t, w, 2.0, reduction="none")
    assert student_rewards("loss", s, y, t, w, 2.0, 0.3).tolist() == pytest.approx((-loss).tolist(), abs=1e-6)


def test_policy_states_concatenate_representation_teacher_probabilities_and_cross_entropies():
    h, t, y = torch.randn(4, 5), torch.randn(4, 3, 2), torch.tensor([0, 1, 1, 0])
    ce = teacher_cross_entropy(t, y)
    joint = policy_states(h, t, ce, "joint")
    assert joint.shape == (4, 5 + 3 * 2 + 3)
    assert torch.equal(joint[:, :5], h) and torch.allclose(joint[:, 5:11], F.softmax(t, -1).flatten(1))
    per = policy_states(h, t, ce, "per_teacher")
    assert per.shape == (4, 3, 5 + 2 + 1) and torch.equal(per[:, 2, -1], ce[:, 2])


def test_the_schedule_warms_up_pretrains_then_alternates_or_fixes():
    cfg = MultiTeacherConfig(warmup_steps=2, policy_pretrain_steps=1)
    assert [schedule_phase(b, cfg) for b in range(4)] == ["warmup", "warmup", "pretrain", "joint"]
    cfg = MultiTeacherConfig(warmup_steps=0, policy_pretrain_steps=0, alternate=False)
    assert schedule_phase(0, cfg) == "fixed"


# --- one step at a time ------------------------------------------------------------------------------


def _student_and_batches(cfg: MultiTeacherConfig, dropout: float = 0.0):
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, dropout=dropout), "classification", 2)
    built.model.add_module(METHOD_MODULE, build_state(cfg, built, 3))
    gen = torch.Generator().manual_seed(1)
    words = "good bad great awful film plot".split()
    batches = []
    for b in range(5):
        examples = [{"text": " ".join(words[(i + b) % 6: (i + b) % 6 + 3]), "label": i % 2} for i in range(6)]
        feats = built.featurizer.encode(examples, "classification")
        for i, f in enumerate(feats):
            f.update(teacher_logits=torch.randn(3, 2, generator=gen).numpy(), example_index=6 * b + i)
        batches.append(collate(feats))
    return built.model, batches


def _grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_steps_follow_the_schedule_and_cost_at_most_one_extra_forward():
    cfg = MultiTeacherConfig(warmup_steps=1, policy_pretrain_steps=2, alternate=True, reward="loss_after",
                             reward_gain=False)  # the reward that depends on the actions while the student is frozen
    model, batches = _student_and_batches(cfg)
    policy = getattr(model, METHOD_MODULE)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(torch.is_grad_enabled()))
    student_params = [p for n, p in model.named_parameters() if not n.startswith(METHOD_MODULE)]
    model.train()
    for b, batch in enumerate(batches):
        model.zero_grad(set_to_none=True)
        calls.clear()
        out = step(model, batch, cfg)
        out["loss"].backward()
        phase = schedule_phase(b, cfg)
        student_learns = any(p.grad is not None for p in student_params)
        policy_learns = any(_grads(policy))
        assert calls[0] and len(calls) <= 2 and not any(calls[1:])  # one forward with grad, one without at most
        assert model.training
        if phase == "warmup":
            assert student_learns and not policy_learns and len(calls) == 1
            assert float(out["selected"]) == 3.0
        elif phase == "pretrain":
            assert not student_learns and policy_learns == (b > 1)  # the first pretrain step has no reward yet
        else:
            assert student_learns and policy_learns and len(calls) == 2
    assert int(policy.batches) == 5 and float(policy.baseline) != 0.0
    # the policy's state holds the student's sentence representation: here the n-gram embedding mean
    h = model.embedding(batches[-1]["input_ids"])
    assert torch.allclose(policy.pending["states"][:, :8], h)


def test_the_policy_learns_to_select_the_right_teacher_and_skip_the_wrong_one():
    """Teachers: confidently right, confidently wrong, uniform; the default reward (the gain in the student's
    cross-entropy from each update, per example) teaches the policy which to trust."""
    torch.manual_seed(0)
    cfg = MultiTeacherConfig(warmup_steps=0)
    built = build_model(ModelConfig(kind="ngram", num_buckets=4096, embed_dim=16, dropout=0.0), "classification", 2)
    built.model.add_module(METHOD_MODULE, build_state(cfg, built, 3))
    examples = [{"text": r["text"], "label": int(r["label"] == "pos")} for r in sentiment_rows(256, 0)]
    feats = built.featurizer.encode(examples, "classification")
    for i, f in enumerate(feats):
        right = np.array([-3.0, 3.0] if f["label"] else [3.0, -3.0], dtype=np.float32)
        f.update(teacher_logits=np.stack([right, -right, np.zeros(2, np.float32)]), example_index=i)
    model, policy = built.model.train(), getattr(built.model, METHOD_MODULE)
    student = [p for n, p in model.named_parameters() if not n.startswith(METHOD_MODULE)]
    opt = torch.optim.AdamW([{"params": student, "lr": 0.02},
                             {"params": list(policy.parameters()), "lr": cfg.policy_lr, "weight_decay": 0.0}])
    for epoch in range(4):
        order = np.random.default_rng(epoch).permutation(len(feats))
        for start in range(0, len(feats), 16):
            step(model, collate([feats[i] for i in order[start:start + 16]]), cfg)["loss"].backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        right, wrong, _ = torch.sigmoid(policy(policy.pending["states"])).mean(0).tolist()
    assert right > 0.85 and wrong < 0.15


def test_soft_weights_are_the_selection_probabilities():
    cfg = MultiTeacherConfig(warmup_steps=0, policy_pretrain_steps=0, soft_weights=True, normalise=False)
    model, batches = _student_and_batches(cfg)
    with torch.no_grad():
        getattr(model, METHOD_MODULE).policy.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    step(model, batches[0], cfg)
    weights = getattr(model, METHOD_MODULE).pending["weights"]
    assert torch.allclose(weights, torch.sigmoid(torch.tensor([2.0, 0.0, -2.0])).expand(6, 3))


def test_an_exits_student_is_refused_naming_the_model():
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, exits="all", max_length=16),
                        "classification", 2)
    with pytest.raises(ValueError, match=r"^model: .*exits"):
        build_state(MultiTeacherConfig(), built, 2)


# --- whole runs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mt_data")
    train_path, dev_path = sentiment_files(root, n_train=96, n_dev=32)
    return {"train": train_path, "dev": dev_path, "root": root}


def config(out: Path, data: dict, teachers: list[str], *, model: dict | None = None, method_args: dict | None = None,
           dev: bool = True, **train_args) -> RunConfig:
    raw = {"method": "multi_teacher_kd", "output_dir": str(out), "teachers": teachers,
           "method_args": method_args or {"weighting": "uniform"},
           "data": {"train": {"path": str(data["train"]), "task": "classification"}},
           "model": model or NGRAM,
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "progress": False, "log_every": 1, **train_args},
           "cost": {"latency": False, "flop_examples": 16}, "cache_dir": str(data["root"] / "cache")}
    if dev:
        raw["data"]["eval"] = {"path": str(data["dev"]), "task": "classification"}
    return from_dict(RunConfig, raw, source="test")


@pytest.fixture(scope="module")
def teachers(data, tmp_path_factory) -> list[str]:
    """An n-gram teacher that learnt the task and a tiny-BERT one trained for a single epoch."""
    root = tmp_path_factory.mktemp("mt_teachers")

    def finetune(name: str, model: dict, epochs: int, lr: float) -> str:
        raw = {"method": "finetune", "output_dir": str(root / name), "model": model,
               "data": {"train": {"path": str(data["train"]), "task": "classification"}},
               "train": {"epochs": epochs, "batch_size": 16, "lr": lr, "progress": False},
               "cost": {"latency": False, "flop_examples": 16}}
        return str(train(from_dict(RunConfig, raw, source="test")))

    bert = finetune("bert", {"kind": "pretrained", "name": "tiny-bert", "max_length": 24}, 1, 1e-3)
    return [bert, finetune("ngram", {**NGRAM, "dropout": 0.0}, 3, 0.05)]


def records(out: Path, epoch: int) -> list[dict]:
    return [json.loads(line) for line in (out / "teacher_weights" / f"epoch_{epoch}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("weighting", ["uniform", "confidence", "reinforced"])
def test_each_weighting_trains_end_to_end_and_records_every_rows_weights(weighting, data, teachers, tmp_path):
    args = {**POLICY, "weighting": weighting}
    model_dir = train(config(tmp_path / weighting, data, teachers, method_args=args))
    manifest = read_manifest(model_dir)
    assert manifest["training"]["teachers"] == teachers and len(manifest["training"]["teacher_fingerprints"]) == 2
    assert manifest["metrics"]["eval"]["n"] == 32
    weights = load_file(str(model_dir / "model.safetensors"))
    assert not any(k.startswith(METHOD_MODULE) for k in weights)
    plain = build_model(ModelConfig(**NGRAM), "classification", 2).model.state_dict()
    assert weights.keys() == plain.keys()  # the saved student is a plain n-gram classifier
    assert len(load(model_dir).predict(["a great fun film", "boring"])) == 2
    for epoch in (0, 1):
        rows = records(tmp_path / weighting, epoch)
        assert sorted(r["row"] for r in rows) == list(range(96))
        assert all(len(r["weights"]) == 2 and sum(r["weights"]) <= 1 + 1e-5 for r in rows)
    rows = records(tmp_path / weighting, 1)
    if weighting == "uniform":
        assert all(r["weights"] == [0.5, 0.5] for r in rows)
    if weighting == "confidence":
        assert all(sum(r["weights"]) == pytest.approx(1, abs=1e-5) for r in rows)
    policy_file = tmp_path / weighting / METHOD_MODULE_FILE
    assert policy_file.is_file() == (weighting == "reinforced")
    if weighting == "reinforced":
        assert {r["phase"] for r in records(tmp_path / weighting, 0)} == {"warmup", "pretrain", "joint"}
        assert all(len(r["probs"]) == 2 and len(r["selected"]) == 2 for r in rows)
        assert load_file(str(policy_file))["policy.weight"].abs().sum() > 0  # the policy learnt
        logged = [json.loads(x) for x in (tmp_path / weighting / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("reward_seconds", 0) > 0 for e in logged)
        assert any(e.get("event") == "epoch" and "reward" in e["seconds"] for e in logged)


def test_a_truncated_student_with_a_shared_per_teacher_policy(data, teachers, tmp_path):
    args = {**POLICY, "policy_input": "per_teacher", "soft_weights": True, "reward": "accuracy_after",
            "reward_per": "example"}
    model = {"kind": "truncated", "first": 1, "max_length": 24}  # cut from teachers[0], the tiny BERT
    model_dir = train(config(tmp_path / "truncated", data, teachers, model=model, method_args=args, epochs=1,
                             lr=1e-3))
    assert read_manifest(model_dir)["architecture"]["hf_config"]["num_hidden_layers"] == 1
    policy = load_file(str(tmp_path / "truncated" / METHOD_MODULE_FILE))
    assert policy["policy.weight"].shape == (1, 32 + 2 + 1)  # [h (tiny BERT width 32); p_Tk; CE_k]
    assert len(records(tmp_path / "truncated", 0)) == 96


def test_the_policy_trains_in_its_own_optimizer_group(data, teachers, tmp_path):
    cfg = config(tmp_path / "groups", data, teachers, method_args={**POLICY, "policy_lr": 0.02}, weight_decay=0.1)
    run = build_run(cfg)
    policy = getattr(run.built.model, METHOD_MODULE).policy
    optimizer, _ = build_optimizer(run.built.model, cfg, 10)
    group = next(g for g in optimizer.param_groups if any(p is policy.weight for p in g["params"]))
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(policy.weight), id(policy.bias)}
    assert run.train_set.features[0]["teacher_logits"].shape == (2, 2)


def test_each_teacher_is_one_cached_pass(data, teachers, tmp_path, monkeypatch):
    cache = tmp_path / "own_cache"
    cfg = config(tmp_path / "first", data, teachers, max_steps=1, dev=False)
    cfg.cache_dir = str(cache)
    train(cfg)
    assert len(list((cache / "teacher").glob("*.safetensors"))) == 2

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("a teacher ran although its outputs were cached")

    monkeypatch.setattr(Predictor, "logits", no_teacher_pass)
    cfg = config(tmp_path / "second", data, teachers, max_steps=1, dev=False, method_args={"weighting": "confidence"})
    cfg.cache_dir = str(cache)
    train(cfg)


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_matches_an_uninterrupted_run(data, teachers, tmp_path):
    args = {**POLICY, "reward_per": "example"}
    settings = {"method_args": args, "dev": False, "batch_size": 8, "save_every": 4}
    train(config(tmp_path / "reference", data, teachers, **settings))
    out = tmp_path / "run"
    write = MetricsLog.write

    def dying_write(self, record):
        if record.get("step") == 6 and "lr" in record:
            raise Interrupted
        write(self, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MetricsLog, "write", dying_write)
        with pytest.raises(Interrupted):
            train(config(out, data, teachers, **settings))
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert {f"{METHOD_MODULE}.policy.weight", f"{METHOD_MODULE}.batches", f"{METHOD_MODULE}.pending.states",
            f"{METHOD_MODULE}.pending.batch.input_ids"} <= saved.keys()
    assert int(saved[f"{METHOD_MODULE}.batches"]) == 4
    assert max(r["batch"] for r in records(out, 0)) == 5  # batches 4 and 5 ran before the interruption
    train(config(out, data, teachers, **settings))
    ref, got = (load_file(str(p / "model" / "model.safetensors")) for p in (tmp_path / "reference", out))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    ref, got = (load_file(str(p / METHOD_MODULE_FILE)) for p in (tmp_path / "reference", out))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    for epoch in (0, 1):
        assert records(out, epoch) == records(tmp_path / "reference", epoch)


# --- bad configs -------------------------------------------------------------------------------------------


def _raw(**changes) -> dict:
    raw = {"method": "multi_teacher_kd", "output_dir": "runs/x", "teachers": ["a", "b"],
           "data": {"train": {"path": "train.jsonl", "task": "classification"}},
           "model": {"kind": "ngram"}}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(("changes", "match"), [
    ({"teachers": ["a"]}, r"teachers: .*at least 2, got 1"),
    ({"teachers": None}, r"teachers: method 'multi_teacher_kd' distils several teachers"),
    ({"teachers": ["a", "a"]}, r"teachers: a listed more than once"),
    ({"method": "kd", "teacher": "a"}, r"teachers: method 'kd' reads one teacher"),
    ({"method_args": {"weighting": "reinforce"}}, r"method_args\.weighting: .*Did you mean 'reinforced'"),
    ({"method_args": {"warmup_steps": -1}}, r"method_args\.warmup_steps: must be a whole number"),
    ({"method_args": {"policy_pretrain_steps": -2}}, r"method_args\.policy_pretrain_steps: "),
    ({"method_args": {"reward": "accuracy"}}, r"method_args\.reward: "),
    ({"method_args": {"baseline_rate": 0}}, r"method_args\.baseline_rate: must be in \(0, 1\]"),
])
def test_bad_configs_are_refused_naming_the_key(changes, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(RunConfig, _raw(**changes), source="recipe.yaml")


def test_several_teachers_for_tagging_are_refused_before_any_teacher_loads(tmp_path):
    rows = [{"tokens": ["the", "man"], "tags": ["O", "B-PER"]}] * 4
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = _raw(output_dir=str(tmp_path / "out"), teachers=["no/such/a", "no/such/b"],
               data={"train": {"path": str(path), "task": "token_classification"}},
               model={"kind": "pretrained", "name": "tiny-bert"})
    with pytest.raises(ValueError, match=r"^teachers: .*token_classification"):
        train(from_dict(RunConfig, raw, source="test"))


def test_the_shipped_recipe_loads():
    cfg = recipe.load_run_config("sst2_multi_teacher")
    assert cfg.method == "multi_teacher_kd" and len(cfg.teachers) >= 2
    assert cfg.method_args.weighting == "reinforced"


def test_a_state_module_without_a_policy_refuses_to_choose():
    with pytest.raises(ValueError, match="no policy"):
        MultiTeacherState(2, 2)(torch.zeros(1, 4))
