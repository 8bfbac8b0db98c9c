"""summon: match compute to how hard each input is.

Distil, exit early and cascade an expensive model into one predictor with one run-time knob,
plus a measured report of what each setting costs and buys. The facade::

    summon.load(path, device="auto")          any saved predictor
    summon.train(recipe, **overrides)         a recipe, end to end
    summon.calibrate(predictor, data, budget=|max_drop=|guaranteed=)
    summon.cascade([student_dir, teacher_dir_or_url], out=...)
    summon.evaluate([predictors], data, out=...)
    summon.recipes()
"""

from __future__ import annotations

from summon._version import __version__
from summon.api import calibrate, cascade, evaluate, load, recipes, train

__all__ = ["__version__", "calibrate", "cascade", "evaluate", "load", "recipes", "train"]
