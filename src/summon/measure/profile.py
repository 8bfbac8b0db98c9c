"""A bare model's cost on real featurized examples: parameters, FLOPs per example and forward latency.

The model runs as a one-stage :class:`ModelRunner`, so its FLOPs are counted by the one cost measurement
(:func:`summon.measure.stage_costs.measure_costs`) and its latency timed by the one timing loop
(:func:`summon.measure.timing.time_call`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from summon.data.batching import to_device
from summon.data.features import Feature, collate
from summon.measure import stage_costs
from summon.measure.cost import count_parameters, eval_mode, machine_info
from summon.measure.device import device_of
from summon.measure.timing import time_call

FLOP_BATCH = 32  # rows per length-sorted batch when counting FLOPs

LATENCY_INCLUDES = ("the model's forward alone: median milliseconds of model(batch) on one batch of bs rows (the "
                    "split's first rows, cycled), already collated, padded and on the device; tokenisation, "
                    "collation and the copy to the device are not inside")


@dataclass
class ModelRunner:
    """A bare model as a one-stage runner for :func:`~summon.measure.stage_costs.measure_costs`: featurized
    examples collated (:func:`~summon.data.features.collate`, padded to the longest row) and moved to ``device``
    (``begin``), then ``model(batch)`` (``run``, which returns the batch and the model's raw output)."""

    model: Any
    pad_id: int
    device: torch.device | str
    num_stages: ClassVar[int] = 1

    def length(self, feature: Feature) -> int:
        return len(feature["input_ids"])

    def begin(self, stage: int, pieces: Sequence[Feature]) -> dict[str, torch.Tensor]:
        return to_device(collate(list(pieces), self.pad_id), self.device)

    def run(self, stage: int, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        return batch, self.model(batch)

    def unpack(self, stage: int, state: Any, rows: Sequence[int]) -> list[tuple[Any, int]]:
        raise RuntimeError("a one-stage predictor hands nothing on: its only stage is the last")


def measure_costs(model: nn.Module, features: Sequence[Feature], pad_id: int, *, latency: bool = True,
                  batch_sizes: Sequence[int] = (1, 32, 128), max_seconds: float = 10.0,
                  flop_examples: int = 512) -> dict[str, Any]:
    """Cost of ``model`` on these featurized examples, with the model in eval mode (each submodule's mode is
    restored afterwards).

    FLOPs are counted by torch over the first ``flop_examples`` examples in length-sorted batches of 32 with
    dynamic padding, and divided once by the number of examples: the one cost measurement
    (:func:`~summon.measure.stage_costs.measure_costs`) over the model as a one-stage :class:`ModelRunner`.

    Latency (with ``latency``) is model-only: for each batch size ``bs``, the wall-clock time of ``model(batch)``
    on one batch of the first ``bs`` examples in data order (cycled if the split is smaller), built once and
    already on the model's device, so tokenisation, collation and the copy to the device are not inside (the
    staged predictors' costs, :data:`~summon.measure.stage_costs.MS_INCLUDES`, include featurisation instead).
    It is timed by the one timing loop (:func:`~summon.measure.timing.time_call`: warm-up, then timed runs, with
    ``max_seconds`` spread evenly over the batch sizes). ``latency_includes`` says it with the numbers.

    Returns:
        ``{"params", "flops_per_example", "flop_examples", "machine"}`` and, with ``latency``, ``"latency":
        {str(bs): {"median_ms", "p90_ms", "per_example_ms", "runs"}}`` and ``"latency_includes"``.
    """
    if not features:
        raise ValueError("cost measurement needs at least one example")
    sizes = [int(bs) for bs in batch_sizes] if latency else []
    if latency and (not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                                     for b in batch_sizes)):
        raise ValueError(f"batch_sizes must be a non-empty list of positive integers, got {batch_sizes!r}.")
    device = device_of(model)
    runner = ModelRunner(model, pad_id, device)
    with eval_mode(model):
        counted = stage_costs.measure_costs(runner, features, latency=False, rows=flop_examples,
                                            batch_size=FLOP_BATCH)
        costs: dict[str, Any] = {"params": count_parameters(model), "flops_per_example": counted.flops_full,
                                 "flop_examples": min(len(features), flop_examples), "machine": machine_info(device)}
        if latency:
            budget = max_seconds / len(sizes)
            costs["latency"] = {str(bs): _forward_ms(runner, features, bs, budget) for bs in sizes}
            costs["latency_includes"] = LATENCY_INCLUDES
    return costs


@torch.inference_mode()
def _forward_ms(runner: ModelRunner, features: Sequence[Feature], bs: int, budget: float) -> dict[str, float | int]:
    """Milliseconds of the model's forward on one batch of ``bs`` rows (:data:`LATENCY_INCLUDES`)."""
    batch = runner.begin(0, [features[i % len(features)] for i in range(bs)])
    ms = np.asarray(time_call(partial(runner.run, 0, batch), device=runner.device, max_seconds=budget)) * 1e3
    median = float(np.median(ms))
    return {"median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "per_example_ms": median / bs,
            "runs": int(ms.size)}
