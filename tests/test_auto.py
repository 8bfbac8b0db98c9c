"""``summon auto`` end to end through the CLI's exit code on a tiny teacher: the plan, the search, the chosen
predictor (servable as it is), the report, resuming an interrupted run, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from toy import run_config, sentiment_files

import summon
from summon.cli.main import main
from summon.search.state import STATE
from summon.training.loop import train

QUICK = ["--student-layers", "1", "--ngram-buckets", "4096", "--time", "20m"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny mean-pooled 2-layer teacher, its training split and a 240-row held-out split."""
    root = tmp_path_factory.mktemp("auto")
    train_file, dev_file = sentiment_files(root, 384, 240)
    teacher = train(run_config(root / "teacher", train_file, dev_file,
                               model={"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "pooling": "mean"}))
    return {"root": root, "teacher": str(teacher), "train": str(train_file), "dev": str(dev_file)}


def _args(setup, out, *extra):
    return ["auto", setup["teacher"], "--train", setup["train"], "--heldout", setup["dev"], "--out", str(out),
            *QUICK, *extra]


@pytest.fixture(scope="module")
def searched(setup):
    out = setup["root"] / "search"
    assert main(_args(setup, out, "--only", "exits_frozen", "cascade_ngram", "teacher_int8")) == 0
    return out


def test_dry_run_lists_the_plan_and_writes_nothing(setup, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(_args(setup, out, "--dry-run")) == 0
    text = capsys.readouterr().out
    for name in ("teacher", "teacher_int8", "exits_frozen", "continue_1", "ngram_kd", "cascade_ngram",
                 "truncated1_kd", "cascade_truncated1", "exits_frozen_int8"):
        assert f"  {name} " in text
    assert "384 training rows" in text and "'calibration': 96, 'selection': 72, 'certification': 72" in text
    assert not out.exists()


def test_the_search_chooses_certifies_and_saves_a_servable_predictor(searched):
    report = json.loads((searched / "report" / "report.json").read_text())
    names = {c["name"] for c in report["candidates"]}
    assert names == {"teacher", "teacher_int8", "exits_frozen", "ngram_kd", "cascade_ngram"}
    chosen = report["chosen"]
    assert chosen["name"] in names and 0 < chosen["cost_at_target"] <= 1.0
    cert = chosen["certificate"]
    assert cert["rows"] == 72 and cert["drop_upper"] >= cert["drop"] and chosen["certified_drop_points"] > 0
    assert report["rows"] == {"calibration": 96, "selection": 72, "certification": 72}
    assert "certification rows no training, calibration or selection saw" in report["protocol"]
    for c in report["candidates"]:  # every built candidate has its figures and the command that makes it alone
        assert c["accuracy"] is not None and c["ms_per_example_bs32"] is not None and c["path"]
    assert set(report["commands"]) == names
    assert "summon train" in report["commands"]["exits_frozen"] and "summon cascade" in report["commands"]["cascade_ngram"]
    assert (searched / "report" / "report.png").stat().st_size > 10_000 and "Chosen:" in (
        searched / "report" / "report.md").read_text()
    predictor = summon.load(searched / "predictor", device="cpu")  # as it is served: its default is the choice
    predictions = predictor.predict(["a great film", "dull and awful"])
    assert len(predictions) == 2 and all(p.cost is not None for p in predictions)
    if predictor.num_stages > 1:
        assert predictor.calibration.default.threshold == pytest.approx(float(chosen["threshold"]))


def test_the_front_holds_every_candidates_curve_on_one_axis(searched):
    report = json.loads((searched / "report" / "report.json").read_text())
    costs = [p["cost"] for p in report["front"]]
    accuracies = [p["accuracy"] for p in report["front"]]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)
    teacher = next(c for c in report["candidates"] if c["name"] == "teacher")
    assert teacher["cost_at_target"] == pytest.approx(1.0, abs=1e-6)


def test_running_the_same_command_again_continues_and_keeps_the_choice(setup, searched, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(searched, out)
    state = json.loads((out / STATE).read_text())
    for name in ("cascade_ngram", "teacher_int8"):  # as if killed before these finished
        del state["candidates"][name]
        shutil.rmtree(out / "candidates" / name, ignore_errors=True)
    # the paths in the state are the first run's: a resumed run in a copied folder reads its own copies
    text = json.dumps(state).replace(str(searched), str(out))
    (out / STATE).write_text(text)
    before = (out / "candidates" / "exits_frozen" / "run" / "model" / "manifest.json").stat().st_mtime
    assert main(_args(setup, out, "--only", "exits_frozen", "cascade_ngram", "teacher_int8")) == 0
    assert (out / "candidates" / "exits_frozen" / "run" / "model" / "manifest.json").stat().st_mtime == before
    first = json.loads((searched / "report" / "report.json").read_text())["chosen"]
    again = json.loads((out / "report" / "report.json").read_text())["chosen"]
    assert again["name"] == first["name"] and again["cost_at_target"] == pytest.approx(first["cost_at_target"])
    assert np.isclose(again["certified_drop_points"], first["certified_drop_points"])


def test_an_unreachable_target_exits_1_and_says_so(setup, tmp_path, capsys):
    out = tmp_path / "tight"
    assert main(_args(setup, out, "--only", "ngram_kd", "--no-int8", "--budget", "0.001")) == 1
    assert "no candidate met the target" in capsys.readouterr().out
    assert (out / "report" / "report.md").is_file()


def test_guaranteed_chooses_by_learn_then_test_and_says_when_the_rows_are_too_few(setup, tmp_path, capsys):
    out = tmp_path / "ltt"
    assert main(_args(setup, out, "--only", "exits_frozen", "--no-int8", "--guaranteed", "--max-drop", "0.05")) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["protocol"].startswith("guaranteed: the point is chosen by Learn-then-Test")
    assert report["chosen"]["name"] in ("teacher", "exits_frozen")
    tight = tmp_path / "tight"  # 1 point at delta 0.1 needs 230 selection rows even for the teacher; there are 72
    assert main(_args(setup, tight, "--only", "exits_frozen", "--no-int8", "--guaranteed")) == 1
    assert "needs at least 230 selection rows" in json.loads((tight / "report" / "report.json").read_text())["why"]


@pytest.mark.parametrize("drop, message", [
    ("--train", "summon auto needs --train"),
    ("--heldout", "summon auto needs --heldout"),
])
def test_missing_splits_are_named(setup, tmp_path, capsys, drop, message):
    args = _args(setup, tmp_path / "o")
    i = args.index(drop)
    del args[i:i + 2]
    assert main(args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_folder_of_other_files_is_refused_before_any_work(setup, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_args(setup, out)) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds" in err and "notes.txt" in err and "earlier run of summon auto" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_earlier_run_with_other_settings_is_not_continued(setup, searched, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(searched, out)
    assert main(_args(setup, out, "--only", "exits_frozen", "cascade_ngram", "teacher_int8", "--seed", "7")) == 2
    assert "holds a summon auto run with other settings (seed differ)" in capsys.readouterr().err


def test_an_unknown_candidate_and_a_teacher_that_is_not_there_are_named(setup, tmp_path, capsys):
    assert main(_args(setup, tmp_path / "a", "--only", "nope", "--dry-run")) == 2
    assert "--only: nope is no candidate for this teacher; choose from teacher" in capsys.readouterr().err
    args = _args(setup, tmp_path / "b", "--dry-run")
    args[1] = str(tmp_path / "no_teacher")
    assert main(args) == 2
    assert "no_teacher" in capsys.readouterr().err


def test_the_facade_takes_the_same_options(setup, tmp_path):
    plan = summon.auto(setup["teacher"], train=setup["train"], heldout=setup["dev"], out=tmp_path / "f",
                       dry_run=True, student_layers=1, only=["ngram_kd"])
    assert [c["name"] for c in plan["candidates"]] == ["teacher", "ngram_kd"]
    with pytest.raises(TypeError, match="student_layer"):
        summon.auto(setup["teacher"], train=setup["train"], heldout=setup["dev"], student_layer=1)
