"""Tests for saved predictors (summon.predictors.predictor): save/load round trips, predictions, spans and load errors.

Only tiny random encoders and small n-gram models are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import summon
from summon.data.words import entity_spans
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import MANIFEST, WEIGHTS, Predictor
from summon.predictors.saved import update_manifest

TEXTS = ["the movie was great fun", "bad", "the stock market won a new election this year , really",
         "i love this film", "worst acting ever , so boring and too long", "news"]
PAIRS = [("the movie was great", "i love this film"), ("bad", "good"),
         ("the team won the game", "the team lost the game this year")]
SENTENCES = ["Ada Lovelace met Bob in London", "the bank in Paris", "Bob"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

CASES = {
    "bert-pooler": (ModelConfig(name="tiny-bert", pooling="pooler"), "classification", ["neg", "pos", "mixed"], TEXTS),
    "mpnet-pair": (ModelConfig(name="tiny-mpnet"), "pair_classification", ["yes", "maybe", "no"], PAIRS),
    "bert-pair": (ModelConfig(name="tiny-bert", pooling="cls"), "pair_classification", ["same", "other"], PAIRS),
    "ngram": (ModelConfig(kind="ngram", num_buckets=4096, embed_dim=16, hidden_dim=8), "classification",
              ["neg", "pos"], TEXTS),
    "distilbert-tags": (ModelConfig(name="tiny-distilbert"), "token_classification", TAGS, SENTENCES),
}


def _predictor(key: str, **changes) -> Predictor:
    cfg, task, labels, _ = CASES[key]
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    built = build_model(cfg, task, len(labels))
    return Predictor(built.model, built.featurizer, task, labels, {"architecture": built.architecture})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Predictor, Path]]:
    """Each case built and saved once; tests that damage a directory work on a copy (see ``_copy``)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for key in CASES:
        predictor = _predictor(key)
        out[key] = (predictor, predictor.save(root / key))
    return out


def _copy(saved, key: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[key][1], tmp_path / key))


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _assert_same_predictions(got, want, atol: float) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.label == b.label and a.label_id == b.label_id
        assert a.tags == b.tags and a.spans == b.spans
        if b.probs is not None:
            np.testing.assert_allclose(a.probs, b.probs, atol=atol, rtol=0)


