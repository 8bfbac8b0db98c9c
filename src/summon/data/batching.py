"""Batches of featurized examples: longest first (less padding), and moved to a device.

Examples are sorted by length before batching, then results are put back in input order by the callers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from summon.data.features import Feature


def length_sorted_batches(features: Sequence[Feature], batch_size: int) -> Iterator[list[int]]:
    """Index lists of at most ``batch_size``, longest rows first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
