"""Wall-clock timing of the parts of a training step (teacher forward, student forward, backward).

On a GPU, kernels run asynchronously: :func:`clock` synchronises the device first, as the sub-structured
KD paper's code does (``cuda.synchronize`` + ``perf_counter``), so each part is charged its own work. On a
CPU there is nothing to wait for and it is a plain ``perf_counter``.
"""

from __future__ import annotations

import time

import torch

SECONDS_SUFFIX = "_seconds"  # step outputs named like this are summed per epoch by the training loop


def clock(device: torch.device | None = None) -> float:
    """``time.perf_counter()`` after the pending work on ``device`` (a CUDA device) has finished."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seconds(value: float) -> torch.Tensor:
    """A duration as the 0-d tensor the loop logs (it averages tensor parts and sums ``*_seconds`` per epoch)."""
    return torch.tensor(float(value))
