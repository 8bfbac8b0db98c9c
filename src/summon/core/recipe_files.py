"""The shipped YAML recipes as files: find them, list them with what they do, copy one to edit.

Light on purpose (YAML and paths, no model code), so ``summon recipes ls`` starts at once;
:mod:`summon.training.recipe` turns a recipe into a validated, typed RunConfig.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from summon.core.config import load_yaml
from summon.core.registry import suggest

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # src/summon/recipes, shipped as package data
_LABEL = re.compile(r"^[A-Za-z][\w -]{0,40}:\s")  # "Run: ...", "Then: ...", "Stage one is ...: ..."


def shipped() -> dict[str, Path]:
    """Recipe name (file stem) -> path, for every recipe shipped with summon."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    """What a recipe does, whole: its leading comment up to the first ``Label: ...`` line (``Run:``,
    ``Then:``, ``Stage one: ...``: how to run it), joined into one paragraph; without a leading comment, its
    ``description:`` value."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if lines and _LABEL.match(text):
            break
        if text:
            lines.append(text)
    if lines:
        return " ".join(lines)
    data = load_yaml(path)
    value = data.get("description") if isinstance(data, dict) else None
    return " ".join(str(value).split()) if value else ""


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

