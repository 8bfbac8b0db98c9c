"""Bad-input suite, round three (issue 25): classes 7 (exit codes tell the truth), 9 ("unexpected error" is a bug)
and the data side of 5 (no small input buys unbounded work).

One test per case. Command lines run in-process (``summon.cli.main.main``) and must exit 2 with one
``summon: error: ...`` line naming the file, line, key or argument, never "unexpected error"; the facade raises a
``ValueError`` whose message says the same; the HTTP app answers 422 naming the field. Models are tiny and untrained
(the staged-contract factories, or n-gram models), data files a few rows in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import call, serving
from test_cli import tiny_overrides
from test_staged_contract import FACTORIES, early_exit
from test_staged_contract import _data as _contract_data
from test_staged_contract import plain as tiny_bert_plain
from toy import FIXTURE_DATA, sentiment_rows, write_jsonl

import summon
import summon.cli.commands as commands
from summon.cli.main import main
from summon.core.config import MAX_YAML_VALUES, ConfigError, from_dict, load_yaml
from summon.data import DatasetSpec, load_split
from summon.data.loading import max_class_id
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import MANIFEST, WEIGHTS
from summon.training.config import RunConfig

LABELS = ["neg", "pos"]


# --- helpers --------------------------------------------------------------------------------------


def fails(capsys, *argv: str) -> str:
    """Run the CLI: exit status 2, one ``summon: error:`` message, no traceback, never "unexpected error"."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "summon: error: " in err and "unexpected error" not in err and "Traceback" not in err, err
    return err.split("summon: error: ", 1)[1]


def save_ngram(directory: Path, seed: int = 1, task: str = "classification", labels: list[str] = LABELS) -> str:
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=seed), task, len(labels))
    Predictor(built.model, built.featurizer, task, labels, {"architecture": built.architecture}).save(
        directory, architecture=built.architecture)
    return str(directory)


def rows_file(path: Path, rows: list[dict]) -> str:
    return str(write_jsonl(path, rows))


