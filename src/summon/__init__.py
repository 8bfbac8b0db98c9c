"""summon: match compute to how hard each input is.

Distil, exit early and cascade an expensive model into one predictor with one run-time knob,
plus a measured report of what each setting costs and buys. The facade::

    summon.load(path, device="auto")          any saved predictor
    summon.train(recipe, **overrides)         a recipe, end to end
    summon.calibrate(predictor, data, budget=|max_drop=|guaranteed=)
    summon.quantize(predictor, calibrate_on=data, out=...)   an int8 copy, re-calibrated
    summon.cascade([student_dir, teacher_dir_or_url], out=...)
    summon.evaluate([predictors], data, out=...)
    summon.recipes()
"""

from __future__ import annotations

import importlib
from typing import Any

from summon.core.version import __version__

__all__ = ["__version__", "auto", "calibrate", "cascade", "evaluate", "load", "quantize", "recipes", "train"]
_FACADE = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """The facade (:mod:`summon.api`), imported on first use (PEP 562), so that importing one light piece —
    ``summon.data``, the parser of ``summon --help`` — does not import torch and transformers. Not an import
    to dodge a cycle: :mod:`summon.api` sits on top and imports everything below it."""
    if name in _FACADE:
        return getattr(importlib.import_module("summon.api"), name)
    raise AttributeError(f"module 'summon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACADE})
