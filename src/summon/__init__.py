"""summon: match compute to how hard each input is.

Distil, exit early and cascade an expensive model into one predictor with one run-time knob,
plus a measured report of what each setting costs and buys.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("summon")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"


def load(path):
    """Load a saved predictor directory; see :func:`summon.predictor.load`."""
    from summon.predictor import load as _load

    return _load(path)


__all__ = ["__version__", "load"]
