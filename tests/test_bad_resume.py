"""Bad inputs to a resumption: planted pickles, old checkpoints, damaged files, changed data or settings.

A resumption never unpickles anything, refuses what it cannot trust with a ValueError that names the file,
key or data and what to do, leaves the run folder untouched when it refuses, and otherwise continues
exactly as an uninterrupted run (same weights, same learning-rate schedule).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import run_config, sentiment_rows, write_jsonl

from summon.training.loop import MetricsLog, train

OLD_NAMES = ("optimizer.bin", "scheduler.bin", "sampler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl")
SAVE_EVERY, STOP_AT = 4, 6  # the interrupted run dies at step 6, two steps after its checkpoint at step 4


class Planted:
    """Unpickling this creates the directory ``marker``: proof that a file was loaded with pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


class Interrupted(Exception):
    pass


def config(out: Path, train_file: Path, **train_args):
    """The run every test resumes: 48 rows, 6 batches an epoch, 12 steps, dropout on (RNG state matters)."""
    args = {"batch_size": 8, "epochs": 2, "save_every": SAVE_EVERY, "log_every": 1, **train_args}
    model = {"kind": "pretrained", "name": "tiny-bert", "max_length": 32, "dropout": 0.1}
    return run_config(out, train_file, None, model=model, **args)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lrs_of_last_session(out: Path, after_step: int) -> list[tuple[int, float]]:
    """The learning rates logged after ``after_step`` since the run last started or resumed."""
    logged = events(out)
    start = max(i for i, e in enumerate(logged) if e.get("event") in ("start", "resume"))
    return [(e["step"], e["lr"]) for e in logged[start:] if "lr" in e and e["step"] > after_step]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def plant(folder: Path, marker: Path, names=OLD_NAMES) -> None:
    for name in names:
        torch.save({"state": Planted(marker)}, folder / name)  # what accelerate's save_state wrote, made hostile


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("bad_resume_data") / "train.jsonl", sentiment_rows(48, 7))


