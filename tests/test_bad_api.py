"""Bad calls to the Python API (``summon.load``, ``predict``, ``calibrate``, ``evaluate``, ``train``, ``cascade``):
each raises a ``TypeError`` or ``ValueError`` that says what was given and what to pass, naming the input index,
key or label lists; odd but valid inputs get the same answer batched as one by one.

Tiny untrained models saved once per module: two n-gram predictors, a calibrated cascade of them, and a
tiny-bert (a real WordPiece tokenizer, max_length 32) for the pre-tokenisation cut.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import summon
import summon.data.features as features
from summon.data.spec import TaskData
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor
from summon.predictors.saved import MANIFEST

LABELS = ["neg", "pos"]
WORDS = "good bad great awful fine dull fun boring nice poor film plot story".split()
ODD = ["", "   ", "\t\n", "!!!", "é", "日本語の映画", "emoji 🎬🍿", "a" * 5000, "word " * 400, "new\nline",
       "\u200b zero width", "good"]


def _rows(n: int, seed: int) -> list[dict]:
    gen = np.random.default_rng(seed)
    texts = [" ".join(gen.choice(WORDS, size=int(gen.integers(1, 8)))) for _ in range(n)]
    return [{"text": t, "label": int(any(w in t for w in ("good", "great", "fun")))} for t in texts]


def _data(n: int = 120, seed: int = 0, labels: list[str] = LABELS) -> TaskData:
    return TaskData("classification", labels, _rows(n, seed), f"synthetic:{seed}")


def _save(cfg: ModelConfig, directory) -> str:
    built = build_model(cfg, "classification", len(LABELS))
    Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
        directory, architecture=built.architecture)
    return str(directory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_api")
    first = _save(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=1), root / "first")
    second = _save(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=2), root / "second")
    summon.cascade([first, second], out=root / "cascade", device="cpu")
    summon.calibrate(str(root / "cascade"), _data(), max_drop=0.05, latency=False)
    bert = _save(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=3), root / "bert")
    return {"root": root, "plain": first, "cascade": str(root / "cascade"), "bert": bert}


@pytest.fixture(scope="module")
def plain(saved):
    return summon.load(saved["plain"], device="cpu")


@pytest.fixture(scope="module")
def staged(saved):
    return summon.load(saved["cascade"], device="cpu")


# --- summon.load ----------------------------------------------------------------------------------------------


def test_load_of_a_missing_path_names_it(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nothing'}: no such predictor directory"):
        summon.load(tmp_path / "nothing")


def test_load_of_a_file_names_the_folder_to_give(saved):
    manifest = f"{saved['plain']}/{MANIFEST}"
    with pytest.raises(ValueError, match=f"{manifest} is a file; .* perhaps {saved['plain']}"):
        summon.load(manifest)


def test_load_of_none_is_a_type_error():
    with pytest.raises(TypeError, match=r"summon.load: expected a predictor folder \(a str or Path\) .* got NoneType"):
        summon.load(None)


# --- predict: the container -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "staged"])
def test_predict_of_a_mapping_is_refused_not_its_keys_predicted(request, which):
    with pytest.raises(TypeError, match=r"inputs: got a dict \(keys 'text'\) where a list of inputs is expected"):
        request.getfixturevalue(which).predict({"text": "a fine film"})


def test_predict_of_none_is_a_type_error(plain):
    with pytest.raises(TypeError, match=r"inputs: expected a list of inputs .* got NoneType"):
        plain.predict(None)


def test_predict_of_a_number_is_a_type_error(plain):
    with pytest.raises(TypeError, match=r"inputs: expected a list of inputs .* got int"):
        plain.predict(42)


def test_predict_of_bytes_is_a_type_error_not_their_byte_values(plain):
    with pytest.raises(TypeError, match="got bytes"):
        plain.predict(b"a fine film")


@pytest.mark.parametrize("which", ["plain", "staged"])
def test_predict_of_an_empty_list_is_an_empty_list(request, which):
    assert request.getfixturevalue(which).predict([]) == []


# --- predict: the inputs --------------------------------------------------------------------------------------


def test_a_number_among_the_inputs_names_its_index(plain):
    with pytest.raises(ValueError, match=r"^input 2: expected a string, got int$"):
        plain.predict(["fine", "good", 7])


def test_a_row_among_the_inputs_says_to_pass_its_text(staged):
    with pytest.raises(ValueError, match=r"input 1: expected a string, got dict; pass the text itself"):
        staged.predict(["fine", {"text": "good"}])


@pytest.mark.parametrize("which", ["plain", "staged"])
def test_a_lone_surrogate_names_its_index(request, which):
    with pytest.raises(ValueError, match=r"^input 1: invalid Unicode at character 7: a lone surrogate U\+D800"):
        request.getfixturevalue(which).predict(["fine", "split \ud800 emoji"])


def test_a_surrogate_escaped_byte_names_its_index_and_the_byte(plain):
    with pytest.raises(ValueError, match=r"^input 0: invalid Unicode at character 4: the byte 0xe9, which is not UTF-8"):
        plain.predict(["caf\udce9"])


def test_a_pair_on_a_single_text_task_is_refused(plain):
    with pytest.raises(ValueError, match=r"^input 0: expected a string, got tuple; a \(text, text_pair\) pair is an "
                                         "input of a pair task"):
        plain.predict(("the movie", "a film"))


def test_a_very_long_text_is_cut_with_one_warning_and_answered(saved, monkeypatch, caplog):
    monkeypatch.setattr(features, "_WARNED_LONG", False)  # the cut is reported once per process
    bert = summon.load(saved["bert"], device="cpu")
    long = "fine " * 20_000  # 100,000 characters; max_length 32 keeps 3,200
    with caplog.at_level(logging.WARNING, logger="summon.data.features"):
        first = bert.predict([long, "fine"])
        again = bert.predict([long])
    cuts = [r for r in caplog.records if "before tokenisation" in r.getMessage()]
    assert len(cuts) == 1 and "100000 characters was cut to 3200" in cuts[0].getMessage()
    cut = bert.predict(["fine " * 640])[0].probs  # the same answer, up to float rounding across batch shapes
    np.testing.assert_allclose(first[0].probs, again[0].probs, atol=1e-6)
    np.testing.assert_allclose(again[0].probs, cut, atol=1e-6)


# --- predict: odd but valid inputs answer the same batched as one by one ------------------------------------


def test_plain_predict_batched_equals_one_by_one_on_odd_inputs(plain):
    batched = plain.predict(ODD, batch_size=4)
    single = [plain.predict(text)[0] for text in ODD]
    assert [p.label for p in batched] == [p.label for p in single]
    np.testing.assert_allclose([p.probs for p in batched], [p.probs for p in single], atol=1e-6)


def test_staged_predict_batched_equals_one_by_one_on_odd_inputs(staged):
    batched = staged.predict(ODD, threshold=0.5, batch_size=4)
    single = [staged.predict([text], threshold=0.5)[0] for text in ODD]
    assert [(p.label, p.stage) for p in batched] == [(p.label, p.stage) for p in single]
    np.testing.assert_allclose([p.probs for p in batched], [p.probs for p in single], atol=1e-6)


def test_whitespace_only_text_answers_a_probability_distribution(plain):
    (answer,) = plain.predict(["   "])
    assert answer.label in LABELS and sum(answer.probs) == pytest.approx(1.0)


def test_staged_predict_at_a_nan_threshold_is_refused(staged):
    with pytest.raises(ValueError, match="threshold must be"):
        staged.predict(["fine"], threshold=float("nan"))


# --- calibrate and evaluate: data that does not fit ----------------------------------------------------------


def test_calibrate_on_data_with_other_labels_names_both_lists(saved):
    before = (saved["root"] / "cascade" / MANIFEST).read_bytes()
    with pytest.raises(ValueError, match=r"the data's labels are \[bad, good\] but the predictor predicts "
                                         r"\[neg, pos\]"):
        summon.calibrate(saved["cascade"], _data(labels=["bad", "good"]), latency=False)
    assert (saved["root"] / "cascade" / MANIFEST).read_bytes() == before


def test_calibrate_on_too_few_rows_is_refused_and_keeps_the_calibration(saved):
    before = json.loads((saved["root"] / "cascade" / MANIFEST).read_text())["adaptive"]
    with pytest.raises(ValueError, match="2 calibration rows are too few"):
        summon.calibrate(saved["cascade"], _data(n=2), latency=False)
    assert json.loads((saved["root"] / "cascade" / MANIFEST).read_text())["adaptive"] == before


def test_calibrate_of_a_plain_predictor_says_what_to_do(saved):
    with pytest.raises(ValueError, match="has no stages to calibrate"):
        summon.calibrate(saved["plain"], _data(), latency=False)


def test_evaluate_on_data_with_other_labels_names_both_lists(saved):
    with pytest.raises(ValueError, match=r"the data's labels are \[a, b\] but the predictor predicts \[neg, pos\]"):
        summon.evaluate([saved["plain"]], _data(labels=["a", "b"]), latency=False)


def test_evaluate_of_one_path_not_in_a_list_is_a_type_error(saved):
    with pytest.raises(TypeError, match=r"summon.evaluate\(predictors\): expected a list, got str; wrap a single one"):
        summon.evaluate(saved["plain"], _data(), latency=False)


def test_evaluate_with_a_name_per_predictor_missing_is_refused(saved):
    with pytest.raises(ValueError, match="1 names for 2 predictors"):
        summon.evaluate([saved["plain"], saved["plain"]], _data(), names=["only one"], latency=False)


def test_cascade_of_one_path_not_in_a_list_is_a_type_error(saved):
    with pytest.raises(TypeError, match=r"summon.cascade\(stages\): expected a list, got str"):
        summon.cascade(saved["plain"])


# --- train: recipes and overrides ---------------------------------------------------------------------------


def test_train_of_an_unknown_recipe_suggests_the_close_one():
    with pytest.raises(ValueError, match=r"no shipped recipe 'sst2_finetun'\. Did you mean 'sst2_finetune'"):
        summon.train("sst2_finetun")


def test_train_with_a_bad_override_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"train\.lrr: unknown key \(did you mean 'lr'\?\)"):
        summon.train("sst2_finetune", train__lrr=1e-4, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


# --- tagging inputs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger():
    built = build_model(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=4),
                        "token_classification", 3)
    return Predictor(built.model, built.featurizer, "token_classification", ["O", "B-PER", "I-PER"],
                     {"architecture": built.architecture})


def test_a_blank_word_in_a_word_list_is_refused_naming_it(tagger):
    """A blank word has no sub-token to carry its tag: its answer would be made up."""
    with pytest.raises(ValueError, match=r"^input 1: word 2 is blank \(' '\)"):
        tagger.predict([["man", "city"], ["man", "and", " ", "woman"]])


def test_a_row_given_to_a_tagger_is_refused_not_its_keys_tagged(tagger):
    with pytest.raises(ValueError, match=r"^input 0: a tagging task needs a text or a list of words"):
        tagger.predict([{"tokens": ["man", "city"]}])
