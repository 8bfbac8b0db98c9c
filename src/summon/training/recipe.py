"""A recipe (a shipped name or a file) plus ``key=value`` overrides, turned into a validated, typed RunConfig.

Finding, listing and copying recipes is :mod:`summon.core.recipe_files` (re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence

from summon.core.config import apply_overrides, from_dict, load_yaml
from summon.core.recipe_files import RECIPES_DIR, copy_recipe, describe, find, shipped
from summon.training.config import RunConfig

__all__ = ["RECIPES_DIR", "copy_recipe", "describe", "find", "load_run_config", "shipped"]


def load_run_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a recipe, apply ``key=value`` overrides and validate it all in one pass.

    The result is typed throughout: ``model`` is its kind's dataclass and ``method_args`` the method's
    config dataclass, defaults filled in.

    Raises:
        ConfigError: Listing every problem by the key the user wrote (``method_args.alpha: ...``).
    """
    path = find(name_or_path)
    data = apply_overrides(load_yaml(path), overrides)
    return from_dict(RunConfig, data, source=str(path))
