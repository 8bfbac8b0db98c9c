"""What a model costs: parameters, FLOPs per example, latency, and the machine it was measured on.

Models follow the summon convention: ``model(batch)`` with ``batch`` a dict of tensors holding at least
``input_ids`` of shape [B, L]; the number of examples in a batch is ``batch["input_ids"].shape[0]``.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.utils.flop_counter import FlopCounterMode

from summon.measure.device import clock, device_name

logger = logging.getLogger(__name__)

_MAX_TIMED_RUNS = 200
_EMBEDDING_BAG_ARGS = (
    "weight",
    "indices",
    "offsets",
    "scale_grad_by_freq",
    "mode",
    "sparse",
    "per_sample_weights",
    "include_last_offset",
    "padding_idx",
)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters in ``model``, counting each shared (tied) parameter once.

    Args:
        model: Any module.

    Returns:
        Total number of scalar parameters (buffers are not counted). The packed weights and bias of a dynamic
        int8 linear layer (:mod:`summon.models.quantize`) are not ``nn.Parameter``s; they count as the fp32
        layer's did, so an int8 model has as many parameters as the model it was made from.
    """
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # already de-duplicated by identity; keep the guard explicit
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    for module in model.modules():
        if isinstance(module, nnqd.Linear) and id(module) not in seen:
            seen.add(id(module))
            bias = module.bias()
            total += module.weight().numel() + (0 if bias is None else bias.numel())
    return total


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own train/eval flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _batch_size(batch: Any, where: str) -> int:
    """Number of examples in a summon batch (``input_ids.shape[0]``), validating the batch."""
    if not isinstance(batch, Mapping):
        msg = f"{where}: a batch must be a dict of tensors, got {type(batch).__name__}."
        raise ValueError(msg)
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() < 1:
        raise ValueError(
            f"{where}: the batch needs an 'input_ids' tensor of shape [B, L] (keys seen: {sorted(batch)})."
        )
    return int(ids.shape[0])