@pytest.fixture(scope="module")
def reference(train_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    train(config(out, train_file))
    return out


@pytest.fixture(scope="module")
def interrupted(train_file, tmp_path_factory) -> Path:
    """A run that died at step 6 (after its checkpoint at step 4), as a kill would leave it."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    write = MetricsLog.write

    def dying_write(self, record):
        if record.get("step") == STOP_AT and "lr" in record:
            raise Interrupted
        write(self, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MetricsLog, "write", dying_write)
        with pytest.raises(Interrupted):
            train(config(out, train_file))
    return out


@pytest.fixture
def run(interrupted, tmp_path) -> Path:
    """A private copy of the interrupted run (output_dir is free to change on resumption)."""
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    return out


@pytest.fixture
def edit_data(train_file):
    """Rewrite the training file for one test; restored afterwards."""
    original = train_file.read_bytes()
    yield lambda rows: write_jsonl(train_file, rows)
    train_file.write_bytes(original)


def refused(out: Path, train_file: Path, match: str, **train_args) -> str:
    """Resume ``out``; assert a ValueError matching ``match`` and that no file in ``out`` changed."""
    before = snapshot(out)
    with pytest.raises(ValueError, match=match) as info:
        train(config(out, train_file, **train_args))
    assert snapshot(out) == before
    return str(info.value)


# --- resuming what was written ----------------------------------------------------------------------


def test_resume_after_an_interruption_matches_an_uninterrupted_run(run, reference, train_file):
    train(config(run, train_file))
    resume = next(e for e in events(run) if e.get("event") == "resume")
    assert resume["step"] == SAVE_EVERY
    assert_same_weights(run, reference)
    assert lrs_of_last_session(run, SAVE_EVERY) == lrs_of_last_session(reference, SAVE_EVERY)  # the schedule resumed where it was


def test_a_checkpoint_holds_only_json_and_safetensors(interrupted):
    checkpoint = interrupted / "checkpoint"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["COMPLETE", "checkpoint.json", "data.json", "model.safetensors", "optimizer.json",
                     "optimizer.safetensors", "rng_0.json", "rng_0.safetensors", "run_config.json",
                     "scheduler.json", "trainer.json"]
    for name in names:
        head = (checkpoint / name).read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{name} looks like a pickle or a torch.save archive"
    assert not [p for p in interrupted.rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pth")]


def test_resume_never_calls_torch_load_or_pickle(run, reference, train_file, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a resumption unpickled something")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, forbidden)
    train(config(run, train_file))
    assert_same_weights(run, reference)


def test_free_to_change_settings_resume_unchanged(run, reference, train_file):
    train(config(run, train_file, log_every=3, save_every=5, eval_batch_size=7))
    assert_same_weights(run, reference)


def test_an_interrupted_swap_resumes_from_the_previous_checkpoint(run, reference, train_file):
    checkpoint = run / "checkpoint"
    checkpoint.rename(run / "checkpoint.previous")  # killed between the two renames of a swap
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"half")
    train(config(run, train_file))
    assert next(e for e in events(run) if e.get("event") == "resume")["step"] == SAVE_EVERY
    assert_same_weights(run, reference)
    assert not (run / "checkpoint.previous").exists()


# --- pickles are never opened -------------------------------------------------------------------------


def test_planted_pickles_under_every_old_name_are_never_loaded(run, reference, train_file, tmp_path):
    marker = tmp_path / "code_ran"
    plant(run / "checkpoint", marker)
    train(config(run, train_file))
    assert not marker.exists()
    assert_same_weights(run, reference)
    plant(run, marker)  # beside the run: files no run writes, so the folder is no longer this run's (issue 25)
    refused(run, train_file, r"already holds 5 entries \(custom_checkpoint_0.pkl, optimizer.bin, ")
    assert not marker.exists()
    torch.load(run / "optimizer.bin", weights_only=False)  # the planted file is live: loading it runs code
    assert marker.exists()


def test_a_pickle_in_a_half_written_staging_folder_is_never_loaded(run, reference, train_file, tmp_path):
    marker = tmp_path / "code_ran"
    staging = run / "checkpoint.staging"
    staging.mkdir()
    plant(staging, marker)
    (staging / "COMPLETE").write_text("ok\n")
    train(config(run, train_file))
    assert not marker.exists() and not staging.exists()
    assert_same_weights(run, reference)


def test_an_old_pickled_checkpoint_is_refused_and_not_opened(run, train_file, tmp_path):
    checkpoint = run / "checkpoint"
    for path in checkpoint.iterdir():
        if path.name not in ("model.safetensors", "run_config.json", "COMPLETE"):
            path.unlink()
    marker = tmp_path / "code_ran"
    plant(checkpoint, marker)
    message = refused(run, train_file, "written by an older summon")
    assert f"Delete {checkpoint} to start this run over" in message
    assert "optimizer.bin" in message and not marker.exists()


# --- damaged checkpoints ----------------------------------------------------------------------------


def test_a_truncated_model_file_is_refused_naming_it(run, train_file):
    model = run / "checkpoint" / "model.safetensors"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[: size // 2])
    refused(run, train_file, rf"{model} has {size // 2} bytes where {size} were written: it was truncated")


def test_flipped_bytes_in_the_optimizer_state_are_refused_naming_the_file(run, train_file):
    optimizer = run / "checkpoint" / "optimizer.safetensors"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    refused(run, train_file, rf"{optimizer} changed after it was written")


def test_a_missing_scheduler_state_is_refused_naming_the_file(run, train_file):
    (run / "checkpoint" / "scheduler.json").unlink()
    refused(run, train_file, rf"{run / 'checkpoint' / 'scheduler.json'} is missing")


def test_an_unreadable_manifest_is_refused_naming_it(run, train_file):
    manifest = run / "checkpoint" / "checkpoint.json"
    manifest.write_text('{"format": "summon-checkpoint", "files": {')
    refused(run, train_file, rf"{manifest} is not readable JSON")


def test_a_checkpoint_without_its_manifest_is_refused(run, train_file):
    (run / "checkpoint" / "checkpoint.json").unlink()
    refused(run, train_file, rf"{run / 'checkpoint'} is not a complete checkpoint: checkpoint.json is missing")


# --- changed settings or data -------------------------------------------------------------------------


def test_a_changed_setting_that_is_not_free_is_refused_naming_the_key(run, train_file):
    message = refused(run, train_file, r"another configuration \(train.weight_decay: 0.01 -> 0.1\)", weight_decay=0.1)
    assert "Use a new output_dir" in message


def test_added_training_rows_are_refused_naming_the_data(run, train_file, edit_data):
    edit_data(sentiment_rows(48, 7) + sentiment_rows(8, 8))
    message = refused(run, train_file, r"data.train changed since the checkpoint")
    assert str(train_file) in message and "it has 56 examples instead of 48" in message
    assert f"delete {run / 'checkpoint'} to start this run over" in message


def test_an_edited_label_is_refused_even_with_the_same_number_of_rows(run, train_file, edit_data):
    rows = sentiment_rows(48, 7)
    rows[10]["label"] = "pos" if rows[10]["label"] == "neg" else "neg"
    edit_data(rows)
    message = refused(run, train_file, r"data.train changed since the checkpoint")
    assert "same number of examples (48) but other texts or labels" in message


def test_renamed_labels_are_refused_naming_both_label_sets(run, train_file, edit_data):
    edit_data([{**row, "label": row["label"].upper()} for row in sentiment_rows(48, 7)])
    message = refused(run, train_file, r"data.train changed since the checkpoint")
    assert "label names are ['NEG', 'POS'] instead of ['neg', 'pos']" in message
