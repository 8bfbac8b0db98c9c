"""What answering at each stage costs: FLOPs counted by torch and milliseconds measured on this machine.

Answering at stage k pays for everything run so far: the input stage, the compute of stages 0..k and
the read-outs (exit heads) of stages 0..k. The reference "full model" runs all the compute and only the
last read-out — the model as it would run without any exit — so cost fractions are honest about the
heads' overhead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from summon.measure.cost import FlopMeter
from summon.measure.device import clock, device_name


@dataclass
class StageCosts:
    """Cumulative cost of answering at each stage, and of the plain full model, per example."""

    flops: list[float]  # [S] FLOPs per example when answering at stage k
    flops_full: float
    ms: list[float] | None = None  # [S] milliseconds per example at ``batch_size``, when measured
    ms_full: float | None = None
    batch_size: int | None = None
    device: str | None = None  # where the milliseconds were measured

    def fractions(self, unit: str = "flops") -> list[float]:
        """Cost of answering at each stage as a fraction of the full model, in ``flops`` or ``ms``."""
        if unit == "flops":
            return [f / self.flops_full for f in self.flops]
        if unit == "ms":
            if self.ms is None or not self.ms_full:
                raise ValueError("no measured latency in these costs; measure them with latency=True")
            return [m / self.ms_full for m in self.ms]
        raise ValueError(f"cost unit must be 'flops' or 'ms', got {unit!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageCosts:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _parts(model: Any, batch: dict[str, torch.Tensor], run: Any) -> tuple[float, list[float], list[float]]:
    """Cost of the input stage, of each stage's compute and of each read-out, using ``run(fn, *args)``."""
    state, begin = run(model.begin, batch)
    compute, readout = [], []
    for k in range(model.num_stages):
        state, c = run(model.run_to, k, state)
        _, r = run(model.exit_logits, k, state)
        compute.append(c)
        readout.append(r)
    return begin, compute, readout


def _cumulate(begin: float, compute: Sequence[float], readout: Sequence[float]) -> tuple[list[float], float]:
    stages, total = [], begin
    for c, r in zip(compute, readout, strict=True):
        total += c + r
        stages.append(total)
    return stages, begin + sum(compute) + readout[-1]


@torch.inference_mode()
def stage_flops(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> tuple[list[float], float]:
    """FLOPs per example of answering at each stage, and of the full model, averaged over ``batches``."""
    meter = FlopMeter()
    sums = None
    examples = 0
    for batch in batches:
        begin, compute, readout = _parts(model, batch, meter)
        stages, full = _cumulate(begin, compute, readout)
        row = [*stages, full]
        sums = row if sums is None else [a + b for a, b in zip(sums, row, strict=True)]
        examples += batch["input_ids"].shape[0]
    if not examples:
        raise ValueError("stage_flops needs at least one non-empty batch")
    per_example = [s / examples for s in sums]
    return per_example[:-1], per_example[-1]


def _timer(device: torch.device) -> Any:
    """``run(fn, *args) -> (value, milliseconds)``, the device's queued work included."""
    def run(fn: Any, *args: Any) -> tuple[Any, float]:
        start = clock(device)
        value = fn(*args)
        return value, (clock(device) - start) * 1000.0

    return run


@torch.inference_mode()
def stage_latency(model: Any, batch: dict[str, torch.Tensor], *, warmup: int = 2, repeats: int = 10,
                  max_seconds: float = 10.0) -> tuple[list[float], float]:
    """Milliseconds per example to answer at each stage, and for the full model, on ``batch``.

    Each piece (input stage, each stage's compute, each read-out) is timed within full passes over the
    batch; the median of each piece over the passes is summed into cumulative stage times.
    """
    timer = _timer(batch["input_ids"].device)
    for _ in range(warmup):
        _parts(model, batch, timer)
    runs = []
    started = time.perf_counter()
    while len(runs) < repeats and (len(runs) < 3 or time.perf_counter() - started < max_seconds):
        runs.append(_parts(model, batch, timer))
    begin = statistics.median(r[0] for r in runs)
    compute = [statistics.median(r[1][k] for r in runs) for k in range(model.num_stages)]
    readout = [statistics.median(r[2][k] for r in runs) for k in range(model.num_stages)]
    stages, full = _cumulate(begin, compute, readout)
    size = batch["input_ids"].shape[0]
    return [s / size for s in stages], full / size


def measure_stage_costs(model: Any, batches: Sequence[dict[str, torch.Tensor]],
                        latency_batch: dict[str, torch.Tensor] | None = None, **latency_kwargs: Any) -> StageCosts:
    """FLOPs over ``batches`` and, if ``latency_batch`` is given, measured milliseconds on it."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        flops, flops_full = stage_flops(model, batches)
        costs = StageCosts(flops=flops, flops_full=flops_full)
        if latency_batch is not None:
            costs.ms, costs.ms_full = stage_latency(model, latency_batch, **latency_kwargs)
            costs.batch_size = int(latency_batch["input_ids"].shape[0])
            costs.device = device_name(latency_batch["input_ids"].device)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return costs