# --- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(CASES))
def test_save_load_round_trip_predicts_the_same(saved, key):
    original, path = saved[key]
    inputs = CASES[key][3]
    loaded = summon.load(path)
    assert loaded.task == original.task and loaded.labels == original.labels
    want = original.model.state_dict()
    got = loaded.model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    _assert_same_predictions(loaded.predict(inputs), original.predict(inputs), atol=1e-6)
    examples = original.examples_from_inputs(inputs)
    for a, b in zip(loaded.logits(examples), original.logits(examples), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("key", list(CASES))
def test_manifest_describes_the_predictor(saved, key):
    original, path = saved[key]
    manifest = _manifest(path)
    assert manifest["format"] == "summon-predictor" and manifest["format_version"] == 1
    assert manifest["summon_version"] == summon.__version__
    assert manifest["task"] == CASES[key][1]
    assert manifest["labels"] == CASES[key][2]
    assert manifest["architecture"] == json.loads(json.dumps(original.manifest["architecture"]))
    assert manifest["featurizer"] == original.featurizer.to_config()
    every = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)  # weights and tokenizer files
    assert manifest["files"] == {p.relative_to(path).as_posix(): {"bytes": p.stat().st_size,
                                                                  "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                 for p in every}
    assert WEIGHTS in manifest["files"]
    assert (path / "tokenizer").is_dir() == (key != "ngram")


def test_loaded_fingerprint_is_the_weights_hash(saved):
    _, path = saved["ngram"]
    assert summon.load(path).fingerprint == _manifest(path)["files"][WEIGHTS]["sha256"]


def test_unsaved_fingerprint_depends_on_the_weights():
    a, b, c = _predictor("ngram"), _predictor("ngram"), _predictor("ngram", init_seed=1)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


# --- batching -----------------------------------------------------------------------------------------

LONG = " ".join(["the market price of the company stock was very good this year"] * 5)
MIXED = ["bad", LONG, "the movie was great fun", "no", LONG + " and more news", "i hate it", "fine", "the news"]


@pytest.mark.parametrize("key, inputs", [
    ("bert-pooler", MIXED),
    ("ngram", MIXED),
    ("mpnet-pair", [(t, MIXED[-1 - i]) for i, t in enumerate(MIXED)]),
    ("bert-pair", [(t, MIXED[-1 - i]) for i, t in enumerate(MIXED)]),
    ("distilbert-tags", MIXED),
])
def test_batched_predictions_equal_one_by_one(saved, key, inputs):
    predictor = saved[key][0]
    batched = predictor.predict(inputs, batch_size=4)
    alone = [predictor.predict([item], batch_size=4)[0] for item in inputs]
    _assert_same_predictions(batched, alone, atol=1e-5)
    examples = predictor.examples_from_inputs(inputs)
    rows = predictor.logits(examples, batch_size=4)
    for item, row in zip(examples, rows, strict=True):
        np.testing.assert_allclose(row, predictor.logits([item])[0], atol=1e-5, rtol=0)


# --- token classification -----------------------------------------------------------------------------


def _tagger(always: str, **changes) -> Predictor:
    """A tagging predictor whose head predicts ``always`` for every sub-token."""
    predictor = _predictor("distilbert-tags", **changes)
    classifier = predictor.model.head.classifier
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.bias[TAGS.index(always)] = 10.0
    return predictor


def test_tagging_one_span_per_word_with_character_offsets():
    text = "  Ada   Lovelace met Bob, in  London "
    (pred,) = _tagger("B-PER").predict([text])
    words = ["Ada", "Lovelace", "met", "Bob", ",", "in", "London"]  # punctuation is a word of its own
    assert pred.tokens == words and pred.tags == ["B-PER"] * len(words)
    assert [s["text"] for s in pred.spans] == words
    for span in pred.spans:
        assert span["label"] == "PER"
        assert text[span["start"]:span["end"]] == span["text"]


def test_tagging_continued_span_covers_the_text_between_words():
    text = "  Ada   Lovelace met Bob "
    (pred,) = _tagger("I-PER").predict([text])
    assert pred.spans == [{"label": "PER", "start": 2, "end": 24, "text": "Ada   Lovelace met Bob"}]
    assert text[2:24] == "Ada   Lovelace met Bob"


def test_tagging_pre_split_words():
    (pred,) = _tagger("I-LOC").predict([["New", "York"]])
    assert pred.tags == ["I-LOC", "I-LOC"]
    assert pred.spans == [{"label": "LOC", "start": 0, "end": 8, "text": "New York"}]


def test_tagging_words_cut_by_truncation_get_the_first_label():
    words = ("the bank in the city " * 4).split()  # all in the tiny vocabulary: one sub-token each
    (pred,) = _tagger("B-LOC", max_length=8).predict([" ".join(words)])
    assert len(pred.tags) == len(words)
    assert pred.tags[:6] == ["B-LOC"] * 6  # [CLS] + 6 words + [SEP] fit in 8 sub-tokens
    assert pred.tags[6:] == ["O"] * (len(words) - 6)


def test_tagging_a_single_string_input():
    preds = _tagger("B-PER").predict("Ada met Bob")
    assert len(preds) == 1 and preds[0].tags == ["B-PER"] * 3


def test_entity_spans_bio():
    text = "Ada Lovelace met Bob in London"
    tags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]
    assert entity_spans(text, text.split(), tags) == [
        {"label": "PER", "start": 0, "end": 12, "text": "Ada Lovelace"},
        {"label": "PER", "start": 17, "end": 20, "text": "Bob"},
        {"label": "LOC", "start": 24, "end": 30, "text": "London"},
    ]


def test_entity_spans_i_without_b_starts_a_span():
    text = "we met Ada Lovelace today"
    tags = ["O", "O", "I-PER", "I-PER", "O"]
    assert entity_spans(text, text.split(), tags) == [{"label": "PER", "start": 7, "end": 19, "text": "Ada Lovelace"}]


def test_entity_spans_adjacent_b_tags_are_separate():
    text = "Ada Bob"
    assert entity_spans(text, text.split(), ["B-PER", "B-PER"]) == [
        {"label": "PER", "start": 0, "end": 3, "text": "Ada"},
        {"label": "PER", "start": 4, "end": 7, "text": "Bob"},
    ]


def test_entity_spans_do_not_continue_across_labels_or_gaps():
    text = "Ada Paris Bob x Lee"
    tags = ["B-PER", "I-LOC", "I-PER", "O", "I-PER"]
    assert [(s["label"], s["text"]) for s in entity_spans(text, text.split(), tags)] == [
        ("PER", "Ada"), ("LOC", "Paris"), ("PER", "Bob"), ("PER", "Lee")]


def test_entity_spans_find_repeated_words_left_to_right():
    text = "New York and New York"
    tags = ["O", "O", "O", "B-LOC", "I-LOC"]
    assert entity_spans(text, text.split(), tags) == [{"label": "LOC", "start": 13, "end": 21, "text": "New York"}]


# --- load errors --------------------------------------------------------------------------------------


def test_load_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="no such predictor directory") as err:
        summon.load(missing)
    assert str(missing) in str(err.value)


