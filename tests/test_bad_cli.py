"""Bad command lines: every user mistake ends with one ``summon: error: ...`` message naming the argument, file,
line, key or label lists at fault, and exit status 2; an unexpected exception prints one line with a hint to
rerun with ``--debug`` and exits 1; no traceback reaches the user unless asked for.

The CLI runs in-process (``summon.cli.main.main``) on tiny untrained n-gram predictors saved once per module.
"""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURE_DATA
from toy import sentiment_rows, write_jsonl

import summon.cli.commands as commands
from summon.adaptive.cascade import build_cascade
from summon.cli.main import main
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import Predictor
from summon.predictors.saved import MANIFEST

LABELS = ["neg", "pos"]


def _save_plain(directory, seed: int) -> str:
    built = build_model(ModelConfig(kind="ngram", num_buckets=256, embed_dim=8, init_seed=seed), "classification",
                        len(LABELS))
    Predictor(built.model, built.featurizer, "classification", LABELS, {"architecture": built.architecture}).save(
        directory, architecture=built.architecture)
    return str(directory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A plain predictor, and a cascade of two calibrated on 120 rows."""
    root = tmp_path_factory.mktemp("bad_cli")
    plain = _save_plain(root / "plain", 1)
    build_cascade([plain, _save_plain(root / "second", 2)]).save(root / "cascade")
    cal = write_jsonl(root / "cal.jsonl", sentiment_rows(120, 3))
    assert main(["calibrate", str(root / "cascade"), "--data", str(cal), "--no-latency", "--table-rows", "2"]) == 0
    return {"plain": plain, "cascade": str(root / "cascade"), "root": root}


def fails(capsys, *argv: str, status: int = 2) -> str:
    """Run the CLI, expect ``status`` and one message without a traceback; returns standard error."""
    assert main(list(argv)) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip(), err
    return err


# --- commands and flags -----------------------------------------------------------------------------------


def test_an_unknown_command_suggests_the_close_one(capsys):
    err = fails(capsys, "trian", "sst2_finetune")
    assert "invalid choice: 'trian'" in err and "Did you mean 'train'?" in err


def test_a_mistyped_choice_suggests_the_close_one(saved, capsys):
    err = fails(capsys, "predict", saved["plain"], "--file", "x.jsonl", "--format", "jsnl")
    assert "argument --format: invalid choice: 'jsnl'" in err and "Did you mean 'jsonl'?" in err


def test_a_missing_predictor_folder_is_named(saved, capsys):
    missing = saved["root"] / "no_such_model"
    err = fails(capsys, "predict", str(missing), "fine")
    assert err.startswith(f"summon: error: {missing}: no such predictor directory")


def test_a_file_given_as_the_predictor_folder_is_named(saved, capsys):
    err = fails(capsys, "predict", str(saved["root"] / "plain" / MANIFEST), "fine")
    assert f"{saved['root'] / 'plain' / MANIFEST} is a file" in err and f"perhaps {saved['root'] / 'plain'}" in err


def test_a_budget_out_of_range_is_refused(saved, capsys):
    err = fails(capsys, "predict", saved["cascade"], "fine", "--budget", "-1")
    assert err.startswith("summon: error: budget must be") and err.rstrip().endswith("got -1.0")


def test_a_nan_threshold_is_refused(saved, capsys):
    err = fails(capsys, "predict", saved["cascade"], "fine", "--threshold", "nan")
    assert err.startswith("summon: error: threshold must be") and "got nan" in err


def test_budget_and_max_drop_together_are_refused(saved, capsys):
    err = fails(capsys, "predict", saved["cascade"], "fine", "--budget", "0.5", "--max-drop", "0.01")
    assert "argument --max-drop: not allowed with argument --budget" in err and "give at most one" in err


def test_delta_without_guaranteed_is_refused(saved, capsys):
    err = fails(capsys, "predict", saved["cascade"], "fine", "--delta", "0.1")
    assert "--delta 0.1 is the failure probability of --guaranteed" in err


def test_a_knob_given_to_a_plain_predictor_is_refused(saved, capsys):
    err = fails(capsys, "predict", saved["plain"], "fine", "--budget", "0.5")
    assert "has one stage, so it has no knob (got budget 0.5)" in err


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
    ("--batch-size", "many", "argument --batch-size: expected a whole number, got 'many'"),
])
def test_a_batch_size_that_cannot_be_meant_is_refused_before_loading(saved, capsys, flag, value, expected):
    assert expected in fails(capsys, "predict", str(saved["root"] / "not_loaded"), "fine", flag, value)


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--table-rows", "-1", "argument --table-rows: must be at least 0, got -1"),
    ("--limit", "0", "argument --limit: must be at least 1, got 0"),
])
def test_calibrate_flags_out_of_range_leave_the_calibration_as_it_was(saved, capsys, flag, value, expected):
    before = (saved["root"] / "cascade" / MANIFEST).read_bytes()
    err = fails(capsys, "calibrate", saved["cascade"], "--data", "sst2:dev", "--no-latency", flag, value)
    assert expected in err and (saved["root"] / "cascade" / MANIFEST).read_bytes() == before


def test_eval_max_seconds_nan_is_refused(saved, capsys):
    err = fails(capsys, "eval", saved["plain"], "--data", "sst2:dev", "--max-seconds", "nan")
    assert "argument --max-seconds: expected a finite number, got nan" in err


def test_serve_logits_limits_are_checked(saved, capsys):
    assert "argument --max-rows: must be at least 1, got 0" in fails(capsys, "serve-logits", saved["plain"],
                                                                     "--max-rows", "0")


# --- predict: inputs ----------------------------------------------------------------------------------------


def test_predict_on_an_empty_file_writes_nothing_and_says_so(saved, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["predict", saved["plain"], "--file", str(empty)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"summon: no inputs in {empty}; nothing to predict\n"


def test_a_folder_given_as_the_input_file_is_named(saved, tmp_path, capsys):
    err = fails(capsys, "predict", saved["plain"], "--file", str(tmp_path))
    assert f"{tmp_path} is a folder; --file takes one file" in err


def test_a_stray_quote_in_a_tsv_input_file_does_not_merge_rows(saved, tmp_path, capsys):
    tsv = tmp_path / "in.tsv"
    tsv.write_text('text\n"a quoted start\nsecond line\n')
    assert main(["predict", saved["plain"], "--file", str(tsv)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # two rows, two predictions


def test_invalid_utf8_in_a_file_names_the_line(saved, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbroken \xff byte\n")
    err = fails(capsys, "predict", saved["plain"], "--file", str(bad))
    assert f"{bad}:3: bytes that are not UTF-8" in err


def test_a_lone_surrogate_escape_in_jsonl_names_the_line(saved, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "bad \\ud83d half an emoji"}\n')
    err = fails(capsys, "predict", saved["plain"], "--file", str(bad))
    assert f"{bad}:2: 'text': invalid Unicode at character 5: a lone surrogate U+D83D" in err


def test_an_argument_with_a_byte_that_is_not_utf8_names_the_argument(saved, capsys):
    """Python hands main() such an argument with the byte as a surrogate (surrogateescape)."""
    err = fails(capsys, "predict", saved["plain"], "fine", "caf\udce9")
    assert "argument 2: invalid Unicode at character 4: the byte 0xe9, which is not UTF-8" in err


def test_stdin_in_text_mode_with_a_lone_surrogate_names_the_line(saved, capsys, monkeypatch):
    class TextStdin:  # no .buffer: lines come as str
        def __iter__(self):
            return iter(["fine\n", "bad \ud800\n"])

    monkeypatch.setattr("sys.stdin", TextStdin())
    err = fails(capsys, "predict", saved["plain"], "--file", "-")
    assert "<stdin>:2: invalid Unicode at character 5: a lone surrogate U+D800" in err


# --- eval and calibrate: data that does not fit the model ---------------------------------------------------


def test_eval_on_data_with_other_labels_names_both_lists(saved, capsys):
    err = fails(capsys, "eval", saved["plain"], "--data", "ag_news:test", "--data-dir", str(FIXTURE_DATA),
                "--no-latency")
    assert "the data's labels are [World, Sports, Business, Sci/Tech] but [neg, pos] are expected" in err


def test_eval_on_a_file_with_a_foreign_label_names_the_line(saved, tmp_path, capsys):
    data = write_jsonl(tmp_path / "other.jsonl", [{"text": "fine", "label": "neg"}, {"text": "x", "label": "maybe"}])
    err = fails(capsys, "eval", str(saved["plain"]), "--data", str(data), "--no-latency")
    assert f"{data}:2: label 'maybe' is not in the model's label set [neg, pos]" in err


def test_calibrate_on_data_with_other_labels_names_both_lists(saved, capsys):
    before = (saved["root"] / "cascade" / MANIFEST).read_bytes()
    err = fails(capsys, "calibrate", saved["cascade"], "--data", "ag_news:test", "--data-dir", str(FIXTURE_DATA),
                "--no-latency")
    assert "the data's labels are [World, Sports, Business, Sci/Tech] but [neg, pos] are expected" in err
    assert (saved["root"] / "cascade" / MANIFEST).read_bytes() == before


def test_calibrate_on_two_rows_is_refused_and_keeps_the_calibration(saved, tmp_path, capsys):
    before = json.loads((saved["root"] / "cascade" / MANIFEST).read_text())["adaptive"]
    data = write_jsonl(tmp_path / "two.jsonl", sentiment_rows(2, 5))
    err = fails(capsys, "calibrate", saved["cascade"], "--data", str(data), "--no-latency")
    assert "2 calibration rows are too few" in err
    assert json.loads((saved["root"] / "cascade" / MANIFEST).read_text())["adaptive"] == before


# --- train: recipes and overrides ---------------------------------------------------------------------------


def test_an_unknown_recipe_suggests_the_close_one(capsys):
    err = fails(capsys, "train", "sst2_finetun", "--dry-run")
    assert "no shipped recipe 'sst2_finetun'. Did you mean 'sst2_finetune'?" in err


def test_a_bad_override_key_is_named(capsys):
    err = fails(capsys, "train", "sst2_finetune", "train.lrr=1e-4", "--dry-run")
    assert "train.lrr: unknown key (did you mean 'lr'?)" in err


def test_an_override_without_a_value_is_named(capsys):
    assert "novalue" in fails(capsys, "train", "sst2_finetune", "novalue", "--dry-run")


# --- the unexpected ---------------------------------------------------------------------------------------


def _broken(args):
    raise RuntimeError("disk on fire")


def test_an_unexpected_error_is_one_line_exit_1_with_a_debug_hint(saved, capsys, monkeypatch):
    monkeypatch.delenv("SUMMON_DEBUG", raising=False)
    monkeypatch.setattr(commands, "cmd_predict", _broken)
    err = fails(capsys, "predict", saved["plain"], "fine", status=1)
    assert err.count("\n") == 1 and err.startswith("summon: unexpected error: RuntimeError: disk on fire")
    assert "--debug" in err and "SUMMON_DEBUG=1" in err


def test_debug_shows_the_traceback(saved, monkeypatch):
    monkeypatch.setattr(commands, "cmd_predict", _broken)
    with pytest.raises(RuntimeError, match="disk on fire"):  # raised: the interpreter prints the traceback
        main(["--debug", "predict", saved["plain"], "fine"])


def test_summon_debug_in_the_environment_shows_the_traceback_of_a_user_error(saved, monkeypatch):
    monkeypatch.setenv("SUMMON_DEBUG", "1")
    with pytest.raises(ValueError, match="no such predictor directory"):
        main(["predict", str(saved["root"] / "no_such_model"), "fine"])
