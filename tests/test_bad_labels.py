"""Bad-input suite, round three (issue 25), classes 3 and 4: data meets the model, from files too; labels that
look the same are one label, or a clear error.

One test per case. Data files are a few rows in ``tmp_path``; models are tiny untrained n-gram predictors
(``save_ngram``). A refused ``calibrate`` leaves the predictor's manifest byte for byte as it was.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_bad_inputs_r3 import LABELS, data_spec, fails, rows_file, save_ngram
from toy import sentiment_rows

import summon
from summon.adaptive.cascade import build_cascade
from summon.data import DatasetSpec, TaskData, load_split
from summon.data.labelset import label_key
from summon.evaluation.runner import load_for
from summon.predictors.saved import MANIFEST

BBC = ["business", "entertainment", "politics", "sport", "tech"]
AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]
NFC, NFD = "caf\u00e9", "cafe\u0301"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_labels")
    return {"ngram": save_ngram(root / "ngram"), "bbc": save_ngram(root / "bbc", labels=BBC)}


def save_cascade(directory: Path, labels: list[str]) -> str:
    """A two-stage cascade of n-gram predictors with ``labels``: a kind that calibrates."""
    stages = [save_ngram(directory.parent / f"{directory.name}_stage{i}", labels=labels) for i in (0, 1)]
    build_cascade(stages).save(directory)
    return str(directory)


@pytest.fixture
def bbc_copy(tmp_path):
    """A fresh BBC-labelled cascade that a test may try to calibrate."""
    return save_cascade(tmp_path / "bbc", BBC)


def texts(labels: list) -> list[dict]:
    return [{"text": f"some words of row {i}", "label": label} for i, label in enumerate(labels)]


def refused_calibrate(capsys, model: str, data: str) -> str:
    """``summon calibrate`` refused: exit 2, and the manifest (and every file) byte for byte as before."""
    before = {p.name: p.read_bytes() for p in Path(model).iterdir() if p.is_file()}
    err = fails(capsys, "calibrate", model, "--data", data, "--no-latency")
    assert {p.name: p.read_bytes() for p in Path(model).iterdir() if p.is_file()} == before
    assert (Path(model) / MANIFEST).read_bytes() == before[MANIFEST]
    return err


# --- class 3: data meets the model ----------------------------------------------------------------


def test_eval_of_another_tasks_names_names_both_label_sets_and_the_file(models, tmp_path, capsys):
    path = rows_file(tmp_path / "ag.jsonl", texts(AG_NEWS * 3))
    err = fails(capsys, "eval", models["bbc"], "--data", path, "--no-latency")
    assert err.startswith(f"{path}:1: label 'World' is not in the model's label set [" + ", ".join(BBC) + "]")
    assert "Sports (line 2)" in err and "The data's labels are [World, Sports, Business, Sci/Tech]" in err


def test_calibrate_on_another_tasks_names_writes_nothing(bbc_copy, tmp_path, capsys):
    path = rows_file(tmp_path / "ag.jsonl", texts(AG_NEWS * 3))
    err = refused_calibrate(capsys, bbc_copy, path)
    assert path in err and "World" in err and "business" in err


def test_eval_of_ids_beyond_the_models_labels_names_both(models, tmp_path, capsys):
    path = rows_file(tmp_path / "ids.jsonl", texts([0, 1, 2, 3] * 3))
    err = fails(capsys, "eval", models["ngram"], "--data", path, "--no-latency")
    assert f"{path}:4" in err and "label 3" in err and "2 labels [neg, pos]" in err and "ids run 0-3" in err


def test_calibrate_on_ids_beyond_the_models_labels_writes_nothing(bbc_copy, tmp_path, capsys):
    path = rows_file(tmp_path / "ids.jsonl", texts(list(range(8)) * 2))
    err = refused_calibrate(capsys, bbc_copy, path)
    assert f"{path}:8" in err and "label 7" in err and "5 labels" in err


def test_eval_of_ag_news_ids_on_a_bbc_model_is_refused(models, tmp_path, capsys):
    """AG News rows (ids 0-3) for a BBC News model (5 labels): every id is in range, but the ids stop short."""
    path = rows_file(tmp_path / "ag_ids.jsonl", texts([0, 1, 2, 3] * 12))
    err = fails(capsys, "eval", models["bbc"], "--data", path, "--no-latency")
    assert path in err and "class ids 0-3 (4 classes)" in err and "5 labels [business" in err and "id 4" in err


def test_calibrate_on_ag_news_ids_writes_nothing(bbc_copy, tmp_path, capsys):
    path = rows_file(tmp_path / "ag_ids.jsonl", texts([0, 1, 2, 3] * 12))
    err = refused_calibrate(capsys, bbc_copy, path)
    assert "class ids 0-3" in err and "5 labels" in err


def test_an_id_split_of_one_class_is_warned_about_not_refused(models, tmp_path, caplog):
    """Rows of one class (a rare class absent from a small split) may be genuine: a warning, not a refusal."""
    path = rows_file(tmp_path / "one.jsonl", texts([0] * 20))
    predictor = summon.load(models["ngram"], device="cpu")
    with caplog.at_level(logging.WARNING):
        data = load_for(predictor, data_spec(path))
    assert data.labels == LABELS and [ex["label"] for ex in data.examples] == [0] * 20
    assert "no row of 20 has id 1" in caplog.text


def test_a_small_id_split_lacking_a_class_is_warned_about_not_refused(models, tmp_path, caplog):
    path = rows_file(tmp_path / "few.jsonl", texts([0, 1, 2, 3] * 2))
    with caplog.at_level(logging.WARNING):
        data = load_for(summon.load(models["bbc"], device="cpu"), data_spec(path))
    assert data.labels == BBC and "no row of 8 has id 4" in caplog.text


def test_ag_news_ids_of_a_24_row_split_are_refused_for_a_bbc_model(models, tmp_path, capsys):
    path = rows_file(tmp_path / "ag24.jsonl", texts([0, 1, 2, 3] * 6))
    err = fails(capsys, "eval", models["bbc"], "--data", path, "--no-latency")
    assert "class ids 0-3 (4 classes)" in err and "no row of 24 has id 4" in err


def test_a_huge_id_is_refused_against_the_model_without_allocating(models, tmp_path, capsys):
    path = rows_file(tmp_path / "huge.csv", [])
    Path(path).write_text("text,label\ngood,0\nbad,1\nfine,100000000\n", encoding="utf-8")
    err = fails(capsys, "eval", models["ngram"], "--data", path, "--no-latency")
    assert f"{path}:4" in err and "label 100000000" in err and "[neg, pos]" in err


def test_a_spec_whose_labels_are_not_the_models_is_refused(models, tmp_path):
    path = rows_file(tmp_path / "ids.jsonl", texts([0, 1, 0, 1]))
    predictor = summon.load(models["ngram"], device="cpu")
    with pytest.raises(ValueError, match=r"\[good, bad\] but \[neg, pos\] are expected \(the model's\)"):
        load_for(predictor, data_spec(path, labels=["good", "bad"]))


def test_a_spec_naming_the_models_labels_in_another_order_is_renumbered(models, tmp_path):
    path = rows_file(tmp_path / "ids.jsonl", texts([0, 1, 1]))
    predictor = summon.load(models["ngram"], device="cpu")
    data = load_for(predictor, data_spec(path, labels=["pos", "neg"]))
    assert data.labels == LABELS and [ex["label"] for ex in data.examples] == [1, 0, 0]


def test_names_in_the_models_set_still_load(models, tmp_path):
    path = rows_file(tmp_path / "ok.jsonl", sentiment_rows(6, 0))
    predictor = summon.load(models["ngram"], device="cpu")
    data = load_for(predictor, data_spec(path))
    assert data.labels == LABELS and {ex["label"] for ex in data.examples} <= {0, 1}


# --- class 4: labels that look the same ------------------------------------------------------------


def test_nfc_and_nfd_spellings_of_one_label_are_refused_naming_both(tmp_path):
    path = rows_file(tmp_path / "cafe.jsonl", texts([NFC, "tea", NFD]))
    with pytest.raises(ValueError) as err:
        load_split(data_spec(path))
    message = str(err.value)
    assert path in message and ascii(NFC) in message and ascii(NFD) in message
    assert "(line 1)" in message and "(line 3)" in message and "normalisation" in message


def test_labels_differing_only_in_case_are_refused_saying_so(tmp_path):
    path = rows_file(tmp_path / "case.jsonl", texts(["sports", "news", "Sports"]))
    with pytest.raises(ValueError, match=r"'sports' \(line 1\) and 'Sports' \(line 3\) differ only in case"):
        load_split(data_spec(path))


def test_a_full_width_label_is_refused_as_a_second_spelling(tmp_path):
    path = rows_file(tmp_path / "width.jsonl", texts(["sport", "news", "\uff53\uff50\uff4f\uff52\uff54"]))
    with pytest.raises(ValueError, match=r"'sport' \(line 1\) and 'ｓｐｏｒｔ' \(ascii '\\uff53\\uff50\\uff4f\\uff52\\uff54'\) \(line 3\)"):
        load_split(data_spec(path))


def test_a_zero_width_variant_is_refused_with_the_difference_visible(tmp_path):
    path = rows_file(tmp_path / "zw.jsonl", texts(["sport", "news", "spo\u200brt"]))
    with pytest.raises(ValueError, match=r"'sport' \(line 1\) and 'spo\\u200brt' \(line 3\)"):
        load_split(data_spec(path))


def test_a_csv_label_differing_by_normalisation_names_the_csv_lines(tmp_path):
    path = tmp_path / "cafe.csv"
    path.write_text(f"text,label\nsome text,{NFC}\nmore text,tea\nlast text,{NFD}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\(line 2\).*\(line 4\)"):
        load_split(data_spec(path))


def test_nfd_data_matches_an_nfc_models_label(tmp_path):
    model = save_ngram(tmp_path / "m", labels=[NFC, "tea"])
    path = rows_file(tmp_path / "nfd.jsonl", texts([NFD, "tea", NFD]))
    data = load_for(summon.load(model, device="cpu"), data_spec(path))
    assert [ex["label"] for ex in data.examples] == [0, 1, 0] and data.labels == [NFC, "tea"]


def test_data_differing_from_the_models_label_in_case_is_refused_saying_so(models, tmp_path, capsys):
    path = rows_file(tmp_path / "Pos.jsonl", texts(["Pos", "neg", "Pos"]))
    err = fails(capsys, "eval", models["ngram"], "--data", path, "--no-latency")
    assert err.startswith(f"{path}:1: label 'Pos'") and "'Pos' differs only in case from 'pos'" in err


def test_calibrate_on_data_differing_in_case_writes_nothing(tmp_path, capsys):
    model = save_cascade(tmp_path / "cascade", LABELS)
    path = rows_file(tmp_path / "Pos.jsonl", texts(["Pos", "NEG"] * 4))
    err = refused_calibrate(capsys, model, path)
    assert "differs only in case" in err


def test_labels_list_with_two_spellings_of_one_name_is_refused(tmp_path):
    expected = f"'labels': labels {NFC!r} (ascii 'caf\\xe9') (item 1) and {NFD!r} (ascii 'cafe\\u0301') (item 2)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        DatasetSpec(path=str(tmp_path / "x.jsonl"), task="classification", labels=[NFC, NFD])


def test_labels_list_differing_only_in_case_is_refused(tmp_path):
    with pytest.raises(ValueError, match="differ only in case"):
        DatasetSpec(path=str(tmp_path / "x.jsonl"), task="classification", labels=["Sports", "sports"])


def test_a_task_data_with_lookalike_labels_is_accepted_and_another_set_shows_reprs(models):
    predictor = summon.load(models["ngram"], device="cpu")
    rows = [{"text": "good fun", "label": 1}, {"text": "bad worst", "label": 0}]
    same = TaskData("classification", ["neg", "po\u200bs"], rows, "rows")
    assert len(summon.evaluate([predictor], same, latency=False)) == 1
    other = TaskData("classification", ["neg", "po\u200bsitive"], rows, "rows")
    with pytest.raises(ValueError, match=r"\[neg, 'po\\u200bsitive'\] but the predictor predicts \[neg, pos\]"):
        summon.evaluate([predictor], other, latency=False)


@pytest.mark.parametrize("odd", ["\u0663", "\u00b3", "\uff11", "1\u200b"], ids=["arabic", "superscript",
                                                                              "fullwidth", "zero-width"])
def test_an_odd_numeral_is_refused_naming_the_file_and_line(tmp_path, odd):
    path = rows_file(tmp_path / "odd.jsonl", texts([0, 1, odd]))
    with pytest.raises(ValueError) as err:
        load_split(data_spec(path))
    assert f"{path}:3" in str(err.value) and repr(odd) in str(err.value) and "digits 0-9" in str(err.value)


def test_an_odd_numeral_in_a_csv_is_refused_by_eval(models, tmp_path, capsys):
    path = tmp_path / "odd.csv"
    path.write_text("text,label\ngood,0\nbad,\u0661\n", encoding="utf-8")
    err = fails(capsys, "eval", models["ngram"], "--data", str(path), "--no-latency")
    assert f"{path}:3" in err and "ARABIC-INDIC DIGIT ONE" in err


def test_a_padded_numeral_is_the_plain_id(tmp_path):
    """``" 1 "`` is the id 1 (CSV fields often carry spaces; names are stripped the same way), not a new class."""
    path = rows_file(tmp_path / "pad.jsonl", texts([0, " 1 ", 1]))
    data = load_split(data_spec(path))
    assert data.labels == ["0", "1"] and [ex["label"] for ex in data.examples] == [0, 1, 1]


def test_label_key_folds_width_normalisation_and_invisible_characters():
    assert label_key(NFD) == label_key(NFC) == NFC
    assert label_key("\uff53port\u200d ") == "sport" and label_key("Sport") != label_key("sport")
