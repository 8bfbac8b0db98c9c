"""Where models run: one rule for turning ``"auto" | "cpu" | "cuda" | "cuda:1" | "mps"`` into a device,
and one clock that waits for the device before it reads the time.

Every latency summon reports is timed by the one timing loop (:func:`summon.measure.timing.time_call`), which reads
:func:`clock`, so GPU kernels still queued when a timer stops are charged to the right piece, and every report
names :func:`device_name` of the device it measured on.
"""

from __future__ import annotations

import time

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device the user asked for; ``None`` or ``"auto"`` means CUDA when present, else the CPU.

    Raises:
        ValueError: for a name torch does not know, or a CUDA device this machine does not have.
    """
    if isinstance(device, torch.device):
        return _check(device)
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(str(device))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}") from None
    return _check(chosen)


def _check(device: torch.device) -> torch.device:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has no CUDA GPU visible to "
                             "torch; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} CUDA device(s) "
                             f"(cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for, but MPS is not available here; use --device cpu")
    return device


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A human-readable name: ``cpu`` or ``cuda:0 (NVIDIA H200)``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (CUDA only; nothing to wait for on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str | None = None) -> float:
    """``time.perf_counter()`` after the pending work on ``device`` has finished."""
    synchronize(device)
    return time.perf_counter()