def test_load_directory_without_manifest(tmp_path):
    with pytest.raises(ValueError, match=r"manifest\.json: missing"):
        summon.load(tmp_path)


def test_load_manifest_not_json(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    (path / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest\.json: unreadable manifest"):
        summon.load(path)


def test_load_manifest_of_another_format(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    _write_manifest(path, {**_manifest(path), "format": "other-tool"})
    with pytest.raises(ValueError, match=r"manifest\.json: not a summon predictor manifest \(format 'other-tool'\)"):
        summon.load(path)


def test_load_manifest_that_is_not_an_object(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    (path / MANIFEST).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a summon predictor manifest"):
        summon.load(path)


def test_load_newer_format_version(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    _write_manifest(path, {**_manifest(path), "format_version": 2})
    with pytest.raises(ValueError, match=r"manifest\.json: format version 2 is newer.*upgrade summon"):
        summon.load(path)


def test_load_missing_weights(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    (path / WEIGHTS).unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors: missing"):
        summon.load(path)


def test_load_truncated_weights(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: \d+ bytes but the manifest says \d+: the file is truncated"):
        summon.load(path)


def test_load_weights_with_one_byte_flipped(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: contents do not match the manifest's sha256"):
        summon.load(path)


def test_load_weights_of_another_predictor_of_the_same_size(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    other = _predictor("ngram", init_seed=7).save(tmp_path / "other")
    assert (other / WEIGHTS).stat().st_size == (path / WEIGHTS).stat().st_size
    shutil.copyfile(other / WEIGHTS, path / WEIGHTS)
    with pytest.raises(ValueError, match=r"model\.safetensors: contents do not match.*another predictor"):
        summon.load(path)


def test_load_weights_that_are_not_safetensors(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    garbage = b"\x00" * 64
    (path / WEIGHTS).write_bytes(garbage)
    manifest = _manifest(path)
    manifest["files"][WEIGHTS] = {"bytes": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}
    _write_manifest(path, manifest)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        summon.load(path)


def test_load_missing_tokenizer_folder(saved, tmp_path):
    path = _copy(saved, "bert-pooler", tmp_path)
    shutil.rmtree(path / "tokenizer")
    with pytest.raises(ValueError, match=r"tokenizer: missing tokenizer folder"):
        summon.load(path)


def _with_architecture(path: Path, **changes) -> None:
    manifest = _manifest(path)
    for key, value in changes.items():
        if key in manifest["architecture"]:
            manifest["architecture"][key] = value
        else:
            manifest["architecture"]["hf_config"][key] = value
    weights = path / WEIGHTS  # unchanged, so the files entry still holds: only the fit check can fire
    assert manifest["files"][WEIGHTS] == {"bytes": weights.stat().st_size,
                                          "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    _write_manifest(path, manifest)


def test_load_weights_with_a_different_number_of_labels(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    _with_architecture(path, num_labels=3)
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not fit.*shape mismatch") as err:
        summon.load(path)
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)


def test_load_weights_with_more_layers_than_the_architecture(saved, tmp_path):
    path = _copy(saved, "bert-pooler", tmp_path)
    _with_architecture(path, num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"weights do not fit.*unexpected \['backbone\.model\.encoder\.layer\.1\."):
        summon.load(path)


# --- no unpickling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["bert-pooler", "ngram", "distilbert-tags"])
def test_loading_never_unpickles(saved, key, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    original, path = saved[key]
    inputs = CASES[key][3]
    loaded = summon.load(path)
    _assert_same_predictions(loaded.predict(inputs), original.predict(inputs), atol=1e-6)


# --- manifest updates and re-saving -------------------------------------------------------------------


def test_update_manifest_merges_keys_and_keeps_the_rest(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    before = _manifest(path)
    returned = update_manifest(path, metrics={"accuracy": np.float32(0.5)}, costs={"ms": 1.5})
    after = _manifest(path)
    assert returned == after
    assert after["metrics"] == {"accuracy": 0.5} and after["costs"] == {"ms": 1.5}
    assert {k: v for k, v in after.items() if k not in ("metrics", "costs")} == before
    update_manifest(path, metrics={"accuracy": 0.75})
    after = _manifest(path)
    assert after["metrics"] == {"accuracy": 0.75} and after["costs"] == {"ms": 1.5}
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, WEIGHTS])
    assert summon.load(path).manifest["metrics"] == {"accuracy": 0.75}


def test_update_manifest_of_a_missing_predictor_raises(tmp_path):
    with pytest.raises(ValueError, match="no such predictor directory"):
        update_manifest(tmp_path / "nope", metrics={})


def test_saving_over_an_existing_directory_replaces_it(saved, tmp_path):
    path = _copy(saved, "bert-pooler", tmp_path)
    assert (path / "tokenizer").is_dir()
    replacement = _predictor("ngram", init_seed=3)
    assert replacement.save(path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-pooler"]  # no .saving / .old leftovers
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, WEIGHTS])  # the old tokenizer is gone
    loaded = summon.load(path)
    assert loaded.manifest["architecture"]["type"] == "ngram" and loaded.labels == ["neg", "pos"]
    _assert_same_predictions(loaded.predict(TEXTS), replacement.predict(TEXTS), atol=1e-6)


def test_resaving_a_loaded_predictor_keeps_extra_keys(saved, tmp_path):
    path = _copy(saved, "ngram", tmp_path)
    update_manifest(path, metrics={"accuracy": 0.9}, training={"steps": 3})
    again = summon.load(path).save(tmp_path / "again")
    manifest = _manifest(again)
    assert manifest["metrics"] == {"accuracy": 0.9} and manifest["training"] == {"steps": 3}
    assert manifest["files"] == _manifest(path)["files"]  # same weights, same hash
    assert summon.load(again).fingerprint == summon.load(path).fingerprint


def test_saving_without_an_architecture_raises(tmp_path):
    predictor = _predictor("ngram")
    bare = Predictor(predictor.model, predictor.featurizer, "classification", ["neg", "pos"])
    with pytest.raises(ValueError, match="architecture"):
        bare.save(tmp_path / "p")
    assert not any(tmp_path.iterdir())


# --- input validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs", ["a plain sentence", ["a plain sentence"], [("only one",)],
                                    [("a", "b", "c")], [("a", 3)]])
def test_pair_predictor_rejects_non_pairs(saved, inputs):
    with pytest.raises(ValueError, match=r"input 0: a pair task needs \(text, text_pair\) tuples"):
        saved["mpnet-pair"][0].predict(inputs)


def test_pair_predictor_rejects_a_two_character_string(saved):
    with pytest.raises(ValueError, match="pair task"):
        saved["mpnet-pair"][0].predict("hi")


def test_pair_predictor_accepts_a_single_tuple_and_lists(saved):
    predictor = saved["mpnet-pair"][0]
    (one,) = predictor.predict(("the movie", "a film"))
    (two,) = predictor.predict([["the movie", "a film"]])
    assert one.label == two.label and one.probs == two.probs


@pytest.mark.parametrize("key", ["bert-pooler", "ngram"])
@pytest.mark.parametrize("item", [3, None, ("a", "b"), b"bytes"])
def test_classification_predictor_rejects_non_strings(saved, key, item):
    with pytest.raises(ValueError, match="input 1: expected a string"):
        saved[key][0].predict(["fine", item])


def test_classification_predictor_accepts_a_single_string(saved):
    predictor = saved["bert-pooler"][0]
    (one,) = predictor.predict("the movie was great fun")
    assert one.probs == predictor.predict(["the movie was great fun"])[0].probs
    assert sum(one.probs) == pytest.approx(1.0) and one.label == predictor.labels[one.label_id]


def test_tagging_predictor_rejects_empty_inputs(saved):
    with pytest.raises(ValueError, match="input 1 is empty"):
        saved["distilbert-tags"][0].predict(["Bob", "   "])
