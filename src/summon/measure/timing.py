"""Wall-clock timing of the parts of a training step (teacher forward, student forward, backward).

On a GPU, kernels run asynchronously: :func:`~summon.measure.device.clock` synchronises the device first, as the sub-structured
KD paper's code does (``cuda.synchronize`` + ``perf_counter``), so each part is charged its own work. On a
CPU there is nothing to wait for and it is a plain ``perf_counter``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from summon.measure.device import clock

__all__ = ["SECONDS_SUFFIX", "clock", "epoch_seconds", "seconds", "time_ratios"]

SECONDS_SUFFIX = "_seconds"  # step outputs named like this are summed per epoch by the training loop


def seconds(value: float) -> torch.Tensor:
    """A duration as the 0-d tensor the loop logs (it averages tensor parts and sums ``*_seconds`` per epoch)."""
    return torch.tensor(float(value))


def epoch_seconds(metrics_path: str | Path) -> dict[str, float]:
    """Mean seconds per complete epoch of a run, part by part, from its ``metrics.jsonl`` (the loop's ``epoch``
    records; of an epoch recorded twice after a resumption, the last complete one). ``train`` is the whole epoch;
    the other keys are the step's timed parts (e.g. ``teacher_forward``, ``student_forward``, ``kd``,
    ``gold_nll``) and ``backward`` (with the optimizer step). A part missing from some epochs counts 0 there."""
    by_epoch: dict[int, dict[str, float]] = {}
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "epoch" and not record.get("partial"):
            by_epoch[record["epoch"]] = record["seconds"]
    if not by_epoch:
        raise ValueError(f"{metrics_path}: no complete epoch recorded (was the run cut short?)")
    parts = sorted({k for seconds_ in by_epoch.values() for k in seconds_})
    return {k: sum(e.get(k, 0.0) for e in by_epoch.values()) / len(by_epoch) for k in parts}


def time_ratios(runs: dict[str, dict[str, float]], baseline: str) -> dict[str, dict[str, float | None]]:
    """Each run's epoch time and KD-term time over ``baseline``'s: ``{run: {"epoch": ..., "kd": ...}}``.

    ``runs`` maps names to :func:`epoch_seconds` results. The epoch ratio is what the sub-structured KD paper
    reports (about 0.5 against structural KD); the KD-term ratio isolates the method from the encoder
    and the teacher. A ratio is None where the baseline's part is 0 or missing.
    """
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not among the runs {sorted(runs)}")
    base = runs[baseline]

    def ratio(value: float | None, ref: float | None) -> float | None:
        return None if value is None or not ref else value / ref

    return {name: {"epoch": ratio(parts.get("train"), base.get("train")), "kd": ratio(parts.get("kd"), base.get("kd"))}
            for name, parts in runs.items()}
