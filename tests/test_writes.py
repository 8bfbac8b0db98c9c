"""Bad-input suite, destination class: nothing a command writes destroys what was there (issue 25, classes 1, 2, 8).

The one rule (:func:`summon.core.files.check_destination`): a command writes only into a new or empty folder (``summon
train`` also into its own run, to resume it), never into, over or around one of its inputs, and refuses before any
work starts. One ``summon train`` at a time holds an ``output_dir``; files are written with the user's umask; a
folder ``calibrate`` cannot write to is refused before the pass.

Each case runs the command line (``summon.cli.main.main``), checks the exit code and that the message names the
path, and compares a sha256 listing of the destination before and after: nothing there changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import sentiment_rows, write_jsonl

import summon
from summon.adaptive.staged import Calibrated
from summon.cli.main import main
from summon.core.files import LOCK_FILE, exclusive
from summon.models import ModelConfig, build_model
from summon.predictors.saved import MANIFEST, WEIGHTS, save_predictor
from summon.training import loop as loop_module

LABELS = ["neg", "pos"]


# --- helpers --------------------------------------------------------------------------------------


def listing(path: Path) -> dict[str, str | None]:
    """Every entry at ``path`` (a folder's, recursively; a file itself): its sha256, None for a folder."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


def refused(argv: list[str], capsys, destination: Path, *hints: str) -> str:
    """Run ``summon ARGV``: exit code 2, one ``summon: error:`` line holding every hint, and ``destination`` as it
    was. Returns the message."""
    before = listing(destination) if destination.exists() else None
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("summon: error: ") and "unexpected" not in err and "Traceback" not in err
    for hint in hints:
        assert hint in err, err
    assert (listing(destination) if destination.exists() else None) == before, "the destination changed"
    return err


def plain(root: Path, folder: str, seed: int = 0, **model: object) -> Path:
    """A saved untrained plain predictor: an n-gram model by default, any ModelConfig fields given."""
    cfg = ModelConfig(**(model or {"kind": "ngram", "num_buckets": 256, "embed_dim": 8}), init_seed=seed)
    built = build_model(cfg, "classification", len(LABELS))
    return save_predictor(root / folder, built.model, built.featurizer, "classification", LABELS, built.architecture)


def exportable(root: Path) -> Path:
    return plain(root, "bert", 1, name="tiny-bert", pooling="pooler", max_length=32)


def recipe(root: Path, out: Path, *, epochs: int = 1) -> Path:
    """A tiny n-gram fine-tuning recipe writing to ``out`` (no eval split: the model is saved at the end)."""
    data = write_jsonl(root / "train.jsonl", sentiment_rows(48, 1))
    path = root / f"recipe_{out.name}.yaml"
    path.write_text(f"method: finetune\noutput_dir: {out}\ncache_dir: {root / 'cache'}\n"
                    f"data:\n  train: {{path: {data}, task: classification}}\n"
                    "model: {kind: ngram, num_buckets: 256, embed_dim: 8}\n"
                    f"train: {{epochs: {epochs}, batch_size: 16, lr: 0.05, progress: false, save_every: 50}}\n"
                    "cost: {latency: false}\n")
    return path


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` unwritable while the block runs: mode 0o555, or, for root (whom modes do not stop), immutable."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, which permissions do not stop, and chattr +i is unavailable here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


# --- 1. one rule for every destination ------------------------------------------------------------


def test_export_onto_its_own_source_is_refused(tmp_path, capsys):
    model = exportable(tmp_path)
    refused(["export", str(model), str(model)], capsys, model, f"{model} is the predictor being exported",
            "Choose another OUT")
    summon.load(model, device="cpu")  # still loads


def test_export_inside_its_own_source_is_refused(tmp_path, capsys):
    model = exportable(tmp_path)
    refused(["export", str(model), str(model / "hf")], capsys, model, f"{model / 'hf'} is inside the predictor "
            f"being exported ({model})")


def test_export_into_a_non_empty_folder_is_refused(tmp_path, capsys):
    model, out = exportable(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    refused(["export", str(model), str(out)], capsys, out, f"{out} already holds 1 entry (notes.txt)",
            f"delete {out} yourself first")


def test_export_below_a_file_is_refused(tmp_path, capsys):
    model, blocker = exportable(tmp_path), tmp_path / "blocker"
    blocker.write_text("a file\n")
    refused(["export", str(model), str(blocker / "out")], capsys, blocker, f"{blocker / 'out'}: {blocker} is a file")


def test_export_into_a_new_or_empty_folder_still_works(tmp_path, capsys):
    model, out = exportable(tmp_path), tmp_path / "empty"
    out.mkdir()
    assert main(["export", str(model), str(out)]) == 0
    assert (out / "config.json").is_file()


def test_quantize_onto_an_existing_predictor_is_refused(tmp_path, capsys):
    source, other = plain(tmp_path, "a"), plain(tmp_path, "b", 1)
    refused(["quantize", str(source), str(other)], capsys, other, f"{other} already holds a saved 'summon-predictor'",
            "Choose another OUT")


def test_quantize_onto_a_file_is_refused(tmp_path, capsys):
    source, file = plain(tmp_path, "a"), tmp_path / "int8"
    file.write_text("not a folder\n")
    refused(["quantize", str(source), str(file)], capsys, file, f"{file} is a file")


def test_quantize_onto_its_own_folder_is_refused(tmp_path, capsys):
    source = plain(tmp_path, "a")
    refused(["quantize", str(source), str(source)], capsys, source,
            f"{source} is the folder of the predictor being quantized")


def test_quantize_of_a_cascade_inside_a_stage_folder_is_refused(tmp_path, capsys):
    first, second = plain(tmp_path, "s0"), plain(tmp_path, "s1", 1)
    cascade = tmp_path / "cascade"
    summon.cascade([str(first), str(second)], out=cascade, device="cpu")
    refused(["quantize", str(cascade), str(second / "int8")], capsys, second,
            f"{second / 'int8'} is inside the folder of stage 'stage1' ({second})")


def test_quantize_into_a_folder_it_cannot_write_is_refused_before_the_work(tmp_path, capsys):
    source, shared = plain(tmp_path, "a"), tmp_path / "shared"
    shared.mkdir()
    with read_only(shared):
        refused(["quantize", str(source), str(shared / "int8")], capsys, shared,
                f"{shared} cannot be written by this user", "so the int8 predictor cannot be saved there")


def test_cascade_into_a_stage_folder_is_refused(tmp_path, capsys):
    first, second = plain(tmp_path, "s0"), plain(tmp_path, "s1", 1)
    refused(["cascade", str(first), str(second), "--out", str(first)], capsys, first,
            f"{first} is the folder of stage 'stage0'")


def test_cascade_into_a_folder_holding_another_cascade_is_refused(tmp_path, capsys):
    first, second = plain(tmp_path, "s0"), plain(tmp_path, "s1", 1)
    out = tmp_path / "cascade"
    assert main(["cascade", str(first), str(second), "--out", str(out)]) == 0
    refused(["cascade", str(second), str(first), "--out", str(out)], capsys, out,
            f"{out} already holds a saved 'summon-cascade'")


def test_train_into_a_folder_holding_another_predictor_is_refused(tmp_path, capsys):
    other = plain(tmp_path, "other")
    refused(["train", str(recipe(tmp_path, other))], capsys, other,
            f"{other} already holds a saved 'summon-predictor'", "Choose another output_dir")


def test_train_into_a_folder_holding_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")  # a name a run writes, but alone it is not a run
    refused(["train", str(recipe(tmp_path, out))], capsys, out, f"{out} already holds 1 entry (config.yaml)")


def test_train_again_in_its_own_folder_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    path = recipe(tmp_path, out)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 0  # the same run: resumed (here: already done), not refused
    events = [json.loads(line).get("event") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("resume") == 1
    assert not (out / LOCK_FILE).exists()


# --- 2. one writer per run folder -----------------------------------------------------------------


def test_a_second_train_on_a_held_output_dir_stops_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    path = recipe(tmp_path, out)
    with exclusive(out):  # another run holds the folder (the lock is per open file, so this process counts)
        refused(["train", str(path)], capsys, out,
                f"{out} is in use by another summon run (pid {os.getpid()})", "choose another output_dir")
    assert not out.exists()  # the holder created the folder and leaves nothing behind


def test_a_stale_lock_of_an_ended_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{dead_pid()}\n")  # what a killed run leaves
    assert main(["train", str(recipe(tmp_path, out))]) == 0
    assert (out / "model" / MANIFEST).is_file() and not (out / LOCK_FILE).exists()


@pytest.mark.integration
def test_two_train_processes_on_one_output_dir(tmp_path):
    """The second of two real runs on one output_dir stops at once naming the first's pid; the first's folder holds
    one run; after the first is killed, its lock is taken over and the run resumes."""
    out = tmp_path / "run"
    path = recipe(tmp_path, out, epochs=100_000)  # never ends by itself: it is killed once the second is refused
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "summon.cli.main", "train", str(path)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started; make it longer"
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused; make it longer"
        assert second.returncode == 2, second.stderr
        assert f"{out} is in use by another summon run (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    starts = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"event": "start"' in line]
    assert len(starts) == 1  # only the first run wrote there
    assert (out / LOCK_FILE).read_text().strip() == str(first.pid)  # left by the kill: stale now


# --- 8. files others can read, writable folders ---------------------------------------------------


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_weights_are_written_with_the_users_umask(tmp_path, capsys, mask, mode):
    old = os.umask(mask)
    try:
        model = exportable(tmp_path)
        assert main(["quantize", str(model), str(tmp_path / "int8")]) == 0
        assert main(["export", str(model), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    for folder in (model, tmp_path / "int8", tmp_path / "hf"):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        assert {p.relative_to(folder).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
            p.relative_to(folder).as_posix(): oct(mode) for p in files}


def test_weights_of_a_training_run_follow_the_umask(tmp_path, capsys):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", str(recipe(tmp_path, out))]) == 0
    finally:
        os.umask(old)
    for path in (out / "model" / WEIGHTS, out / "checkpoint" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_calibrate_of_a_folder_it_cannot_write_is_refused_before_the_pass(tmp_path, capsys, monkeypatch):
    first, second = plain(tmp_path, "s0"), plain(tmp_path, "s1", 1)
    cascade = tmp_path / "cascade"
    summon.cascade([str(first), str(second)], out=cascade, device="cpu")
    data = write_jsonl(tmp_path / "cal.jsonl", sentiment_rows(60, 2))

    def no_pass(*args, **kwargs):
        raise AssertionError("the calibration pass ran before the folder was checked")

    monkeypatch.setattr(Calibrated, "calibrate", no_pass)
    with read_only(cascade):
        refused(["calibrate", str(cascade), "--data", str(data), "--no-latency"], capsys, cascade,
                f"{cascade} cannot be written by this user", "calibrate the copy")


# --- conventions: training metrics to the trackers accelerate supports ----------------------------


def test_report_to_tensorboard_logs_the_training_metrics_offline(tmp_path, capsys):
    """``summon train --report-to tensorboard`` writes TensorBoard event files under OUTPUT_DIR/trackers holding
    the loss curve, beside metrics.jsonl; a resumed run's folder (with trackers/ in it) is its own."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", str(recipe(tmp_path, out, epochs=2)), "--report-to", "tensorboard", "train.log_every=1"]) == 0
    events = sorted((out / "trackers").rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.rglob("*"))
    scalars = {}
    for event in events:  # the run's scalars, and the hyper-parameters' own file
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        scalars.update({tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]})
    assert len(scalars["loss"]) >= 2 and "lr" in scalars  # one point per logged step
    assert main(["train", str(recipe(tmp_path, out, epochs=2)), "--report-to", "tensorboard"]) == 0  # done: no refusal


def test_report_to_an_unknown_or_missing_tracker_is_refused_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", str(recipe(tmp_path, out)), "--report-to", "tensorbord"]) == 2
    assert "report_to: unknown tracker(s) 'tensorbord'" in capsys.readouterr().err and not out.exists()
    real = loop_module.importlib.util.find_spec
    monkeypatch.setattr(loop_module.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else
                        real(name, *a))
    assert main(["train", str(recipe(tmp_path, out)), "--report-to", "mlflow"]) == 2
    assert "train.report_to: mlflow needs its package: pip install mlflow" in capsys.readouterr().err
