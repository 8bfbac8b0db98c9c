"""The installed summon version (the bottom layer: anything may import it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("summon")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"
