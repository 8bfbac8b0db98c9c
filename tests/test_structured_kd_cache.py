"""Structured KD with cached teacher outputs, its per-part timing, and the faithful reproduction settings.

Tiny random CRF taggers only: the cached path must give the online path's loss on the same batch for every
variant, the cache must be reused (no teacher pass the second time), epochs must be timed part by part, and the
reproduction recipe must build the released code's optimiser groups and schedules.
"""

from __future__ import annotations

import json

import pytest
import torch
from toy import FIXTURE_DATA, run_config, tagging_files

from summon.cli.main import main
from summon.core.config import ConfigError, from_dict, to_dict
from summon.data.features import collate
from summon.data.spec import TaskData
from summon.measure.metrics import span_f1
from summon.measure.timing import epoch_seconds, time_ratios
from summon.methods import METHODS
from summon.methods.structured_kd import StructuredKDConfig, teacher_rows
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor
from summon.predictors.saved import read_manifest
from summon.training import recipe, structured_cache
from summon.training.config import TrainConfig
from summon.training.loop import build_optimizer, train
from summon.training.structured_cache import crf_teacher_rows

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = ["Ada Lovelace met Bob in London .", "the bank in Paris", "Bob", "people of the world , good news",
             "unbelievably disproportionate anticonstitutional words", "a b c d e f g h"]
VARIANTS = ["substructure", "substructure_emissions_only", "marginal_kl", "topk"]
STEP = METHODS.get("structured_kd").step


def _tagger(over: str, seed: int, tags: list[str] = TAGS) -> Predictor:
    built = build_model(ModelConfig(name="tiny-bert", crf=True, crf_over=over, init_seed=seed, max_length=32),
                        "token_classification", len(tags))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for param in built.model.crf.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return Predictor(built.model, built.featurizer, "token_classification", tags, {"architecture": built.architecture})


def _data() -> TaskData:
    examples = [{"tokens": s.split(), "tags": [i % len(TAGS) for i in range(len(s.split()))]} for s in SENTENCES]
    return TaskData("token_classification", TAGS, examples, "test")


