"""Dynamic int8 quantisation of a model's linear layers, and the manifest section that records it.

Every ``nn.Linear`` (that exact type, as ``torch.ao.quantization.quantize_dynamic`` picks them: subclasses such as
``nn.MultiheadAttention``'s ``NonDynamicallyQuantizableLinear`` stay as they are) becomes a
``torch.ao.nn.quantized.dynamic.Linear``: int8 weights (per tensor, symmetric, scaled by their min and max),
activations quantised on the fly for each batch, float outputs. Embeddings, norms and everything else stay fp32.

torch 2.13 marks ``torch.ao.quantization.quantize_dynamic`` deprecated (it warns on every call that eager-mode
quantisation moves to torchao's ``quantize_``); the dynamic ``Linear`` module and its kernel
(``quantized::linear_dynamic``, fbgemm on x86, qnnpack on ARM) are not. So :func:`quantize_model` swaps the
modules itself with ``torch.ao.nn.quantized.dynamic.Linear.from_float`` and ``default_dynamic_qconfig`` — what
``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` does for each linear layer — and needs no torchao.
torch 2.13 also warns that creating qint8 tensors (``torch.quantize_per_tensor``, which ``from_float`` calls to
pack the weights) is deprecated "and will be removed in a future PyTorch release" (pytorch/pytorch#184982);
:func:`quantize_model` silences that one warning, which users cannot act on. When a torch release removes them,
this module is the one place to port to torchao (``quantize_(model, Int8DynamicActivationInt8WeightConfig())``).

A saved int8 predictor keeps its fp32 weights in ``model.safetensors`` (packed int8 parameters are not
safetensors) and says in its manifest::

    "quantization": {"method": "dynamic", "dtype": "qint8", "modules": "Linear", "torch": "2.13.0", "engine": "x86"}

Loading quantises again; the same weights give the same int8 weights, so file sizes, sha256 and fingerprints
work as for any predictor. ``torch`` and ``engine`` record where it was quantised; another torch or engine
reloads it with its own kernels (outputs may differ in the last bits). An unknown ``method``, ``dtype`` or
``modules`` is refused, naming the file and the key.

Dynamic int8 runs on the CPU only: :func:`quantized_device` turns ``"auto"`` into the CPU and refuses CUDA or MPS
with a clear error rather than moving the model behind the caller's back.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization.qconfig import default_dynamic_qconfig

from summon.measure.device import DEVICE_CHOICES, resolve_device

logger = logging.getLogger(__name__)

SECTION = "quantization"  # the manifest key
METHODS = ("dynamic",)
DTYPES = {"int8": "qint8", "qint8": "qint8"}  # what a caller may write -> what the manifest records
MODULES = ("Linear",)


@dataclass(frozen=True)
class Quantization:
    """How a predictor's models are quantised: the manifest's ``quantization`` section, typed.

    ``torch_version`` and ``engine`` are a record of where it was done (``torch.__version__`` and
    ``torch.backends.quantized.engine``), not requirements.
    """

    method: str = "dynamic"
    dtype: str = "qint8"
    modules: str = "Linear"
    torch_version: str = ""
    engine: str = ""

    @classmethod
    def of(cls, dtype: str = "int8") -> Quantization:
        """Dynamic quantisation of the linear layers to ``dtype`` (``"int8"``, or its torch name ``"qint8"``)."""
        if not isinstance(dtype, str) or dtype.lower() not in DTYPES:
            raise ValueError(f"dtype must be 'int8' (dynamic int8 linear layers on the CPU; 'qint8' names the same), "
                             f"got {dtype!r}")
        return cls(dtype=DTYPES[dtype.lower()], torch_version=torch.__version__,
                   engine=str(torch.backends.quantized.engine))

    def describe(self) -> str:
        return f"{self.method} {self.dtype} {self.modules} layers"

    def to_dict(self) -> dict[str, str]:
        return {"method": self.method, "dtype": self.dtype, "modules": self.modules, "torch": self.torch_version,
                "engine": self.engine}

    @classmethod
    def from_dict(cls, section: Any, *, where: str = "manifest.json") -> Quantization:
        """The typed section; a ``ValueError`` naming ``where`` and every bad key otherwise."""
        problems = quantization_problems(section)
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}. Re-quantize the fp32 predictor with this summon "
                             "(summon quantize MODEL OUT), or upgrade summon if a newer one wrote it")
        return cls(method=section["method"], dtype=section["dtype"], modules=section["modules"],
                   torch_version=str(section.get("torch", "")), engine=str(section.get("engine", "")))


def quantization_problems(section: Any, key: str = SECTION) -> list[str]:
    """What is wrong with a manifest's ``quantization`` section (``[]`` when it is absent or right)."""
    if section is None:
        return []
    if not isinstance(section, dict):
        return [f"'{key}' must be a dict, got {type(section).__name__}"]
    allowed = {"method": METHODS, "dtype": tuple(sorted(set(DTYPES.values()))), "modules": MODULES}
    problems = []
    for name, choices in allowed.items():
        value = section.get(name)
        if value not in choices:
            seen = "missing" if value is None else f"got {value!r}"
            problems.append(f"'{key}.{name}' must be {' or '.join(map(repr, choices))}, {seen}")
    return problems


