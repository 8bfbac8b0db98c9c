"""What the training loop and a method share about the method's own trainable module.

A method may give the loop an ``nn.Module`` of its own (a policy, a baseline, counters: see
``Method.method_module``). The loop registers it on the student under :data:`METHOD_MODULE`, so it is in the
optimizer (its own parameter group) and in every checkpoint, and leaves it out of the saved predictor, writing
its parameters and buffers to ``<output_dir>/`` :data:`METHOD_MODULE_FILE` instead.
"""

from __future__ import annotations

from torch import nn

METHOD_MODULE = "method_module"  # attribute of the student that holds the method's module
METHOD_MODULE_FILE = "method_module.safetensors"  # where the loop writes it, beside the saved model


def method_module(model: nn.Module) -> nn.Module | None:
    """The method's module attached to ``model`` (unwrapped from DDP), or None."""
    return getattr(getattr(model, "module", model), METHOD_MODULE, None)
