"""Wall-clock timing of the parts of a training step (teacher forward, student forward, backward).

On a GPU, kernels run asynchronously: :func:`~summon.measure.device.clock` synchronises the device first, as the sub-structured
KD paper's code does (``cuda.synchronize`` + ``perf_counter``), so each part is charged its own work. On a
CPU there is nothing to wait for and it is a plain ``perf_counter``.
"""

from __future__ import annotations

import torch

from summon.measure.device import clock

__all__ = ["SECONDS_SUFFIX", "clock", "seconds"]

SECONDS_SUFFIX = "_seconds"  # step outputs named like this are summed per epoch by the training loop


def seconds(value: float) -> torch.Tensor:
    """A duration as the 0-d tensor the loop logs (it averages tensor parts and sums ``*_seconds`` per epoch)."""
    return torch.tensor(float(value))