def manifest_quantization(manifest: dict[str, Any], where: Any) -> Quantization | None:
    """The typed ``quantization`` section of a manifest, or None for an fp32 predictor."""
    section = manifest.get(SECTION)
    return None if section is None else Quantization.from_dict(section, where=str(where))


def quantized_device(device: str | torch.device | None, where: Any) -> torch.device:
    """The device an int8 predictor runs on: the CPU for ``None``, ``"auto"`` or ``"cpu"``.

    Raises:
        ValueError: For any other device (dynamic int8 kernels exist for the CPU only), naming ``where``.
    """
    if device is None or device == "auto":
        return torch.device("cpu")
    try:
        chosen = torch.device(device) if isinstance(device, torch.device) else torch.device(str(device))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}") from None
    if chosen.type != "cpu":
        raise ValueError(f"{where}: dynamic int8 quantisation ('{SECTION}') runs on the CPU only, but device "
                         f"{str(device)!r} was asked for; use device 'cpu' (or 'auto'), or run the fp32 predictor "
                         f"it was made from on {device}")
    return resolve_device(chosen)


def quantize_model(model: nn.Module, quantization: Quantization, *, inplace: bool = False) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced by a dynamic int8 ``Linear``, on the CPU, in eval mode.

    Args:
        model: any module; left untouched unless ``inplace`` (then it is moved to the CPU and changed).
        quantization: the section to apply (``dynamic`` ``qint8`` ``Linear`` is the one there is).
        inplace: change ``model`` itself instead of a deep copy (loading: the fp32 copy is not kept).

    Returns:
        The quantised module. FLOPs are counted as for the fp32 model (:mod:`summon.measure.cost` gives
        ``quantized::linear_dynamic`` the formula of a matrix product) and parameters too (int8 weights count
        one each), so costs stay comparable; only measured milliseconds change.
    """
    if quantization.method not in METHODS or quantization.dtype != "qint8" or quantization.modules not in MODULES:
        raise ValueError(f"cannot apply quantisation {quantization.to_dict()}: summon applies dynamic qint8 to Linear "
                         "layers only")
    if not inplace:
        model = copy.deepcopy(model)
    model = model.to("cpu").eval()
    with warnings.catch_warnings():  # torch 2.13 deprecates qint8 tensor creation (see the module docstring)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        swapped = _swap_linears(model)
    logger.debug("quantised %d linear layers to dynamic %s", swapped, quantization.dtype)
    return model


def _swap_linears(module: nn.Module) -> int:
    """Replace the ``nn.Linear`` children of ``module``, recursively; returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            child.qconfig = default_dynamic_qconfig  # read by from_float: int8 per-tensor symmetric weights
            setattr(module, name, nnqd.Linear.from_float(child))
            count += 1
        else:
            count += _swap_linears(child)
    return count


def dynamic_linears(model: nn.Module) -> int:
    """How many dynamic int8 linear layers ``model`` holds (0 for an fp32 model)."""
    return sum(isinstance(m, nnqd.Linear) for m in model.modules())
