"""Wall-clock timing: the one timing loop (:func:`time_calls`, :func:`time_call`) that every latency summon reports
goes through, and the parts of a training step (teacher forward, student forward, backward).

On a GPU, kernels run asynchronously: :func:`~summon.measure.device.clock` synchronises the device first, as the sub-structured
KD paper's code does (``cuda.synchronize`` + ``perf_counter``), so each part is charged its own work. On a
CPU there is nothing to wait for and it is a plain ``perf_counter``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from summon.measure.device import clock

__all__ = ["MAX_SECONDS", "MIN_RUNS", "REPEATS", "SECONDS_SUFFIX", "WARMUP", "clock", "epoch_seconds", "median_call",
           "seconds", "time_call", "time_calls", "time_ratios"]

SECONDS_SUFFIX = "_seconds"  # step outputs named like this are summed per epoch by the training loop

WARMUP = 2  # untimed rounds first (caches, lazy initialisation, the allocator)
REPEATS = 10  # timed rounds wanted
MAX_SECONDS = 10.0  # timing stops early once this much time has passed ...
MIN_RUNS = 3  # ... but never with fewer timed rounds than this (or than ``repeats``, when fewer are asked)


def time_calls(*calls: Callable[[], Any], device: torch.device | str | None = None, warmup: int = WARMUP,
               repeats: int = REPEATS, max_seconds: float = MAX_SECONDS) -> list[list[float]]:
    """Seconds of each timed call of each function: the one timing loop of summon.

    The rule: ``warmup`` untimed rounds, then timed rounds until there are ``repeats`` of them, or fewer once
    ``max_seconds`` of timed rounds have passed and at least ``min(MIN_RUNS, repeats)`` are done. In each round
    the functions run in turn, so load on the machine hits them alike (two functions compared are interleaved).
    Each call is timed with :func:`~summon.measure.device.clock` on ``device``, which waits for the work queued
    on a GPU before reading the time, so a call is charged its own kernels.

    Args:
        calls: functions taking no arguments (their results are dropped).
        device: where the calls queue work (None: nothing to wait for).

    Returns:
        One list of seconds per function, ``[rounds]`` each.

    Raises:
        ValueError: without a function, or for ``warmup < 0``, ``repeats < 1`` or ``max_seconds < 0``.
    """
    if not calls:
        raise ValueError("time_calls needs at least one function to time")
    if warmup < 0 or repeats < 1 or not max_seconds >= 0:
        raise ValueError(f"need warmup >= 0, repeats >= 1 and max_seconds >= 0, got warmup={warmup}, "
                         f"repeats={repeats}, max_seconds={max_seconds}")
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    least = min(MIN_RUNS, repeats)
    began = time.perf_counter()
    while len(times[0]) < repeats and (len(times[0]) < least or time.perf_counter() - began < max_seconds):
        for call, spent in zip(calls, times, strict=True):
            start = clock(device)
            call()
            spent.append(clock(device) - start)
    return times


def time_call(fn: Callable[[], Any], **rule: Any) -> list[float]:
    """Seconds of each timed call of ``fn`` under :func:`time_calls`' rule (``device``, ``warmup``, ``repeats``,
    ``max_seconds``)."""
    return time_calls(fn, **rule)[0]


def median_call(fn: Callable[[], Any], **rule: Any) -> float:
    """Median seconds of ``fn`` (:func:`time_call`)."""
    return statistics.median(time_call(fn, **rule))


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
