"""A recipe (a shipped name or a file) plus ``key=value`` overrides, turned into a validated, typed RunConfig.

Finding, listing and copying recipes is :mod:`summon.core.recipe_files` (re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from summon.core.config import ConfigError, apply_overrides, from_dict, load_yaml
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
    cfg = from_dict(RunConfig, data, source=str(path))
    problem = _folder_problem(cfg.cache_dir, "the teacher-output cache")
    if problem:
        raise ConfigError([f"cache_dir: {problem}"], source=str(path))
    return cfg


def _folder_problem(folder: str | None, what: str) -> str | None:
    """Why ``folder`` cannot hold ``what`` (it is a file, or lies below one), or None; checked before any work."""
    if not folder:
        return None
    target = Path(folder).expanduser()
    for place in (target, *target.absolute().parents):
        if place.exists():
            if place.is_dir():
                return None
            where = "is a file" if place == target else f"lies below {place}, which is a file"
            return f"{folder} {where}; {what} is a folder. Give another path, or move the file away"
    return None
