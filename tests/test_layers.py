"""The layers import downward only, and no summon import hides inside a function.

The folders are the layers, lowest first: core -> data -> measure -> models -> predictors -> losses -> methods ->
training -> adaptive -> evaluation -> serve -> cli and the facade (``summon.api``, ``summon``).
``python tests/test_layers.py`` prints the package-level graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "summon"

LAYERS = ("core", "data", "measure", "models", "predictors", "losses", "methods", "training", "adaptive",
          "evaluation", "search", "serve")
RANKS = {f"summon.{name}": rank for rank, name in enumerate(LAYERS)}
RANKS.update({"summon.api": len(LAYERS), "summon.cli": len(LAYERS), "summon": len(LAYERS)})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    """The longest prefix of ``module`` that has a rank."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in RANKS:
            return name
    raise KeyError(f"{module} is in no layer: add its package to RANKS in tests/test_layers.py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported summon module, line, inside a function)`` for every summon import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.split(".")[0] == "summon")
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == "summon":
                if child.module == "summon":  # from summon import api -> summon.api
                    found.extend((f"summon.{a.name}" if f"summon.{a.name}" in RANKS else "summon", child.lineno,
                                  in_function) for a in child.names)
                else:
                    found.append((child.module, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def edges() -> list[tuple[str, str, str, int, bool]]:
    """``(importer module, imported module, file, line, inside a function)`` for the whole package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target, line, nested in imports(path):
            out.append((source, target, str(path.relative_to(PACKAGE.parent)), line, nested))
    return out


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer(module_name(path))


def test_no_summon_import_inside_a_function():
    nested = [f"{file}:{line} imports {target} inside a function" for _, target, file, line, inside in edges() if inside]
    assert not nested, "move the shared piece down a layer instead:\n" + "\n".join(nested)


def test_layers_import_downward_only():
    upward = [f"{file}:{line}: {layer(src)} (rank {RANKS[layer(src)]}) imports {target} "
              f"(rank {RANKS[layer(target)]})"
              for src, target, file, line, _ in edges() if RANKS[layer(target)] > RANKS[layer(src)]]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_and_a_nested_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from summon.cli.main import main\n\ndef f():\n    from summon.data import spec\n")
    assert imports(sample) == [("summon.cli.main", 1, False), ("summon.data", 4, True)]
    assert RANKS[layer("summon.cli.main")] > RANKS[layer("summon.data.spec")]


@pytest.mark.integration
def test_the_command_line_parser_imports_no_model_code():
    """`summon --help`, `--version` and `summon recipes` start at once: the parser and the recipes command import
    neither torch nor transformers (the commands that run models import them when they run)."""
    code = ("import sys, summon, summon.cli.main, summon.cli.recipes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'accelerate', "
            "'datasets', 'matplotlib'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, target, *_ in edges():
        a, b = layer(src), layer(target)
        if a != b:
            graph[a].add(b)
    return graph


def test_the_folders_are_the_layers():
    """Every subpackage is a layer, and the only top-level module is the facade: the tree shows the layers."""
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted([*LAYERS, "cli"])
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == ["__init__", "api"]


def test_the_facade_verbs_are_the_verbs():
    import summon

    assert callable(summon.evaluate) and callable(summon.train) and callable(summon.load)
    assert summon.evaluate.__module__ == summon.train.__module__ == "summon.api"
    assert "calibrate" in dir(summon)


if __name__ == "__main__":
    for name, targets in sorted(package_graph().items(), key=lambda kv: RANKS[kv[0]]):
        print(f"{name:18s} -> {', '.join(sorted(targets, key=lambda t: -RANKS[t]))}")
    bad = [e for e in edges() if e[4] or RANKS[layer(e[1])] > RANKS[layer(e[0])]]
    for src, target, file, line, nested in bad:
        print(f"VIOLATION {file}:{line} {src} -> {target}{' (inside a function)' if nested else ''}", file=sys.stderr)
    sys.exit(1 if bad else 0)
