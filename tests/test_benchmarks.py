"""Smoke tests of the benchmark scripts: a tiny model and a handful of real sentences, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.mark.integration
@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason=f"CoNLL-2003 not found under {SHARED_DATA}")
def test_structured_kd_benchmark_smoke(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "structured_kd.py"), "--task", "chunking",
           "--teacher-model", "tiny-bert", "--train-limit", "16", "--dev-limit", "8", "--test-limit", "8",
           "--epochs", "1", "--override", "train.batch_size=8", "--override", "model.max_length=48",
           "--work", str(tmp_path / "work"), "--out", str(out), "--data-dir", str(SHARED_DATA)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = {"substructure", "substructure_emissions_only", "marginal_kl", "topk", "gold_only"}
    assert set(result["f1"]) == methods | {"teacher"} and set(result["token_accuracy"]) == set(result["f1"])
    assert set(result["epoch_time_ratio_vs_marginal"]) == methods
    assert result["epoch_time_ratio_vs_marginal"]["marginal_kl"] == 1.0
    for method in methods:
        parts = result["epoch_seconds_parts"][method]
        assert {"teacher_forward", "student_forward", "backward"} <= set(parts)  # and the KD terms timed apart
        assert (parts["teacher_forward"] > 0) == (method != "gold_only")
    assert result["train_subset"] == 16 and result["epochs"] == 1 and result["seed"] == 42 and result["commit"]


def test_train_seconds_counts_each_session_but_not_the_gap_between(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from _common import train_seconds

    records = [{"time": 100.0, "event": "start"}, {"time": 130.0, "step": 10},  # 30 s, then killed
               {"time": 1000.0, "event": "resume"}, {"time": 1020.0, "step": 20},  # 20 s after a long gap
               {"time": 1025.0, "event": "done"}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert train_seconds(tmp_path) == 55.0
