"""CRF taggers (summon.models.tagger), their methods (crf_finetune, structured_kd) and CRF predictors.

Tiny random encoders only; the losses are checked against references built sentence by sentence from the
pure CRF and loss functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy import run_config, tagging_files

import summon
from summon.core.config import ConfigError, from_dict
from summon.data.features import collate
from summon.losses.structured import marginal_kl, substructure_mse, topk_nll
from summon.methods import METHODS
from summon.methods.structured_kd import StructuredKDConfig
from summon.models import ModelConfig, build_model
from summon.models import crf as crf_fn
from summon.models.build import Source
from summon.models.tiny import tiny_tokenizer
from summon.predictors.predictor import Predictor
from summon.predictors.saved import read_manifest
from summon.training.loop import train

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = ["Ada Lovelace met Bob in London .", "the bank in Paris", "Bob", "people of the world , good news"]


def _tagger(over: str = "words", seed: int = 0, first: int | None = None) -> Predictor:
    cfg = ModelConfig(name="tiny-bert", crf=True, crf_over=over, init_seed=seed, max_length=32)
    built = build_model(cfg, "token_classification", len(TAGS))
    with torch.no_grad():  # random CRF parameters, so decoding is not trivially the arg-max
        gen = torch.Generator().manual_seed(seed)
        for param in built.model.crf.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return Predictor(built.model, built.featurizer, "token_classification", TAGS,
                     {"architecture": built.architecture})


def _batch(predictor: Predictor, examples: list[dict]) -> dict[str, torch.Tensor]:
    feats = predictor.featurizer.encode(examples, "token_classification")
    return collate(feats, predictor.featurizer.pad_id)


@pytest.mark.parametrize("over", ["words", "subtokens"])
def test_save_load_round_trip_gives_identical_predictions(over, tmp_path):
    predictor = _tagger(over)
    path = predictor.save(tmp_path / "tagger")
    loaded = summon.load(path)
    assert read_manifest(path)["architecture"]["crf"] == {"over": over}
    before, after = predictor.predict(SENTENCES), loaded.predict(SENTENCES)
    assert [p.tags for p in before] == [p.tags for p in after]
    assert [p.spans for p in before] == [p.spans for p in after]


@pytest.mark.parametrize("over", ["words", "subtokens"])
def test_batched_decoding_equals_one_by_one(over):
    predictor = _tagger(over, seed=1)
    together = predictor.predict(SENTENCES, batch_size=4)
    alone = [predictor.predict([s], batch_size=1)[0] for s in SENTENCES]
    assert [p.tags for p in together] == [p.tags for p in alone]
    assert all(len(p.tags) == len(p.tokens) for p in together)


def test_decoding_is_viterbi_over_the_words_not_the_arg_max():
    predictor = _tagger("words", seed=2)
    batch = _batch(predictor, [{"tokens": s.split()} for s in SENTENCES])
    with torch.no_grad():
        emissions = predictor.model(batch)
        paths = predictor.model.decode_words(batch, emissions)
    for b, path in enumerate(paths):
        k = int(batch["word_mask"][b].sum())
        words = emissions[b, batch["word_starts"][b, :k]]
        _, (best,) = crf_fn.viterbi(words[None], torch.ones(1, k, dtype=torch.bool), *predictor.model.crf.params())
        assert path == best


def test_predict_on_raw_text_gives_character_offsets():
    predictor = _tagger("words")
    model = predictor.model
    with torch.no_grad():  # emissions all zero; the CRF alone forces B-PER I-PER O O ...
        model.head.classifier.weight.zero_()
        model.head.classifier.bias.zero_()
        model.crf.start.fill_(-10.0)
        model.crf.start[TAGS.index("B-PER")] = 10.0
        model.crf.transitions.fill_(-10.0)
        model.crf.transitions[TAGS.index("B-PER"), TAGS.index("I-PER")] = 10.0
        model.crf.transitions[TAGS.index("I-PER"), TAGS.index("O")] = 10.0
        model.crf.transitions[TAGS.index("O"), TAGS.index("O")] = 10.0
        model.crf.end.zero_()
    text = "  Ada Lovelace, met Bob."
    (pred,) = predictor.predict(text)
    assert pred.tokens == ["Ada", "Lovelace", ",", "met", "Bob", "."]
    assert pred.tags == ["B-PER", "I-PER", "O", "O", "O", "O"]
    assert pred.spans == [{"label": "PER", "start": 2, "end": 14, "text": "Ada Lovelace"}]


# --- structured KD: each variant's loss against a sentence-by-sentence reference ------------------------


def _word_rows(emissions: torch.Tensor, batch: dict, b: int) -> torch.Tensor:
    k = int(batch["word_mask"][b].sum())
    return emissions[b, batch["word_starts"][b, :k]]


def _reference(variant: str, student, teacher, batch, cfg: StructuredKDConfig) -> torch.Tensor:
    """The loss recomputed one sentence at a time (no padding anywhere), then averaged as the method does."""
    s_em, t_em = student(batch), teacher(batch)
    s_params, t_params = student.crf.params(), teacher.crf.params()
    sq, kl, nlls, top, positions = 0.0, 0.0, [], 0.0, 0
    for b in range(batch["input_ids"].shape[0]):
        s, t = _word_rows(s_em, batch, b)[None], _word_rows(t_em, batch, b)[None]
        mask = torch.ones(s.shape[:2], dtype=torch.bool)
        gold = batch["word_tags"][b, : s.shape[1]][None]
        nlls.append(crf_fn.nll(s, gold, mask, *s_params)[0])
        positions += s.shape[1]
        if variant.startswith("substructure"):
            with_t = variant == "substructure"
            sq = sq + substructure_mse(s, s_params[0], t, t_params[0], mask, with_transitions=with_t) * s.shape[1]
        elif variant == "marginal_kl":
            unary_t = crf_fn.marginals(t, mask, *t_params)[0]
            kl = kl + marginal_kl(crf_fn.marginals(s, mask, *s_params)[0], unary_t, mask) * s.shape[1]
        else:
            _, paths = crf_fn.kbest_viterbi(t, mask, *t_params, k=cfg.k)
            top = top + topk_nll(s, mask, *s_params, paths, cfg.topk_weights)
    if variant == "topk":
        return top / len(nlls)
    kd = (sq if variant.startswith("substructure") else kl) / positions
    return (1 - cfg.alpha) * torch.stack(nlls).mean() + cfg.alpha * kd


@pytest.mark.parametrize("variant", ["substructure", "substructure_emissions_only", "marginal_kl", "topk"])
def test_structured_kd_step_matches_a_reference(variant):
    student, teacher = _tagger(seed=3).model, _tagger(seed=4).model
    labelled = [{"tokens": s.split(), "tags": [i % len(TAGS) for i in range(len(s.split()))]} for s in SENTENCES]
    batch = _batch(_tagger(), labelled)
    cfg = StructuredKDConfig(variant=variant, teacher_outputs="online")
    out = METHODS.get("structured_kd").step(student, batch, cfg, teacher=teacher)
    with torch.no_grad():
        want = _reference(variant, student, teacher, batch, cfg)
    torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-4, atol=1e-5)
    out["loss"].backward()
    assert student.crf.transitions.grad is not None and teacher.crf.transitions.grad is None
    assert {"teacher_forward_seconds", "student_forward_seconds", "kd_seconds", "gold_nll_seconds"} <= set(out)


def test_unpadded_average_is_available_to_reproduce_the_released_code():
    student, teacher = _tagger(seed=3).model, _tagger(seed=4).model
    batch = _batch(_tagger(), [{"tokens": s.split(), "tags": [0] * len(s.split())} for s in SENTENCES])
    online = StructuredKDConfig(teacher_outputs="online")
    masked = METHODS.get("structured_kd").step(student, batch, online, teacher=teacher)
    plain = METHODS.get("structured_kd").step(student, batch, StructuredKDConfig(mask_padding=False,
                                                                                 teacher_outputs="online"),
                                              teacher=teacher)
    assert not torch.isclose(masked["kd_loss"], plain["kd_loss"])  # padding counts in the released code's mean


# --- bad configurations -------------------------------------------------------------------------------


def test_copy_of_a_crf_tagger_keeps_its_crf():
    teacher = _tagger(seed=5).model
    built = build_model(ModelConfig(kind="copy", crf=True), "token_classification", len(TAGS),
                        source=Source.of(teacher, tiny_tokenizer()))
    for ours, theirs in zip(built.model.state_dict().values(), teacher.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_crf_on_a_sequence_task_names_the_key():
    with pytest.raises(ValueError, match=r"model\.crf"):
        build_model(ModelConfig(name="tiny-bert", crf=True), "classification", 2)
    with pytest.raises(ValueError, match=r"model\.crf_over"):
        build_model(ModelConfig(name="tiny-bert", crf_over="subtokens"), "token_classification", 2)


def test_unknown_variant_names_the_key():
    with pytest.raises(ConfigError, match="variant"):
        from_dict(StructuredKDConfig, {"variant": "struct"}, source="test")
    with pytest.raises(ValueError, match="variant"):
        StructuredKDConfig(variant="struct")  # type: ignore[arg-type]


def test_crf_methods_refuse_a_softmax_tagger():
    built = build_model(ModelConfig(name="tiny-bert"), "token_classification", len(TAGS))
    predictor = Predictor(built.model, built.featurizer, "token_classification", TAGS)
    batch = _batch(predictor, [{"tokens": ["a"], "tags": [0]}])
    with pytest.raises(ValueError, match=r"model\.crf: true"):
        METHODS.get("crf_finetune").step(built.model, batch, METHODS.get("crf_finetune").config_cls())


# --- training end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crf")
    train_path, dev_path = tagging_files(root, n_train=96, n_dev=24)
    cfg = run_config(root / "teacher", train_path, dev_path, task="token_classification", method="crf_finetune",
                     model={"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "crf": True}, epochs=6,
                     head_lr=1e-2)
    return train(cfg)


def test_crf_teacher_learns_and_students_distil_with_timed_epochs(teacher):
    assert read_manifest(teacher)["metrics"]["eval"]["f1"] >= 0.6
    root = teacher.parent.parent
    cfg = run_config(root / "student", root / "tag_train.jsonl", root / "tag_dev.jsonl", task="token_classification",
                     method="structured_kd", model={"kind": "truncated", "first": 1, "max_length": 32, "crf": True},
                     epochs=1)
    cfg.teacher = str(teacher)
    cfg.method_args = {"variant": "marginal_kl", "teacher_outputs": "online"}
    student = train(cfg)
    assert read_manifest(student)["training"]["method_args"]["variant"] == "marginal_kl"
    epochs = [json.loads(line) for line in (root / "student" / "metrics.jsonl").read_text().splitlines()]
    (epoch,) = [e for e in epochs if e.get("event") == "epoch"]
    assert set(epoch["seconds"]) == {"teacher_forward", "student_forward", "kd", "gold_nll", "backward", "train"}
    assert epoch["seconds"]["teacher_forward"] > 0 and not epoch["partial"]
    assert len(summon.load(student).predict(["the man went to the city"])[0].tags) == 6
