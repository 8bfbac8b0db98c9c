"""Measure a model's cost on real featurized examples: parameters, FLOPs per example and latency."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from summon.data.features import Feature, collate
from summon.inference import length_sorted_batches, to_device
from summon.measure.cost import count_flops, count_parameters, machine_info, measure_latency
from summon.measure.device import device_of


def measure_costs(model: nn.Module, features: Sequence[Feature], pad_id: int, *, latency: bool = True,
                  batch_sizes: Sequence[int] = (1, 32, 128), max_seconds: float = 10.0,
                  flop_examples: int = 512) -> dict[str, Any]:
    """Cost of ``model`` on these examples.

    FLOPs are counted (``torch.utils.flop_counter``) over the first ``flop_examples`` examples in length-sorted
    batches of 32 with dynamic padding, and divided by the number of examples. Latency is the median
    wall-clock forward time (tokenisation excluded) of batches of the first ``bs`` examples in data order,
    cycling if the split is smaller, after warm-up. Batches go to the model's device, which the
    report names.
    """
    if not features:
        raise ValueError("cost measurement needs at least one example")
    device = device_of(model)
    sample = list(features[:flop_examples])
    batches = [to_device(collate([sample[i] for i in idx], pad_id), device)
               for idx in length_sorted_batches(sample, 32)]

    def make_batch(size: int):
        rows = [features[i % len(features)] for i in range(size)]
        return to_device(collate(rows, pad_id), device)

    costs: dict[str, Any] = {"params": count_parameters(model), "flops_per_example": count_flops(model, batches),
                             "flop_examples": len(sample), "machine": machine_info(device)}
    if latency:
        timed = measure_latency(model, make_batch, list(batch_sizes), max_seconds=max_seconds)
        costs["latency"] = {str(bs): stats for bs, stats in timed.items()}
    return costs
