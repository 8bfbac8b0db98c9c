"""Hugging Face classifiers in and out: HF teachers (labels from id2label, logits as the HF model gives them),
distillation from one through the training loop, exits on an HF model whose last exit is its own classifier,
and ``summon export --format hf`` round trips, with clear errors for what has no standard equivalent.

Every HF model here is a tiny random one made by transformers itself and saved beside summon's tiny tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from toy import NAMES, PLACES, run_config, sentiment_files, sentiment_rows, tagging_files
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import summon
from summon.adaptive.cascade import CascadePredictor
from summon.cli.export import add_export_parser
from summon.cli.main import command, main
from summon.data.features import collate
from summon.models import ModelConfig, build_model
from summon.models.build import Source
from summon.models.exits import MultiExitClassifier
from summon.models.hf import HFTaskModel
from summon.models.tiny import tiny_tokenizer
from summon.predictors.huggingface import export_hf, is_hf_model_dir, load_hf_predictor, load_plain
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import read_manifest, save_predictor
from summon.predictors.st_export import export, export_format
from summon.training.loop import train

TEXTS = ["the movie was great fun", "a terrible boring plot and bad acting", "the film", "so very good"]
WORDS = [["the", "man", "woman", "was", "great"], ["city", "bank"], ["children", "of", "the", "world", "win"]]
TAGS = ["O", "B-LOC", "B-PER", "I-PER"]  # the order toy.tagging_files' labels take (O first, then sorted)
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 160, "pad_token_id": 0, "initializer_range": 0.3}


def _config(config_cls, labels: list[str], **extra):
    return config_cls(vocab_size=len(tiny_tokenizer()), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)}, **{**SIZES, **extra})


def _save(model, folder):
    model.eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _make(model_cls, config):
    torch.manual_seed(0)
    return model_cls(config)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "bert": _save(_make(BertForSequenceClassification, _config(BertConfig, ["neg", "pos"])), root / "bert"),
        "roberta": _save(_make(RobertaForSequenceClassification, _config(RobertaConfig, ["neg", "pos"])),
                         root / "roberta"),
        "electra": _save(_make(ElectraForSequenceClassification,
                               _config(ElectraConfig, ["neg", "pos"], embedding_size=32)), root / "electra"),
        "tagger": _save(_make(BertForTokenClassification, _config(BertConfig, TAGS)), root / "tagger"),
        "generic": _save(_make(BertForSequenceClassification, BertConfig(vocab_size=len(tiny_tokenizer()), **SIZES)),
                         root / "generic"),
    }


def _hf_logits(folder, task: str, inputs) -> torch.Tensor:
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    split = task == "token_classification"
    enc = tokenizer(inputs, is_split_into_words=split, padding=True, return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k in tokenizer.model_input_names}
    with torch.no_grad():
        return model(**enc).logits


def _batch(featurizer, task: str, inputs):
    key = "tokens" if task == "token_classification" else "text"
    return collate(featurizer.encode([{key: x} for x in inputs], task), featurizer.pad_id)


# --- HF models in -------------------------------------------------------------------------------------------


def test_is_hf_model_dir(hf_dirs, tmp_path):
    assert is_hf_model_dir(hf_dirs["bert"])
    (tmp_path / "summon").mkdir()
    (tmp_path / "summon" / "config.json").write_text("{}")
    (tmp_path / "summon" / "manifest.json").write_text("{}")
    assert not is_hf_model_dir(tmp_path / "summon") and not is_hf_model_dir(tmp_path / "missing")


@pytest.mark.parametrize("key", ["bert", "roberta", "electra"])
def test_hf_sequence_classifier_loads_with_its_labels_and_predicts_like_itself(hf_dirs, key):
    predictor = load_hf_predictor(hf_dirs[key])
    assert predictor.task == "classification" and predictor.labels == ["neg", "pos"]
    assert isinstance(predictor.model, HFTaskModel)
    assert predictor.manifest["architecture"]["type"] == "hf" and len(predictor.fingerprint) == 64
    rows = np.stack(predictor.logits([{"text": t} for t in TEXTS]))
    expected = _hf_logits(hf_dirs[key], "classification", TEXTS).numpy()
    assert np.abs(rows - expected).max() < 1e-5 and np.abs(expected).max() > 0.1
    preds = predictor.predict(TEXTS)
    assert [p.label for p in preds] == [["neg", "pos"][i] for i in expected.argmax(axis=1)]


def test_hf_token_classifier_gives_word_level_rows(hf_dirs):
    predictor = load_hf_predictor(hf_dirs["tagger"])
    assert predictor.task == "token_classification" and predictor.labels == TAGS
    batch = _batch(predictor.featurizer, "token_classification", WORDS)
    with torch.no_grad():
        sub = predictor.model(batch)  # [B, L, C]: one row per sub-token, as summon's taggers give
    assert torch.allclose(sub, _hf_logits(hf_dirs["tagger"], "token_classification", WORDS), atol=1e-5)
    rows = predictor.logits([{"tokens": w} for w in WORDS])
    assert [r.shape for r in rows] == [(len(w), len(TAGS)) for w in WORDS]
    starts = batch["word_starts"][0, : len(WORDS[0])]
    assert np.allclose(rows[0], sub[0, starts].numpy(), atol=1e-6)
    assert len(predictor.predict(["the man was in the city"])[0].tags) == 6


def test_load_plain_dispatches_and_explains(hf_dirs, tmp_path):
    assert isinstance(load_plain(hf_dirs["bert"]).model, HFTaskModel)
    assert load_plain(f"hf:{hf_dirs['bert']}").labels == ["neg", "pos"]
    built = build_model(ModelConfig(kind="ngram", num_buckets=64), "classification", 2)
    save_predictor(tmp_path / "ngram", built.model, built.featurizer, "classification", ["a", "b"], built.architecture)
    assert load_plain(tmp_path / "ngram").labels == ["a", "b"]
    with pytest.raises(ValueError, match=r"write hf:textattack/bert-sst2"):
        load_plain("textattack/bert-sst2")
    (tmp_path / "cascade").mkdir()
    (tmp_path / "cascade" / "manifest.json").write_text(json.dumps({"format": "summon-cascade"}))
    with pytest.raises(ValueError, match=r"not a plain predictor; load it with summon\.load"):
        load_plain(tmp_path / "cascade")


def test_labels_generic_named_or_mismatched(hf_dirs):
    assert load_hf_predictor(hf_dirs["generic"]).labels == ["LABEL_0", "LABEL_1"]
    assert load_hf_predictor(hf_dirs["generic"], labels=["neg", "pos"]).labels == ["neg", "pos"]
    assert load_hf_predictor(hf_dirs["bert"], labels=["NEG", "POS"]).labels == ["NEG", "POS"]
    with pytest.raises(ValueError, match=r"labels \['neg', 'pos'\] .* differ from the data's \['pos', 'neg'\]"):
        load_hf_predictor(hf_dirs["bert"], labels=["pos", "neg"])
    with pytest.raises(ValueError, match=r"is a sequence classifier .* but the task is token_classification"):
        load_hf_predictor(hf_dirs["bert"], task="token_classification")
    assert load_hf_predictor(hf_dirs["bert"], task="pair_classification").task == "pair_classification"


# --- distillation from an HF teacher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_hf_teacher(tmp_path_factory):
    """A tiny BertForSequenceClassification fine-tuned on the toy sentiment rows with plain PyTorch."""
    folder = tmp_path_factory.mktemp("hf_teacher")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(_config(BertConfig, ["neg", "pos"], initializer_range=0.02))
    rows = sentiment_rows(256, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(4):
        for start in range(0, len(rows), 16):
            chunk = rows[start:start + 16]
            enc = tokenizer([r["text"] for r in chunk], padding=True, return_tensors="pt")
            labels = torch.tensor([["neg", "pos"].index(r["label"]) for r in chunk])
            model(**enc, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return _save(model, folder)


def test_kd_from_an_hf_teacher_folder_uses_the_teacher_cache(trained_hf_teacher, tmp_path, monkeypatch):
    train_path, dev_path = sentiment_files(tmp_path / "data")
    teacher = load_hf_predictor(trained_hf_teacher)
    dev = [json.loads(line) for line in dev_path.read_text().splitlines()]
    teacher_acc = np.mean([p.label == r["label"] for p, r in zip(teacher.predict([r["text"] for r in dev]), dev,
                                                                  strict=True)])
    assert teacher_acc >= 0.9
    ngram = {"kind": "ngram", "num_buckets": 4096, "embed_dim": 16, "dropout": 0.0}
    cfg = run_config(tmp_path / "kd", train_path, dev_path, method="kd", model=ngram, lr=0.05)
    cfg.teacher, cfg.cache_dir = f"hf:{trained_hf_teacher}", str(tmp_path / "cache")
    student = train(cfg)
    manifest = read_manifest(student)
    assert manifest["metrics"]["eval"]["accuracy"] >= 0.85
    assert manifest["training"]["teacher_fingerprint"] == teacher.fingerprint
    assert len(list((tmp_path / "cache" / "teacher").glob("*.safetensors"))) == 1

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(Predictor, "logits", no_teacher_pass)
    again = run_config(tmp_path / "kd_truncated", train_path, dev_path, method="kd", epochs=1,
                       model={"kind": "truncated", "first": 1, "max_length": 32})
    again.teacher, again.cache_dir = str(trained_hf_teacher), str(tmp_path / "cache")  # a plain folder path
    truncated = read_manifest(train(again))
    assert truncated["architecture"]["hf_config"]["num_hidden_layers"] == 1


def test_kd_from_an_hf_tagger(hf_dirs, tmp_path):
    train_path, dev_path = tagging_files(tmp_path / "data", n_train=48, n_dev=16)
    cfg = run_config(tmp_path / "tag_kd", train_path, dev_path, task="token_classification", method="kd", epochs=1,
                     model={"kind": "truncated", "first": 1, "max_length": 48})
    cfg.teacher, cfg.cache_dir = str(hf_dirs["tagger"]), str(tmp_path / "cache")
    student = load_predictor(train(cfg))
    assert student.labels == TAGS and len(student.predict([" ".join(NAMES + PLACES)])[0].tags) == 8


# --- exits on an HF model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["bert", "roberta"])
def test_exits_on_an_hf_model_end_in_its_own_classifier(hf_dirs, key, tmp_path):
    built = build_model(ModelConfig(kind="hf", name=str(hf_dirs[key]), exits="all"), "classification", 2,
                        labels=["neg", "pos"])
    model = built.model.eval()
    assert isinstance(model, MultiExitClassifier) and model.exit_layers == [1, 2]
    expected = _hf_logits(hf_dirs[key], "classification", TEXTS)
    batch = _batch(built.featurizer, "classification", TEXTS)
    with torch.no_grad():
        assert (model.full_logits(batch) - expected).abs().max() < 1e-5
        assert (model(batch)[:, -1] - expected).abs().max() < 1e-5
    save_predictor(tmp_path / "exits", model, built.featurizer, "classification", ["neg", "pos"], built.architecture)
    with torch.no_grad():  # saved and rebuilt from the architecture dict, the last exit is still the HF model
        assert (load_predictor(tmp_path / "exits").model.full_logits(batch) - expected).abs().max() < 1e-5


def test_copy_of_an_hf_teacher_with_exits(hf_dirs):
    teacher = load_hf_predictor(hf_dirs["roberta"])
    source = Source.of(teacher.model, teacher.featurizer.tokenizer)
    built = build_model(ModelConfig(kind="copy", exits=[1, 2], pooling="pooler"), "classification", 2, source=source)
    batch = _batch(built.featurizer, "classification", TEXTS)
    with torch.no_grad():
        assert (built.model.eval().full_logits(batch) - teacher.model(batch)).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"set model\.pooling: pooler"):
        build_model(ModelConfig(kind="copy", exits="all"), "classification", 2, source=source)


def test_two_stage_exits_on_a_frozen_hf_model_through_a_recipe(hf_dirs, tmp_path):
    train_path, dev_path = sentiment_files(tmp_path / "data", n_train=64, n_dev=16)
    model = {"kind": "hf", "name": str(hf_dirs["bert"]), "exits": "all", "freeze": ["backbone", "heads.1"],
             "max_length": 32}
    cfg = run_config(tmp_path / "exits", train_path, dev_path, method="early_exit", model=model, epochs=1)
    saved = load_predictor(train(cfg))
    assert isinstance(saved.model, MultiExitClassifier)
    batch = _batch(saved.featurizer, "classification", TEXTS)
    with torch.no_grad():
        assert (saved.model.full_logits(batch) - _hf_logits(hf_dirs["bert"], "classification", TEXTS)).abs().max() < 1e-5


def test_exits_on_an_hf_model_without_a_pooler_head_raise(hf_dirs):
    with pytest.raises(ValueError, match=r"electra sequence classifier's head .* is not pooler \+ linear"):
        build_model(ModelConfig(kind="hf", name=str(hf_dirs["electra"]), exits="all"), "classification", 2)
    teacher = load_hf_predictor(hf_dirs["electra"])
    with pytest.raises(ValueError, match="kind 'copy' copies the teacher's encoder and classifier"):
        build_model(ModelConfig(kind="copy"), "classification", 2,
                    source=Source.of(teacher.model, teacher.featurizer.tokenizer))


def test_kind_hf_without_exits_is_the_hf_model_and_saves(hf_dirs, tmp_path):
    built = build_model(ModelConfig(kind="hf", name=str(hf_dirs["tagger"])), "token_classification", len(TAGS),
                        labels=TAGS)
    assert isinstance(built.model, HFTaskModel) and built.architecture["type"] == "hf"
    save_predictor(tmp_path / "hf", built.model, built.featurizer, "token_classification", TAGS, built.architecture)
    batch = _batch(built.featurizer, "token_classification", WORDS)
    with torch.no_grad():
        again = load_predictor(tmp_path / "hf").model(batch)
    assert torch.allclose(again, _hf_logits(hf_dirs["tagger"], "token_classification", WORDS), atol=1e-5)
    with pytest.raises(ValueError, match="differ from the data's"):
        build_model(ModelConfig(kind="hf", name=str(hf_dirs["tagger"])), "token_classification", 4,
                    labels=["O", "B-X", "I-X", "B-Y"])


# --- export -------------------------------------------------------------------------------------------------


def _predictor(cfg, task: str, labels: list[str]) -> Predictor:
    built = build_model(cfg, task, len(labels))
    return Predictor(built.model, built.featurizer, task, labels, {"architecture": built.architecture})


EXPORTS = {
    "bert-sequence": (ModelConfig(name="tiny-bert", pooling="pooler", init_seed=1), "classification", "Bert"),
    "roberta-sequence": (ModelConfig(name="tiny-roberta", pooling="pooler"), "classification", "Roberta"),
    "mpnet-pairs": (ModelConfig(name="tiny-mpnet", pooling="pooler"), "pair_classification", "MPNet"),
    "bert-tagger": (ModelConfig(name="tiny-bert"), "token_classification", "Bert"),
    "distilbert-tagger": (ModelConfig(name="tiny-distilbert"), "token_classification", "DistilBert"),
}


@pytest.mark.parametrize("key", list(EXPORTS))
def test_export_round_trip_gives_the_same_logits(key, tmp_path):
    cfg, task, family = EXPORTS[key]
    labels = TAGS if task == "token_classification" else ["neg", "pos", "mixed"]
    predictor = _predictor(cfg, task, labels)
    out = export_hf(predictor, tmp_path / "out")
    kind = "TokenClassification" if task == "token_classification" else "SequenceClassification"
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    hf = auto.from_pretrained(out).eval()
    assert type(hf).__name__ == f"{family}For{kind}"
    assert hf.config.id2label == dict(enumerate(labels)) and hf.config.label2id == {n: i for i, n in enumerate(labels)}
    inputs = WORDS if task == "token_classification" else TEXTS
    if task == "pair_classification":
        pairs = [(t, "a new film") for t in TEXTS]
        enc = AutoTokenizer.from_pretrained(out)([a for a, _ in pairs], [b for _, b in pairs], padding=True,
                                                 return_tensors="pt")
        with torch.no_grad():
            theirs = hf(**enc).logits
        batch = collate(predictor.featurizer.encode([{"text": a, "text_pair": b} for a, b in pairs], task), 0)
    else:
        theirs = _hf_logits(out, task, inputs)
        batch = _batch(predictor.featurizer, task, inputs)
    with torch.no_grad():
        ours = predictor.model(batch)
    assert (ours - theirs).abs().max() < 1e-5 and theirs.abs().max() > 0.01
    back = load_hf_predictor(out, task=task)
    assert back.labels == labels and back.featurizer.max_length == predictor.featurizer.max_length
    examples = predictor.examples_from_inputs([tuple(p) for p in pairs] if task == "pair_classification" else inputs)
    for a, b in zip(back.logits(examples), predictor.logits(examples), strict=True):
        assert np.abs(a - b).max() < 1e-5


def test_export_of_an_hf_model_writes_it_again(hf_dirs, tmp_path):
    out = export_hf(load_hf_predictor(hf_dirs["generic"], labels=["neg", "pos"]), tmp_path / "again")
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "neg", 1: "pos"}
    assert torch.allclose(_hf_logits(out, "classification", TEXTS), _hf_logits(hf_dirs["generic"], "classification",
                                                                                TEXTS), atol=1e-6)


@pytest.mark.parametrize("cfg, task, message", [
    (ModelConfig(kind="ngram", num_buckets=64), "classification", "bag-of-n-grams model has no Hugging Face"),
    (ModelConfig(name="tiny-bert", exits="all"), "classification", "early-exit model has 2 classifiers"),
    (ModelConfig(name="tiny-bert"), "classification", "pools with 'mean' .* --format sentence-transformers"),
    (ModelConfig(name="tiny-bert", pooling="cls"), "classification", "pools with 'cls'"),
    (ModelConfig(name="tiny-bert", crf=True), "token_classification", "CRF tagger .*model.crf: false"),
    (ModelConfig(kind="ngram", num_buckets=64, defer_output=True), "classification", "bag-of-n-grams"),
    (ModelConfig(name="tiny-bert", pooling="pooler", defer_output=True), "classification", "defer output"),
])
def test_export_explains_what_has_no_hf_equivalent(cfg, task, message, tmp_path):
    labels = TAGS if task == "token_classification" else ["neg", "pos"]
    with pytest.raises(ValueError, match=f"cannot export .*{message}"):
        export_hf(_predictor(cfg, task, labels), tmp_path / "out")
    assert not (tmp_path / "out").exists()


ST_EXPORTS = {
    "bert-mean": (ModelConfig(name="tiny-bert", init_seed=1), "classification"),
    "roberta-cls": (ModelConfig(name="tiny-roberta", pooling="cls"), "classification"),
    "distilbert-mean": (ModelConfig(name="tiny-distilbert"), "classification"),
    "mpnet-mean-pairs": (ModelConfig(name="tiny-mpnet"), "pair_classification"),
    "truncated-mean": (ModelConfig(kind="truncated", name="tiny-bert", first=1), "classification"),
}


@pytest.mark.parametrize("key", list(ST_EXPORTS))
def test_sentence_transformers_export_gives_the_same_logits(key, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg, task = ST_EXPORTS[key]
    labels = ["neg", "pos", "mixed"]
    predictor = _predictor(cfg, task, labels)
    assert export_format(predictor) == "sentence-transformers"
    out = export(predictor, tmp_path / "out")
    texts = [*TEXTS, "long " * 400]  # truncated at summon's max_length by both
    inputs = [(t, "a new film") for t in texts] if task == "pair_classification" else texts
    theirs = SentenceTransformer(str(out), device="cpu").encode(inputs, convert_to_tensor=True)
    ours = torch.tensor(np.stack(predictor.logits(predictor.examples_from_inputs(inputs))))
    assert (ours - theirs).abs().max() < 1e-5 and theirs.abs().max() > 0.01
    assert AutoConfig.from_pretrained(out).id2label == dict(enumerate(labels))


def test_auto_export_picks_hf_where_a_classifier_holds_the_model_and_explains_the_rest(tmp_path):
    assert export_format(_predictor(ModelConfig(name="tiny-bert", pooling="pooler"), "classification", ["a", "b"])) == "hf"
    assert export_format(_predictor(ModelConfig(name="tiny-bert"), "token_classification", TAGS)) == "hf"
    with pytest.raises(ValueError, match=r"sentence-transformers holds sentence .* not taggers"):
        export(_predictor(ModelConfig(name="tiny-bert"), "token_classification", TAGS), tmp_path / "t",
               format="sentence-transformers")
    with pytest.raises(ValueError, match="bag-of-n-grams"):
        export(_predictor(ModelConfig(kind="ngram", num_buckets=64), "classification", ["a", "b"]), tmp_path / "n")
    with pytest.raises(ValueError, match="pools with 'pooler', which sentence-transformers' Pooling has no mode"):
        export(_predictor(ModelConfig(name="tiny-bert", pooling="pooler"), "classification", ["a", "b"]),
               tmp_path / "p", format="sentence-transformers")
    assert not any((tmp_path / name).exists() for name in "tnp")


def test_export_without_sentence_transformers_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import raises ImportError
    with pytest.raises(ValueError, match="pip install sentence-transformers"):
        export(_predictor(ModelConfig(name="tiny-bert"), "classification", ["a", "b"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_command_of_a_default_recipe_model_writes_sentence_transformers(tmp_path, capsys):
    built = build_model(ModelConfig(name="tiny-bert"), "classification", 2)
    save_predictor(tmp_path / "model", built.model, built.featurizer, "classification", ["neg", "pos"],
                   built.architecture)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    assert "SentenceTransformer(" in capsys.readouterr().out
    assert (tmp_path / "out" / "modules.json").is_file()
    assert main(["export", str(tmp_path / "model"), "--format", "hf", str(tmp_path / "hf")]) == 2
    assert "--format sentence-transformers" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_export_command(tmp_path, capsys):
    built = build_model(ModelConfig(name="tiny-bert", pooling="pooler"), "classification", 2)
    save_predictor(tmp_path / "model", built.model, built.featurizer, "classification", ["neg", "pos"],
                   built.architecture)
    parser = argparse.ArgumentParser(prog="summon")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(tmp_path / "model"), "--format", "hf", str(tmp_path / "out")])
    assert command(args)(args) == 0
    assert "from_pretrained" in capsys.readouterr().out
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").config.id2label[1] == "pos"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "m", "--format", "onnx", "o"])
    from summon.cli.export import FORMATS
    from summon.predictors.st_export import EXPORT_FORMATS

    assert FORMATS == EXPORT_FORMATS  # the light parser's copy of the formats stays the library's


# --- HF models through the facade and as a cascade stage ------------------------------------------------------


def test_summon_load_reads_an_hf_folder_and_an_hf_teacher_ends_a_saved_cascade(hf_dirs, tmp_path):
    teacher = summon.load(hf_dirs["bert"], device="cpu")
    assert isinstance(teacher, Predictor) and teacher.labels == ["neg", "pos"]
    want = _hf_logits(hf_dirs["bert"], "classification", TEXTS).softmax(-1).numpy()
    np.testing.assert_allclose([p.probs for p in teacher.predict(TEXTS)], want, atol=1e-5)
    built = build_model(ModelConfig(kind="ngram", num_buckets=64, embed_dim=4), "classification", 2)
    student = tmp_path / "student"
    Predictor(built.model, built.featurizer, "classification", ["neg", "pos"]).save(
        student, architecture=built.architecture)
    cascade = summon.cascade([str(student), str(hf_dirs["bert"])], out=tmp_path / "cascade")
    assert cascade.num_stages == 2
    loaded = summon.load(tmp_path / "cascade", device="cpu")
    assert isinstance(loaded, CascadePredictor)
    full = loaded.predict(TEXTS, threshold=float("inf"))
    assert [p.stage for p in full] == [1] * len(TEXTS)
    np.testing.assert_allclose([p.probs for p in full], want, atol=1e-5)