def data_spec(path: Path | str, **kw) -> DatasetSpec:
    return DatasetSpec(path=str(path), task="classification", **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A plain n-gram predictor and a plain tiny-bert one (a tokenizer folder), saved once."""
    root = tmp_path_factory.mktemp("bad_r3")
    return {"ngram": save_ngram(root / "ngram"), "bert": tiny_bert_plain(root), "root": root}


@pytest.fixture
def bert_copy(saved, tmp_path):
    """A copy of the tiny-bert predictor to tamper with."""
    import shutil

    return Path(shutil.copytree(saved["bert"], tmp_path / "bert"))


def deny(monkeypatch, suffix: str) -> None:
    """Opening any path ending in ``suffix`` raises PermissionError, as for a file this user may not read (the
    tests run as root, which no permission bit stops)."""
    opened = pathlib.Path.open

    def guarded(self, *args, **kwargs):
        if str(self).endswith(suffix):
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", guarded)


# --- class 7: exit codes tell the truth -----------------------------------------------------------


def test_train_of_a_progressive_recipe_exits_0_so_calibrate_runs_after_it(tmp_path, capsys):
    assert main(["train", "sst2_finetune", *tiny_overrides("sst2_finetune", tmp_path)]) == 0
    teacher = tmp_path / "sst2_finetune" / "model"
    assert main(["train", "sst2_progressive", *tiny_overrides("sst2_progressive", tmp_path, teacher)]) == 0
    out = capsys.readouterr()
    assert "not a summon predictor manifest" not in out.err and "prefix_accuracy [" in out.out
    ensemble = tmp_path / "sst2_progressive" / "model"
    assert main(["calibrate", str(ensemble), "--data", "sst2:dev", "--data-dir", str(FIXTURE_DATA), "--no-latency",
                 "--table-rows", "2"]) == 0
    assert summon.load(ensemble, device="cpu").calibration is not None


# --- class 9: destinations that are files ---------------------------------------------------------


def test_train_with_output_dir_a_file_names_it(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("mine")
    err = fails(capsys, "train", "sst2_finetune", *tiny_overrides("sst2_finetune", tmp_path), f"output_dir={file}")
    assert str(file) in err and "output_dir" in err and "is a file" in err
    assert file.read_text() == "mine"


def test_train_with_cache_dir_a_file_names_the_key(tmp_path, capsys):
    file = tmp_path / "cache"
    file.write_text("mine")
    err = fails(capsys, "train", "sst2_finetune", *tiny_overrides("sst2_finetune", tmp_path), f"cache_dir={file}")
    assert f"cache_dir: {file} is a file" in err
    assert not (tmp_path / "sst2_finetune").exists() and file.read_text() == "mine"


def test_eval_with_out_a_file_names_the_option_before_evaluating(saved, tmp_path, capsys, monkeypatch):
    file = tmp_path / "report"
    file.write_text("mine")
    monkeypatch.setattr(commands.summon, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    err = fails(capsys, "eval", saved["ngram"], "--data", "sst2:dev", "--data-dir", str(FIXTURE_DATA), "--out",
                str(file), "--no-latency")
    assert err.startswith(f"{file} is a file; the evaluation report is a folder") and "--out" in err
    assert file.read_text() == "mine"


def test_eval_with_out_below_a_file_names_the_file(saved, tmp_path, capsys):
    file = tmp_path / "report"
    file.write_text("mine")
    err = fails(capsys, "eval", saved["ngram"], "--data", "sst2:dev", "--data-dir", str(FIXTURE_DATA), "--out",
                str(file / "sub"), "--no-latency")
    assert f"{file} is a file" in err and "--out" in err


def test_eval_with_out_a_folder_of_other_files_refuses_before_evaluating(saved, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "report.json").write_text('{"mine": true}')
    (folder / "notes.md").write_text("mine")
    monkeypatch.setattr(commands.summon, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    err = fails(capsys, "eval", saved["ngram"], "--data", "sst2:dev", "--data-dir", str(FIXTURE_DATA), "--out",
                str(folder), "--no-latency")
    assert f"{folder} already holds" in err and "notes.md" in err and "earlier summon report" in err
    assert (folder / "report.json").read_text() == '{"mine": true}' and (folder / "notes.md").read_text() == "mine"


def test_eval_with_out_inside_the_predictor_refuses(saved, capsys):
    err = fails(capsys, "eval", saved["ngram"], "--data", "sst2:dev", "--data-dir", str(FIXTURE_DATA), "--out",
                str(Path(saved["ngram"]) / "report"), "--no-latency")
    assert "is inside the predictor" in err and not (Path(saved["ngram"]) / "report").exists()


def test_eval_replaces_its_own_earlier_report(saved, tmp_path, capsys):
    folder = tmp_path / "report"
    data = rows_file(tmp_path / "dev.jsonl", [{"text": f"row {i}", "label": LABELS[i % 2]} for i in range(8)])
    args = ["eval", saved["ngram"], "--data", data, "--out", str(folder), "--no-latency"]
    assert main(args) == 0
    first = json.loads((folder / "report.json").read_text())
    assert first["format"] == "summon-report"
    assert main(args) == 0  # a report is regenerated in place
    assert json.loads((folder / "report.json").read_text())["created"] >= first["created"]


def test_predict_with_out_a_folder_names_the_path(saved, tmp_path, capsys):
    err = fails(capsys, "predict", saved["ngram"], "a fine film", "--out", str(tmp_path))
    assert err.startswith(f"{tmp_path}: Is a directory") and "give a file's path" in err


@pytest.mark.parametrize("error", [FileExistsError(17, "File exists", "/srv/x"),
                                   NotADirectoryError(20, "Not a directory", "/srv/x/y"),
                                   PermissionError(13, "Permission denied", "/srv/x")])
def test_any_path_error_a_command_meets_is_a_clear_error_naming_the_path(saved, capsys, monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(commands.summon, "load", broken)
    err = fails(capsys, "predict", saved["ngram"], "a fine film")
    assert err.startswith(f"{error.filename}: {error.strerror}; ")


# --- class 9: data files --------------------------------------------------------------------------


def test_deeply_nested_json_in_a_data_file_names_file_and_line(saved, tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "a fine film", "label": 0}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": 1}\n')
    err = fails(capsys, "eval", saved["ngram"], "--data", str(path), "--no-latency")
    assert err.startswith(f"{path}:2: JSON nested too deeply to read")


def test_deeply_nested_json_in_a_predict_file_names_file_and_line(saved, tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "a fine film"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + '}\n')
    err = fails(capsys, "predict", saved["ngram"], "--file", str(path))
    assert err.startswith(f"{path}:2: JSON nested too deeply to read")


def test_the_facade_refuses_a_report_folder_that_is_a_file_before_evaluating(saved, tmp_path):
    file = tmp_path / "report"
    file.write_text("mine")
    with pytest.raises(ValueError, match=r"report is a file; the evaluation report is a folder, .* Choose another out"):
        summon.evaluate([saved["ngram"]], "sst2:dev", data_dir=FIXTURE_DATA, out=file, latency=False)
    assert file.read_text() == "mine"


def test_an_integer_too_long_for_python_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: unreadable JSON"):
        load_split(data_spec(path))


def test_an_unreadable_data_file_names_it(saved, tmp_path, capsys, monkeypatch):
    path = rows_file(tmp_path / "d.jsonl", sentiment_rows(4, 0))
    deny(monkeypatch, "d.jsonl")
    err = fails(capsys, "eval", saved["ngram"], "--data", path, "--no-latency")
    assert err.startswith(f"{path}: cannot read the file (Permission denied)")


@pytest.mark.parametrize("label, why", [("²", "reads as the class id 2 only through other characters"),
                                        ("٣x", "is a class name among class ids"),
                                        ("1.5", "is a class name among class ids"),
                                        ("1e3", "is a class name among class ids")])
def test_a_label_that_is_no_class_id_among_ids_names_file_and_line(tmp_path, label, why):
    """A numeral written with other digits ("²") is named as such (tests/test_bad_labels.py has the others)."""
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\na,0\nb,1\nc,{label}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:4: label {re.escape(repr(label))} {why}"):
        load_split(data_spec(path))


@pytest.mark.parametrize("label", ["1e300", "-1e300", "1e20"])
def test_a_huge_numeric_label_is_refused_at_its_line_without_allocating(tmp_path, label):
    path = tmp_path / "d.jsonl"
    path.write_text(f'{{"text": "a", "label": 0}}\n{{"text": "b", "label": {label}}}\n')
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: label .* is no class id"):
        load_split(data_spec(path))


def test_a_semicolon_separated_csv_is_read_with_its_delimiter(tmp_path, caplog):
    path = tmp_path / "d.csv"
    path.write_text("text;label\nhello, there;pos\nbye now;neg\n")
    with caplog.at_level("INFO", logger="summon.data.readers"):
        data = load_split(data_spec(path))
    assert [ex["text"] for ex in data.examples] == ["hello, there", "bye now"] and data.labels == ["neg", "pos"]
    assert "';' (semicolon)" in caplog.text


def test_a_one_column_header_holding_a_delimiter_says_which_one(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text|label\nhello|pos\nbye|neg|x\n")  # ragged: no delimiter can be detected
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: missing column 'text'.*'\\|' \\(pipe\\).*"
                       "'delimiter: pipe'"):
        load_split(data_spec(path))


def test_a_ragged_row_names_the_delimiter_read_with(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello there,pos\nbye, now,neg\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: 3 fields but the header has 2 .* separated by "
                       "',' \\(comma\\) \\(the .csv default\\)"):
        load_split(data_spec(path))


def test_the_delimiter_option_is_used_and_checked(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text;label\nhello there;pos\nbye now;neg\n")
    assert len(load_split(data_spec(path, delimiter="semicolon")).examples) == 2
    with pytest.raises(ValueError, match="'delimiter': unknown delimiter 'x'"):
        data_spec(path, delimiter="x")
    with pytest.raises(ValueError, match="'delimiter' applies to local CSV/TSV files"):
        data_spec(tmp_path / "d.jsonl", delimiter=";")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: missing column 'text'"):
        load_split(data_spec(path, delimiter="tab"))


# --- class 9: predictor folders -------------------------------------------------------------------


def test_a_file_added_to_the_tokenizer_folder_is_refused_at_load(bert_copy, capsys):
    """An added_tokens.json with an id past the vocabulary loaded, then failed with IndexError on the first text
    holding the token."""
    added = bert_copy / "tokenizer" / "added_tokens.json"
    added.write_text('{"newtok": 99999}')
    with pytest.raises(ValueError, match=f"^{re.escape(str(added))}: not a file of this predictor: {MANIFEST} lists "):
        summon.load(bert_copy, device="cpu")
    err = fails(capsys, "predict", str(bert_copy), "newtok here")
    assert str(added) in err


def test_a_garbled_tokenizer_file_is_refused_naming_it(bert_copy):
    listed = json.loads((bert_copy / MANIFEST).read_text())["files"]
    config = next(name for name in listed if name.endswith("tokenizer_config.json"))
    (bert_copy / config).write_text("{garbled")
    with pytest.raises(ValueError, match=re.escape(str(bert_copy / config))):
        summon.load(bert_copy, device="cpu")


@pytest.mark.parametrize("suffix", [MANIFEST, WEIGHTS, "tokenizer.json"])
def test_an_unreadable_predictor_file_names_it(saved, capsys, monkeypatch, suffix):
    deny(monkeypatch, suffix)
    err = fails(capsys, "predict", saved["bert"], "a fine film")
    assert re.match(rf"{re.escape(saved['bert'])}/\S*{re.escape(suffix)}: cannot be read \(Permission denied\)", err)


# --- class 9: predict's arguments -----------------------------------------------------------------


@pytest.mark.parametrize("deadline", ["5", True, math.nan, 0, -1, [5]])
def test_deadline_ms_must_be_a_number_of_milliseconds(saved, deadline):
    predictor = summon.load(saved["ngram"], device="cpu")
    with pytest.raises(ValueError, match=r"^deadline_ms must be a number of milliseconds greater than 0.* got "):
        predictor.predict(["a fine film"], deadline_ms=deadline)


def test_deadline_ms_as_a_numpy_number_is_taken(saved):
    assert len(summon.load(saved["ngram"], device="cpu").predict(["a fine film"], deadline_ms=np.float32(5))) == 1


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_predict_of_no_inputs_is_no_predictions_for_every_kind(kind, tmp_path):
    predictor = summon.load(FACTORIES[kind](tmp_path), device="cpu")
    assert predictor.predict([]) == [] and list(predictor.iter_predict([])) == []
    assert list(predictor.reference_logits([])) == []


def test_a_plain_transformer_predictor_answers_no_inputs_with_no_predictions(saved):
    """The predictor below the kinds (what ``hf:`` imports and exports use) tokenized nothing and raised IndexError."""
    predictor = load_predictor(saved["bert"], device="cpu")
    assert predictor.predict([]) == [] and predictor.logits([]) == []


# --- class 9: the HTTP app ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(saved):
    pytest.importorskip("fastapi")
    from summon.serve.app import create_server_app
    from summon.serve.engine import Engine

    engine = Engine({"plain": summon.load(saved["ngram"], device="cpu")}, max_wait_ms=1.0)
    app = create_server_app(engine, warmup_sizes=(1,), drain_seconds=2.0)
    with serving(app, lifespan="on") as url:
        until = time.monotonic() + 30
        while call(url, "/ready")[0] != 200:
            assert time.monotonic() < until
            time.sleep(0.02)
        yield url


@pytest.mark.parametrize("deadline", ["5", True, None, -1])
def test_the_app_refuses_a_deadline_that_is_no_number_with_422(server, deadline):
    body = {"inputs": ["a fine film"], "deadline_ms": deadline}
    status, _, answer = call(server, "/v1/predict", body)
    if deadline is None:  # null: no deadline
        assert status == 200
        return
    assert status == 422 and answer["error"].startswith("'deadline_ms' must be a positive number of milliseconds")


def test_the_app_refuses_a_text_pair_for_a_single_text_model_naming_field_and_task(server):
    body = {"inputs": [{"text": "a fine film"}, {"text": "a fine film", "text_pair": "a dull one"}]}
    status, _, answer = call(server, "/v1/predict", body)
    assert status == 422 and answer["index"] == 1
    assert "input 1: 'text_pair' is given, but model 'plain' classifies single texts (task classification)" in \
        answer["error"]


def test_the_logits_route_refuses_a_text_pair_for_a_single_text_model(server):
    body = {"inputs": [{"text": "a fine film", "text_pair": "a dull one"}]}
    status, _, answer = call(server, "/models/plain/v1/logits", body)
    assert status == 422 and "input 0: 'text_pair' is given, but this model classifies single texts" in answer["error"]


# --- class 5, the data side: no small input buys unbounded work -----------------------------------

LAUGHS = """# nine lols, nested seven deep: 1 KB of YAML, millions of values once expanded
method: finetune
output_dir: {out}
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
description: *h
data:
  train: {{name: sst2, split: train}}
model: {{kind: ngram}}
"""


def test_a_billion_laughs_recipe_is_refused_at_once_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS.format(out=tmp_path / "out"))
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    err = fails(capsys, "train", str(path))
    assert time.perf_counter() - started < 5
    assert str(path) in err and "line 9: anchors and aliases" in err and f"{MAX_YAML_VALUES:,}" in err
    assert err.count("lol") == 0 and len(err) < 600


def test_an_alias_inside_its_own_value_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: finetune\nloop: &x [1, *x]\n")
    with pytest.raises(ConfigError, match="line 2: an alias refers to the value that holds it"):
        load_yaml(path)


def test_yaml_nested_past_the_parsers_depth_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: finetune\ndeep: " + "[" * 3_000 + "]" * 3_000 + "\n")
    with pytest.raises(ConfigError, match=f"in {re.escape(str(path))}:\n  the YAML is nested too deeply"):
        load_yaml(path)


def test_aliases_that_stay_small_are_read(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("base: &m {kind: ngram, num_buckets: 4096}\nmodel: *m\n")
    assert load_yaml(path)["model"] == {"kind": "ngram", "num_buckets": 4096}


def test_a_config_error_never_prints_a_large_value_whole():
    with pytest.raises(ConfigError) as caught:
        from_dict(RunConfig, {"method": "finetune", "output_dir": "x", "description": [["lol"] * 1000] * 1000,
                              "data": {"train": {"name": "sst2"}}, "model": {"kind": "ngram"}})
    assert len(str(caught.value)) < 400 and "description: expected a string" in str(caught.value)


def test_one_huge_numeric_label_is_refused_at_its_line_before_any_label_set(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(39)] + [{"text": "typo", "label": 100000000}]
    path = rows_file(tmp_path / "d.jsonl", rows)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=f"^{re.escape(path)}:40: label 100000000 is far beyond the other class ids"):
        load_split(data_spec(path))
    assert time.perf_counter() - started < 2


def test_a_huge_numeric_label_in_the_cli_names_file_and_line(saved, tmp_path, capsys):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(39)] + [{"text": "typo", "label": "100000000"}]
    path = rows_file(tmp_path / "d.jsonl", rows)
    err = fails(capsys, "train", "sst2_finetune", *tiny_overrides("sst2_finetune", tmp_path),
                f"data.train={{path: {path}, task: classification}}")
    assert f"{path}:40: label 100000000 is far beyond" in err


def test_ids_that_skip_classes_within_the_bound_are_read_and_the_warning_stays_short(tmp_path, caplog):
    bound = max_class_id(3)
    path = rows_file(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                            {"text": "c", "label": bound}])
    with caplog.at_level("WARNING", logger="summon.data.loading"):
        data = load_split(data_spec(path))
    assert len(data.labels) == bound + 1
    assert f"and {bound - 2 - 10} more" in caplog.text and len(caplog.text) < 600


# --- conventions: summon predict --deadline-ms ------------------------------------------------------


def test_predict_takes_a_deadline_as_the_facade_does(tmp_path, capsys):
    """``summon predict --deadline-ms`` caps each window as ``predict(texts, deadline_ms=)`` caps a call: a deadline
    no stage fits stops every row at stage 0; a generous one changes nothing; a bad one is refused by argparse."""
    path = early_exit(tmp_path)
    summon.calibrate(path, _contract_data(120, 0), max_drop=0.05, latency=True)
    texts = ["good film", "bad plot and dull acting", "fine"]
    assert main(["predict", path, *texts, "--deadline-ms", "1e-6"]) == 0
    tight = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["stage"] for r in tight] == [0, 0, 0]
    assert main(["predict", path, *texts, "--deadline-ms", "1e9"]) == 0
    loose = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    direct = summon.load(path, device="cpu").predict(texts, deadline_ms=1e9)
    assert [r["stage"] for r in loose] == [p.stage for p in direct]
    assert main(["predict", path, "fine", "--deadline-ms", "0"]) == 2
    assert "--deadline-ms" in capsys.readouterr().err
