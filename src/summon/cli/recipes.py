"""``summon recipes ls | show | cp``: the shipped recipes, listed with their whole descriptions in columns
that fit the terminal. Light on purpose: it reads YAML files and imports no model code."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from collections.abc import Sequence

from summon.core import recipe_files as recipe


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "ls":
        rows = [(name, recipe.describe(path)) for name, path in recipe.shipped().items()]
        print("\n".join(format_columns(rows, shutil.get_terminal_size().columns - 1)))
    elif args.action == "show":
        print(recipe.find(_need(args.name, "show")).read_text(encoding="utf-8"), end="")
    else:
        target = recipe.copy_recipe(_need(args.name, "cp"), args.dest or ".")
        print(f"copied to {target}; run it with: summon train {target}")
    return 0


def format_columns(rows: Sequence[tuple[str, str]], width: int, *, min_text: int = 30) -> list[str]:
    """Names in a column and their text wrapped beside them, no line wider than ``width``; when the
    terminal is too narrow for two columns, each text goes under its name, indented."""
    if not rows:
        return []
    name_width = max(len(name) for name, _ in rows) + 2
    lines = []
    if width - name_width >= min_text:
        for name, text in rows:
            wrapped = textwrap.wrap(text, width - name_width, break_on_hyphens=False) or [""]
            lines.append(f"{name:<{name_width}}{wrapped[0]}".rstrip())
            lines.extend(" " * name_width + line for line in wrapped[1:])
    else:
        for name, text in rows:
            lines.append(name)
            lines.extend(textwrap.wrap(text, max(width, 8), initial_indent="    ", subsequent_indent="    ",
                                       break_on_hyphens=False))
    return lines


def _need(value: str | None, action: str) -> str:
    if not value:
        raise ValueError(f"`summon recipes {action}` needs a recipe name; see `summon recipes ls`")
    return value


