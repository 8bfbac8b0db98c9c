"""The Python facade end to end on tiny models and the bundled synthetic catalog: summon.train (keyword
overrides), load, calibrate, cascade, evaluate and recipes — the verbs the quickstart uses."""

from __future__ import annotations

import json

import pytest
from toy import FIXTURE_DATA

import summon
from summon.adaptive.cascade import CascadePredictor
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.data.spec import TaskData

TINY = {"model__name": "tiny-bert", "model__max_length": 32, "train__epochs": 1, "train__batch_size": 16,
        "train__progress": False, "data__train__limit": 64, "data__eval__limit": 32, "cost__latency": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    common = {"data_dir": FIXTURE_DATA, "cache_dir": str(root / "cache")}
    teacher = summon.train("sst2_finetune", output_dir=str(root / "teacher"), **common, **TINY)
    student = summon.train("sst2_kd_ngram", output_dir=str(root / "student"), teacher=str(teacher),
                           model__num_buckets=4096, train__epochs=1, train__progress=False,
                           data__train__limit=64, data__eval__limit=32, cost__latency=False, **common)
    exits = summon.train("sst2_early_exit", output_dir=str(root / "exits"), **common, **TINY)
    return {"root": root, "teacher": teacher, "student": student, "exits": exits}


def test_train_takes_keyword_overrides_and_writes_its_config(runs):
    config = (runs["root"] / "teacher" / "config.yaml").read_text()
    assert "tiny-bert" in config and (runs["teacher"] / "manifest.json").is_file()


def test_calibrate_cascade_and_evaluate_through_the_facade(runs, tmp_path):
    dev = "sst2:dev"
    calibration = summon.calibrate(runs["exits"], dev, max_drop=0.05, data_dir=FIXTURE_DATA, latency=False)
    exits = summon.load(runs["exits"], device="cpu")
    assert isinstance(exits, EarlyExitPredictor) and exits.calibration.to_dict() == calibration.to_dict()
    cascade = summon.cascade([str(runs["student"]), str(runs["teacher"])], out=tmp_path / "cascade", device="cpu")
    assert isinstance(cascade, CascadePredictor)
    summon.calibrate(cascade, dev, budget=1.0, data_dir=FIXTURE_DATA, latency=False)
    assert summon.load(tmp_path / "cascade").calibration.default.rule == "budget"
    entries = summon.evaluate([runs["teacher"], runs["exits"], tmp_path / "cascade"], "sst2:test",
                              data_dir=FIXTURE_DATA, out=tmp_path / "report", latency=False)
    assert [("adaptive" in e) for e in entries] == [False, True, True]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [e["name"] for e in report["entries"]] == ["teacher", "exits", "cascade"]
    for name in ("exits", "cascade"):
        assert (tmp_path / "report" / name / "accuracy_vs_cost.png").is_file()


def test_the_facade_refuses_what_it_cannot_do(runs):
    with pytest.raises(ValueError, match="no stages to calibrate"):
        summon.calibrate(runs["teacher"], "sst2:dev", data_dir=FIXTURE_DATA)
    with pytest.raises(ValueError, match="at most one of"):
        summon.calibrate(runs["exits"], "sst2:dev", budget=0.5, max_drop=0.01, data_dir=FIXTURE_DATA)
    with pytest.raises(ValueError, match="names no split"):
        summon.calibrate(runs["exits"], "sst2", data_dir=FIXTURE_DATA)


def test_data_with_other_labels_than_the_predictor_is_refused(runs):
    other = TaskData("classification", ["pos", "neg"], [{"text": "x", "label": 0}] * 4, "mine.jsonl")
    with pytest.raises(ValueError, match=r"mine\.jsonl: the data's labels are \[pos, neg\] but the predictor predicts"):
        summon.evaluate([runs["teacher"]], other, latency=False)
    with pytest.raises(ValueError, match=r"the data's labels are \[World, Sports, Business, Sci/Tech\]"):
        summon.evaluate([runs["teacher"]], "ag_news:test", data_dir=FIXTURE_DATA, latency=False)


def test_recipes_lists_every_shipped_recipe_with_its_description():
    shipped = summon.recipes()
    assert "sst2_early_exit" in shipped and all(isinstance(d, str) and d for d in shipped.values())
