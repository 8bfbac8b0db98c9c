"""The training loop end to end on tiny models: learning, KD with the teacher cache, best-model keeping,
gradient accumulation, resume after kill -9, and two processes matching one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import run_config, sentiment_files, tagging_files

from summon import load
from summon.core.config import dump_yaml, to_dict
from summon.predictors.predictor import Predictor
from summon.predictors.saved import read_manifest
from summon.training.config import method_config
from summon.training.loop import train

REPO = Path(__file__).resolve().parent.parent


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    train_path, dev_path = sentiment_files(root)
    tag_train, tag_dev = tagging_files(root)
    return {"train": train_path, "dev": dev_path, "tag_train": tag_train, "tag_dev": tag_dev, "root": root}


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    return train(run_config(out, data["train"], data["dev"], epochs=8, eval_every=16))


def test_finetune_learns_and_saves_a_predictor_with_costs(teacher):
    manifest = read_manifest(teacher)
    assert manifest["metrics"]["eval"]["accuracy"] >= 0.9  # one sentiment word decides the label
    assert manifest["costs"]["flops_per_example"] > 0
    assert manifest["costs"]["params"] > 0
    assert manifest["training"]["method"] == "finetune"
    preds = load(teacher).predict(["the film was great fun", "a terrible boring plot"])
    assert [p.label for p in preds] == ["pos", "neg"]


def test_best_model_is_the_best_evaluation(teacher):
    run = events(teacher.parent)
    evals = [e for e in run if "eval" in e]
    assert len(evals) >= 3
    best = max(evals, key=lambda e: e["eval"]["accuracy"])  # first of equals wins: later ties are not "better"
    assert read_manifest(teacher)["training"]["step"] == best["step"]
    assert read_manifest(teacher)["metrics"]["eval"]["accuracy"] == best["eval"]["accuracy"]


def test_kd_students_and_the_teacher_cache(teacher, data, tmp_path, monkeypatch):
    ngram = {"kind": "ngram", "num_buckets": 4096, "embed_dim": 16, "dropout": 0.0}
    cfg = run_config(tmp_path / "kd_ngram", data["train"], data["dev"], method="kd", model=ngram, lr=0.05)
    cfg.teacher = str(teacher)
    cfg.cache_dir = str(tmp_path / "cache")
    student = train(cfg)
    assert read_manifest(student)["metrics"]["eval"]["accuracy"] >= 0.85
    cached = list((tmp_path / "cache" / "teacher").glob("*.safetensors"))
    assert len(cached) == 1

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(Predictor, "logits", no_teacher_pass)
    cfg2 = run_config(tmp_path / "kd_truncated", data["train"], data["dev"], method="kd",
                      model={"kind": "truncated", "first": 1, "max_length": 32}, epochs=1)
    cfg2.teacher, cfg2.cache_dir = str(teacher), str(tmp_path / "cache")
    truncated = train(cfg2)
    manifest = read_manifest(truncated)
    assert manifest["architecture"]["hf_config"]["num_hidden_layers"] == 1
    assert manifest["training"]["teacher_fingerprint"] == read_manifest(teacher)["files"]["model.safetensors"]["sha256"]


def test_kd_needs_a_teacher(data, tmp_path):
    cfg = run_config(tmp_path / "kd", data["train"], data["dev"], method="kd")
    with pytest.raises(ValueError, match="needs 'teacher:'"):
        train(cfg)


def test_token_classification_finetune_and_word_level_kd(data, tmp_path):
    model = {"kind": "pretrained", "name": "tiny-bert", "max_length": 48}
    cfg = run_config(tmp_path / "tagger", data["tag_train"], data["tag_dev"], task="token_classification",
                     model=model, epochs=10)
    tagger = train(cfg)
    metrics = read_manifest(tagger)["metrics"]["eval"]
    assert metrics["f1"] >= 0.8 and "token_accuracy" in metrics
    kd = run_config(tmp_path / "tag_kd", data["tag_train"], data["tag_dev"], task="token_classification",
                    method="kd", model={"kind": "truncated", "first": 1, "max_length": 48}, epochs=1)
    kd.teacher = str(tagger)
    student = train(kd)
    assert read_manifest(student)["metrics"]["eval"]["f1"] > 0.0
    pred = load(student).predict(["john mary went to paris"])[0]
    assert len(pred.tags) == 5


def _quiet_config(tmp_path: Path, data: dict, name: str, **train_args):
    model = {"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "dropout": 0.0, "encoder_dropout": 0.0}
    return run_config(tmp_path / name, data["train"], None, model=model, **train_args)


def test_gradient_accumulation_matches_a_larger_batch(data, tmp_path):
    # Two half batches accumulated equal one full batch when every half has the same number of rows.
    full = train(_quiet_config(tmp_path, data, "full", batch_size=16, grad_accum=1, epochs=1, max_grad_norm=None))
    accum = train(_quiet_config(tmp_path, data, "accum", batch_size=8, grad_accum=2, epochs=1, max_grad_norm=None))
    assert max_diff(weights(full), weights(accum)) < 1e-5


def _cli_env() -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def _write_recipe(cfg, path: Path) -> Path:
    dump_yaml(to_dict(cfg), path)
    return path


@pytest.mark.integration
def test_resume_after_kill_9_loses_only_steps_since_the_checkpoint(data, tmp_path):
    cfg = _quiet_config(tmp_path, data, "killed", batch_size=8, epochs=8, save_every=20, log_every=1)
    cfg.model.dropout = 0.1  # dropout on: the restored RNG state must reproduce the masks
    recipe = _write_recipe(cfg, tmp_path / "killed.yaml")
    command = [sys.executable, "-m", "summon.cli.main", "train", str(recipe)]
    proc = subprocess.Popen(command, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    complete = Path(cfg.output_dir) / "checkpoint" / "COMPLETE"
    deadline = time.monotonic() + 120
    while not complete.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the checkpoint, so steps are lost and must be redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed; make the run longer"
    before = events(Path(cfg.output_dir))
    killed_at = max(e.get("step", 0) for e in before)

    subprocess.run(command, env=_cli_env(), check=True, capture_output=True)
    after = events(Path(cfg.output_dir))
    resume = next(e for e in after if e.get("event") == "resume")
    assert resume["step"] > 0 and resume["step"] % 20 == 0
    assert resume["step"] <= killed_at < resume["step"] + 20 + 20  # at most the steps since the checkpoint are lost
    per_epoch = math.ceil(len(Path(data["train"]).read_text().splitlines()) / 8)
    epochs_after = [e for e in after[after.index(resume):] if e.get("event") == "epoch"]
    mid_epoch = resume["step"] % per_epoch != 0  # the resumed epoch's timing covers only its second part
    assert [e["partial"] for e in epochs_after] == [mid_epoch] + [False] * (len(epochs_after) - 1)
    cfg.output_dir = str(tmp_path / "reference")  # the same run, never interrupted, in the same environment
    reference = _write_recipe(cfg, tmp_path / "reference.yaml")
    subprocess.run([*command[:-1], str(reference)], env=_cli_env(), check=True, capture_output=True)
    assert max_diff(weights(tmp_path / "killed" / "model"), weights(tmp_path / "reference" / "model")) < 1e-6


@pytest.mark.integration
def test_two_processes_train_like_one_with_the_same_global_batch(data, tmp_path, free_port):
    one = train(_quiet_config(tmp_path, data, "one", batch_size=16, epochs=1))
    cfg = _quiet_config(tmp_path, data, "two", batch_size=16, epochs=1)
    recipe = _write_recipe(cfg, tmp_path / "two.yaml")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port), "-m", "summon.cli.main", "train", str(recipe)]
    result = subprocess.run(launch, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    start = events(Path(cfg.output_dir))[0]
    assert start["processes"] == 2
    assert max_diff(weights(one), weights(Path(cfg.output_dir) / "model")) < 1e-5


def test_resuming_with_another_configuration_is_refused_clearly(data, tmp_path):
    cfg = _quiet_config(tmp_path, data, "changed", batch_size=16, epochs=1)
    train(cfg)
    cfg.train.lr = 5e-4
    cfg.train.log_every = 3  # free to change: not reported
    with pytest.raises(ValueError, match=r"another configuration \(train.lr: 0.001 -> 0.0005\)"):
        train(cfg)


def test_settings_added_after_a_run_started_do_not_block_its_resumption(caplog):
    from summon.training.checkpoint import changed_keys

    saved = {"model": {"kind": "ngram"}, "train": {"lr": 0.001}}
    now = {"model": {"kind": "ngram", "defer_output": False}, "train": {"lr": 0.001}}
    with caplog.at_level("WARNING"):
        assert changed_keys(saved, now) == []
    assert "model.defer_output" in caplog.text
    assert changed_keys(now, saved) == ["model.defer_output: False -> None"]  # a setting removed still counts


def test_early_exit_distils_the_teacher_into_every_exit_when_asked(data, teacher, tmp_path):
    model = {"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "exits": "embeddings+all"}
    args = {"method_args": {"distill_teacher": 0.5, "consistency": 0.2}}
    cfg = run_config(tmp_path / "ee", data["train"], data["dev"], method="early_exit", model=model, epochs=1)
    with pytest.raises(ValueError, match=r"needs 'teacher:' for the options it was given"):
        train(replace(cfg, method_args=method_config("early_exit", args["method_args"])))
    cfg = replace(cfg, method_args=method_config("early_exit", args["method_args"]), teacher=str(teacher))
    out = train(cfg)
    predictor = load(out)
    assert predictor.num_stages == 3 and read_manifest(out)["architecture"]["exit_layers"] == [0, 1, 2]
    assert list((tmp_path / "cache").rglob("*")), "the teacher's logits were cached for the exits to read"