def _embedding_bag_flop(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``aten._embedding_bag`` / ``aten._embedding_bag_forward_only``.

    torch's flop counter counts no FLOPs for table lookups. Plain ``embedding`` lookups are left at 0
    here for every model, so totals stay comparable across models; an embedding *bag* however also
    reduces what it looks up, which for a bag-of-embeddings model is most of its work. We count one add
    per looked-up element: (number of indices, excluding ``padding_idx`` entries, which the kernel
    skips) x embedding dim, plus one multiply per element when ``per_sample_weights`` is given.

    Receives the raw tensors (``_get_raw``) so that padding entries can be excluded.
    """
    bound = dict(zip(_EMBEDDING_BAG_ARGS, args))
    bound.update(kwargs)
    weight, indices = bound["weight"], bound["indices"]
    n_indices = indices.numel()
    padding_idx = bound.get("padding_idx")
    if padding_idx is not None and padding_idx >= 0 and indices.device.type != "meta":
        n_indices = int((indices != padding_idx).sum().item())
    flops = n_indices * weight.shape[-1]
    if bound.get("per_sample_weights") is not None:
        flops *= 2
    return int(flops)


# With _get_raw, FlopCounterMode passes the formula tensors rather than shapes.
_embedding_bag_flop._get_raw = True  # type: ignore[attr-defined]


def _dynamic_linear_flop(x_shape: Sequence[int], *args: Any, out_shape: Sequence[int] = (), **kwargs: Any) -> int:
    """FLOPs of ``quantized::linear_dynamic`` (a dynamic int8 linear layer): ``2 * rows * in * out``, the formula
    torch gives the fp32 matrix product it replaces (an int8 multiply-add counts as 2 FLOPs like a float one),
    so an int8 model counts the FLOPs of the fp32 model it was made from. Input ``[..., in]``, output ``[..., out]``."""
    return 2 * int(np.prod(x_shape)) * int(out_shape[-1])


def _custom_flop_mapping() -> dict[Any, Callable[..., int]]:
    """Extra FlopCounterMode formulas, keyed by op packet (e.g. ``torch.ops.aten._embedding_bag``)."""
    mapping: dict[Any, Callable[..., int]] = {}
    for name in ("_embedding_bag", "_embedding_bag_forward_only"):
        if hasattr(torch.ops.aten, name):
            mapping[getattr(torch.ops.aten, name)] = _embedding_bag_flop
    mapping[torch.ops.quantized.linear_dynamic] = _dynamic_linear_flop
    return mapping


class FlopMeter:
    """Counts the FLOPs of individual calls, with the same formulas as :func:`count_flops`.

    ``value, flops = meter(fn, *args)`` runs ``fn`` once under a fresh ``FlopCounterMode``.
    """

    def __init__(self) -> None:
        self.mapping = _custom_flop_mapping()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
        with FlopCounterMode(display=False, custom_mapping=self.mapping) as counter:
            value = fn(*args)
        return value, int(counter.get_total_flops())


def count_flops(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """Forward FLOPs per example, averaged over ``batches`` (total FLOPs / total examples).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` under ``torch.no_grad()`` with the model in
    eval mode (each submodule's mode is restored afterwards). A multiply-add counts as 2 FLOPs, int8 ones of
    dynamic int8 linear layers too (:func:`_dynamic_linear_flop`); embedding lookups count 0 and embedding-bag
    reductions one add per looked-up element (see :func:`_embedding_bag_flop`). Ops without a torch formula
    (elementwise, softmax, norms) count 0.

    Args:
        model: A summon model, called as ``model(batch)``.
        batches: Dicts of tensors, each with ``input_ids`` [B, L].

    Returns:
        FLOPs per example.
    """
    meter = FlopMeter()
    total, total_examples = 0, 0
    with _eval_mode(model), torch.no_grad():
        for i, batch in enumerate(batches):
            total_examples += _batch_size(batch, f"count_flops batch {i}")
            # One counter per batch, so work done while producing the batch is not counted.
            total += meter(model, batch)[1]
    if total_examples == 0:
        raise ValueError("count_flops got no examples; pass at least one non-empty batch.")
    logger.debug("count_flops: %d FLOPs over %d examples", total, total_examples)
    return float(total) / total_examples


def _device(batch: Mapping[str, Any]) -> torch.device:
    """The device of the batch's first tensor."""
    return next((v.device for v in batch.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))


def _time_forwards(
    model: nn.Module, batch: Mapping[str, torch.Tensor], warmup: int, min_repeats: int, budget_s: float
) -> list[float]:
    """Run ``warmup`` untimed forwards, then timed ones; returns each timed run's seconds."""
    device = _device(batch)
    for _ in range(warmup):
        model(batch)
    times: list[float] = []
    began = clock(device)
    while len(times) < min_repeats or (
        time.perf_counter() - began < budget_s and len(times) < _MAX_TIMED_RUNS
    ):
        start = clock(device)
        model(batch)
        times.append(clock(device) - start)
    return times


def measure_latency(
    model: nn.Module,
    make_batch: Callable[[int], Mapping[str, torch.Tensor]],
    batch_sizes: Sequence[int] = (1, 32, 128),
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_seconds: float = 10.0,
) -> dict[int, dict[str, float | int]]:
    """Wall-clock forward latency at several batch sizes.

    For each batch size the batch is built once with ``make_batch(bs)``; after ``warmup`` untimed
    forwards, timed forwards run until there are at least ``min_repeats`` of them and either
    ``max_seconds / len(batch_sizes)`` seconds of timing have passed or 200 runs are done. Runs under
    ``torch.inference_mode()`` with the model in eval mode (restored afterwards); CUDA batches are
    synchronized around each timed run. No global torch setting is changed.

    Args:
        model: A summon model, called as ``model(batch)``.
        make_batch: Builds a batch of the given size (dict with ``input_ids`` [bs, L]) on the model's device.
        batch_sizes: Batch sizes to time.
        warmup: Untimed forwards before timing.
        min_repeats: Minimum timed forwards per batch size.
        max_seconds: Total time budget spread evenly over the batch sizes.

    Returns:
        ``{bs: {"median_ms", "p90_ms", "per_example_ms", "runs"}}``.
    """
    sizes = list(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of positive integers, got {batch_sizes!r}.")
    if warmup < 0 or min_repeats < 1 or max_seconds < 0:
        raise ValueError(
            f"need warmup >= 0, min_repeats >= 1 and max_seconds >= 0, got warmup={warmup}, "
            f"min_repeats={min_repeats}, max_seconds={max_seconds}."
        )
    budget = max_seconds / len(sizes)
    results: dict[int, dict[str, float | int]] = {}
    with _eval_mode(model), torch.inference_mode():
        for bs in sizes:
            bs = int(bs)
            batch = make_batch(bs)
            seen = _batch_size(batch, f"make_batch({bs})")
            if seen != bs:
                raise ValueError(
                    f"make_batch({bs}) returned input_ids with {seen} rows; it must return {bs}."
                )
            ms = np.asarray(_time_forwards(model, batch, warmup, min_repeats, budget)) * 1e3
            median = float(np.median(ms))
            results[bs] = {
                "median_ms": median,
                "p90_ms": float(np.percentile(ms, 90)),
                "per_example_ms": median / bs,
                "runs": int(ms.size),
            }
            logger.debug("latency bs=%d: %.3f ms median over %d runs", bs, median, ms.size)
    return results


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Describe the machine that measurements ran on.

    Returns:
        ``{"cpu_count", "torch_threads", "platform", "processor", "device", "python", "torch"}``; ``device``
        names the device the measurement used (``cpu``, ``cuda:0 (NVIDIA H200)``); without one, the CUDA
        device name when CUDA is available, else ``"cpu"``.
    """
    if device is not None:
        device = device_name(device)
    else:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def cost_summary(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    make_batch: Callable[[int], Mapping[str, torch.Tensor]],
    batch_sizes: Sequence[int] = (1, 32, 128),
    **latency_kwargs: Any,
) -> dict[str, Any]:
    """Parameters, FLOPs per example, latency and machine info in one JSON-ready dict.

    Args:
        model: A summon model.
        batches: Batches for :func:`count_flops` (representative data, e.g. the evaluation set).
        make_batch: Batch factory for :func:`measure_latency`.
        batch_sizes: Batch sizes to time.
        **latency_kwargs: ``warmup``, ``min_repeats``, ``max_seconds`` for :func:`measure_latency`.

    Returns:
        ``{"params", "flops_per_example", "latency": {"1": {...}, ...}, "machine": {...}}`` with string
        batch-size keys.
    """
    latency = measure_latency(model, make_batch, batch_sizes, **latency_kwargs)
    return {
        "params": count_parameters(model),
        "flops_per_example": count_flops(model, batches),
        "latency": {str(bs): stats for bs, stats in latency.items()},
        "machine": machine_info(),
    }
