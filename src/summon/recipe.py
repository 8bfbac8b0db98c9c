"""Shipped YAML recipes: find them, list them, and turn one (plus overrides) into a validated RunConfig."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from summon.config import ConfigError, apply_overrides, from_dict, load_yaml
from summon.methods import METHODS
from summon.registry import suggest
from summon.train.config import RunConfig

RECIPES_DIR = Path(__file__).parent / "recipes"


def shipped() -> dict[str, Path]:
    """Recipe name (file stem) -> path, for every recipe shipped with summon."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    """A recipe's first comment line (what it does)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find(name_or_path: str) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    recipes = shipped()
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if stem in recipes and len(path.parts) == 1:
        return recipes[stem]
    raise ValueError(f"no recipe file '{name_or_path}' and no shipped recipe '{stem}'.{suggest(stem, list(recipes))} "
                     f"List them with `summon recipes ls`.")


def load_run_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a recipe, apply ``key=value`` overrides and validate it all, including the method's own args."""
    path = find(name_or_path)
    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(RunConfig, data, source=str(path))
    if cfg.method not in METHODS:
        raise ConfigError([f"method: unknown method '{cfg.method}'.{suggest(cfg.method, METHODS.names())} "
                           f"Known: {', '.join(METHODS.names())}"], source=str(path))
    try:
        from_dict(METHODS.get(cfg.method).config_cls, cfg.method_args, source=f"{path} method_args")
    except ConfigError as err:
        raise ConfigError([f"method_args.{e}" for e in err.errors], source=str(path)) from None
    return cfg


def copy_recipe(name: str, dest: str | Path) -> Path:
    """Copy a shipped recipe to ``dest`` (a file or a folder) for editing; never overwrites."""
    src = find(name)
    target = Path(dest)
    if target.is_dir():
        target = target / src.name
    if target.exists():
        raise ValueError(f"{target} exists; choose another destination or delete it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target
