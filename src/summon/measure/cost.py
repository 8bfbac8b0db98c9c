"""What a model is and where it runs: parameters, the FLOP counter (:class:`FlopMeter`), eval mode, the machine.

Cost is measured once, by :func:`summon.measure.stage_costs.measure_costs` over a stage runner (a kind's, or a bare
model's :class:`~summon.measure.profile.ModelRunner`), which counts FLOPs with :class:`FlopMeter` and times with
the one timing loop, :func:`summon.measure.timing.time_call`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.utils.flop_counter import FlopCounterMode

from summon.measure.device import device_name

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
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own train/eval flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


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
    """Counts the FLOPs of individual calls: the FLOP counter of summon.

    ``value, flops = meter(fn, *args)`` runs ``fn`` once under a fresh ``torch.utils.flop_counter.FlopCounterMode``
    (so work done before the call, e.g. building its batch, is not counted). A multiply-add counts as 2 FLOPs,
    int8 ones of dynamic int8 linear layers too (:func:`_dynamic_linear_flop`); embedding lookups count 0 and
    embedding-bag reductions one add per looked-up element (:func:`_embedding_bag_flop`). Ops without a torch
    formula (elementwise, softmax, norms) count 0.
    """

    def __init__(self) -> None:
        self.mapping = _custom_flop_mapping()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
        with FlopCounterMode(display=False, custom_mapping=self.mapping) as counter:
            value = fn(*args)
        return value, int(counter.get_total_flops())


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