def _cached_rows(teacher: Predictor, student: Predictor, cfg: StructuredKDConfig, tmp_path, data: TaskData):
    features = student.featurizer.encode(data.examples, data.task)
    rows = crf_teacher_rows(teacher, features, data, teacher_rows, cfg, featurizer_config=student.featurizer.to_config(),
                            pad_id=student.featurizer.pad_id, cache_dir=tmp_path, batch_size=4)
    return features, rows


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize("over", ["words", "subtokens"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_teacher_outputs_give_the_online_loss(variant, over, mask_padding, tmp_path):
    teacher, student = _tagger(over, seed=1), _tagger(over, seed=2)
    cfg = StructuredKDConfig(variant=variant, mask_padding=mask_padding)
    data = _data()
    # cached over length-sorted batches of 4 and read back from safetensors; trained on one batch of all rows
    _cached_rows(teacher, student, cfg, tmp_path, data)
    features, rows = _cached_rows(teacher, student, cfg, tmp_path, data)
    plain = collate(features, student.featurizer.pad_id)
    cached = collate([{**f, **r} for f, r in zip(features, rows, strict=True)], student.featurizer.pad_id)
    torch.manual_seed(0)
    online = STEP(student.model.eval(), plain, StructuredKDConfig(**{**cfg.__dict__, "teacher_outputs": "online"}),
                  teacher=teacher.model)
    from_cache = STEP(student.model, cached, cfg)
    torch.testing.assert_close(from_cache["loss"], online["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_cache["kd_loss"], online["kd_loss"], rtol=1e-5, atol=1e-5)
    from_cache["loss"].backward()
    cached_grad = student.model.crf.transitions.grad.clone()
    student.model.zero_grad()
    online["loss"].backward()
    torch.testing.assert_close(cached_grad, student.model.crf.transitions.grad, rtol=1e-4, atol=1e-6)
    assert float(from_cache["teacher_forward_seconds"]) < float(online["teacher_forward_seconds"])
    assert {"teacher_forward_seconds", "student_forward_seconds", "kd_seconds"} <= set(from_cache)


def test_the_cache_is_reused_and_keyed_by_what_it_holds(tmp_path, monkeypatch):
    teacher, student = _tagger("words", seed=1), _tagger("words", seed=2)
    data = _data()
    _, first = _cached_rows(teacher, student, StructuredKDConfig(), tmp_path, data)
    assert len(list((tmp_path / "teacher").glob("crf-*.safetensors"))) == 1

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(structured_cache, "compute_rows", no_teacher)
    _, again = _cached_rows(teacher, student, StructuredKDConfig(variant="substructure_emissions_only"), tmp_path, data)
    for a, b in zip(first, again, strict=True):
        assert set(a) == set(b) == {"teacher_emissions", "teacher_transitions"}
        assert (a["teacher_emissions"] == b["teacher_emissions"]).all()
    with pytest.raises(AssertionError, match="the teacher ran"):  # marginals are not in that file: a new key
        _cached_rows(teacher, student, StructuredKDConfig(variant="marginal_kl"), tmp_path, data)


def test_cached_mode_refuses_a_batch_without_the_cache_and_online_mode_needs_the_teacher():
    student = _tagger("words", seed=2)
    batch = collate(student.featurizer.encode(_data().examples, "token_classification"), student.featurizer.pad_id)
    with pytest.raises(ValueError, match="teacher_outputs"):
        STEP(student.model, batch, StructuredKDConfig())
    with pytest.raises(ValueError, match="teacher_outputs"):
        STEP(student.model, batch, StructuredKDConfig(teacher_outputs="online"))


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match="teacher_outputs"):
        from_dict(StructuredKDConfig, {"teacher_outputs": "offline"}, source="test")
    with pytest.raises(ValueError, match="teacher_outputs"):
        StructuredKDConfig(teacher_outputs="offline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        StructuredKDConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="lr_schedule"):
        from_dict(TrainConfig, {"lr_schedule": "bert"}, source="test")
    with pytest.raises(ValueError, match="head_weight_decay"):
        TrainConfig(head_weight_decay=-1.0)


# --- the loop: cached by default, timed part by part -------------------------------------------------------


def test_a_cached_run_skips_the_teacher_and_times_each_part(tmp_path, monkeypatch):
    teacher = _tagger("words", seed=3, tags=["O", "B-LOC", "B-PER", "I-PER"]).save(tmp_path / "teacher")
    train_path, dev_path = tagging_files(tmp_path, n_train=24, n_dev=8)

    def run(name: str, **args) -> dict:
        cfg = run_config(tmp_path / name, train_path, dev_path, task="token_classification", method="structured_kd",
                         model={"kind": "truncated", "first": 1, "max_length": 32, "crf": True}, epochs=1,
                         batch_size=8)
        cfg.teacher, cfg.method_args = str(teacher), args
        train(cfg)
        return epoch_seconds(tmp_path / name / "metrics.jsonl")

    cached = run("cached")
    assert set(cached) == {"teacher_forward", "student_forward", "kd", "gold_nll", "backward", "train"}
    assert cached["teacher_forward"] == 0.0 and cached["kd"] > 0 and cached["student_forward"] > 0
    assert len(list((tmp_path / "cache" / "teacher").glob("crf-*.safetensors"))) == 1
    online = run("online", teacher_outputs="online")
    assert online["teacher_forward"] > cached["teacher_forward"]
    ratios = time_ratios({"cached": cached, "online": online}, baseline="online")
    assert ratios["online"] == {"epoch": 1.0, "kd": 1.0} and ratios["cached"]["kd"] > 0

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(structured_cache, "compute_rows", no_teacher)
    again = run("again")  # the same teacher, featurizer and data: the cache answers
    assert again["teacher_forward"] == 0.0


# --- the reproduction settings -------------------------------------------------------------------------------


def test_reproduction_recipe_builds_the_released_codes_optimizer_groups():
    cfg = recipe.load_run_config("conll2003_chunking_substructure_kd_paper")
    assert (cfg.model.first, cfg.model.crf_over, cfg.model.dropout) == (3, "subtokens", 0.3)
    assert (cfg.method_args.alpha, cfg.method_args.mask_padding, cfg.method_args.variant) == (0.9, False,
                                                                                              "substructure")
    assert cfg.train.epochs == 15 and cfg.train.lr == pytest.approx(5e-5 * 12 / 3)
    model = build_model(ModelConfig(name="tiny-bert", crf=True, crf_over="subtokens", max_length=32),
                        "token_classification", len(TAGS)).model
    optimizer, scheduler = build_optimizer(model, cfg, total_steps=100)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {(g["initial_lr"], g["weight_decay"]): sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert set(groups) == {(2e-4, 1e-5), (2e-4, 0.0), (5e-3, 5e-6), (5e-3, 0.0)}
    assert set(groups[(5e-3, 5e-6)]) == {"head.classifier.weight", "crf.transitions"}
    assert set(groups[(5e-3, 0.0)]) == {"head.classifier.bias", "crf.start", "crf.end"}
    assert all(".bias" in n or "LayerNorm" in n or "norm" in n.lower() for n in groups[(2e-4, 0.0)])
    for _ in range(50):  # linear: each group keeps its own rate, warmed up over 10 steps, then decayed
        optimizer.step()
        scheduler.step()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([2e-4 * 50 / 90, 5e-3 * 50 / 90])

    cfg.train.lr_schedule = "efficient_kd_code"  # the released loop: every group at the BERT rate, factor squared
    optimizer, scheduler = build_optimizer(model, cfg, total_steps=100)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-4 * (50 / 90) ** 2] * 4)


@pytest.mark.parametrize("role", ["crf_teacher", "substructure_kd"])
def test_ner_reproduction_recipes_are_the_chunking_ones_on_ner_tags(role):
    ner, chunking = (to_dict(recipe.load_run_config(f"conll2003_{task}{role}_paper")) for task in ("", "chunking_"))
    assert ner["data"]["train"]["columns"] == {} and ner["data"]["train"]["labels"] is None  # conll2003's NER tags
    assert ner["output_dir"] == f"runs/conll2003/{role}_paper"
    if role == "substructure_kd":
        assert ner["teacher"] == "runs/conll2003/crf_teacher_paper/model"
    differ = ("data", "output_dir", "teacher", "description")
    assert {k: v for k, v in ner.items() if k not in differ} == {k: v for k, v in chunking.items() if k not in differ}


def test_reproduction_recipes_run_end_to_end_on_a_tiny_model(tmp_path):
    tiny = ["train.epochs=1", "train.max_steps=2", "train.batch_size=8", "train.eval_batch_size=16",
            "train.progress=false", "cost.latency=false", "cost.flop_examples=16", "data.train.limit=24",
            "data.eval.limit=16", "model.name=tiny-bert", "model.max_length=48", f"cache_dir={tmp_path / 'cache'}",
            f"data.data_dir={FIXTURE_DATA}"]
    teacher_name, student_name = "conll2003_chunking_crf_teacher_paper", "conll2003_chunking_substructure_kd_paper"
    assert main(["train", teacher_name, *tiny, f"output_dir={tmp_path / 't'}"]) == 0
    assert main(["train", student_name, *tiny, f"output_dir={tmp_path / 's'}", "model.first=1",
                 f"teacher={tmp_path / 't' / 'model'}", "train.lr_schedule=efficient_kd_code"]) == 0
    metrics = read_manifest(tmp_path / "s" / "model")["metrics"]["eval"]
    assert {"f1", "token_f1"} <= set(metrics)
    records = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "epoch" and r["seconds"]["teacher_forward"] > 0 for r in records)  # online


def test_token_f1_counts_non_o_tags_as_the_released_code():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-MISC", "O"]]  # 3 proposed, 4 gold, 2 right
    assert span_f1(gold, pred)["token_f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))


def test_cached_outputs_for_another_chain_are_refused(tmp_path):
    teacher, student = _tagger("words", seed=1), _tagger("words", seed=2)
    data = _data()
    _, rows = _cached_rows(teacher, student, StructuredKDConfig(), tmp_path, data)
    short = build_model(ModelConfig(name="tiny-bert", crf=True, init_seed=2, max_length=6), "token_classification",
                        len(TAGS))
    cut = short.featurizer.encode(data.examples, data.task)  # fewer words kept per row than the cache holds
    batch = collate([{**f, **r} for f, r in zip(cut, rows, strict=True)], short.featurizer.pad_id)
    with pytest.raises(ValueError, match="chains differ"):
        STEP(short.model, batch, StructuredKDConfig())
