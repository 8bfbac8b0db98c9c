"""Static measures of the package's shape, read from the syntax trees of a source tree (standard library only).

Shared by ``benchmarks/core_surface.py`` (before/after figures of issue 23's rework) and
``tests/test_core_surface.py`` (the limits the reworked tree keeps). Every function takes ``root``, a repository
root holding ``src/summon`` and ``benchmarks``, and reads only files; nothing is imported from the tree measured.
Places are written ``path:line`` relative to ``src/summon`` (package files) or to ``root`` (benchmark files).

The definitions, precisely:

``plain_staged_branches``
    In ``src/summon``, less the kinds registry (``adaptive/kinds.py``, ``adaptive/plain.py``), the knob
    (``adaptive/knob.py``) and the staged contract (``adaptive/staged.py``), one entry per source line holding any
    of: (isinstance) an ``isinstance``/``issubclass`` call whose class argument names one of
    :data:`PREDICTOR_CLASSES` (a name, ``module.Name``, or a tuple, ``A | B`` union or ``A if c else B`` of
    them); (staged) a read of an attribute called ``staged`` used as a flag, i.e. not as an object
    (``self.staged`` counts, ``self.staged.run_full(...)`` does not), or a name ``staged`` as the test of an
    ``if``/``while``/conditional expression or an operand of ``and``/``or``/``not``; ("plain") the string
    ``"plain"`` compared (``==``, ``!=``, ``in``, ``not in``) or given as a default (``getattr(x, "kind", "plain")``,
    ``m.get("kind", "plain")``); (staged_kind) ``staged_kind(...) is None`` / ``is not None``, directly or through a
    name assigned from it in the same function: the registry's "no kind, so plain" answer branched on outside
    the registry.
``cost_measurement_functions``
    Function definitions in ``src/summon`` that are not stubs (a body of only a docstring, ``...``, ``pass`` or
    ``raise NotImplementedError``) and that themselves, in their own body (nested definitions are judged on
    their own), do one of: (FLOPs) construct ``FlopCounterMode(...)`` or ``FlopMeter(...)``, or call
    ``count_flops(...)``; (stage ms) being named as a stage-cost measure (:data:`COST_NAMES`), read a clock
    (:data:`CLOCKS`) or call a timing loop (``time_call``/``time_calls``/``median_call`` or a function holding a
    loop counted by ``timing_loops``); (own loop) hold a timing loop of their own (one counted by
    ``timing_loops``, outside ``measure/timing.py`` where the one loop lives). ``FlopMeter.__call__`` in
    ``measure/cost.py`` is the one FLOP primitive (torch's counter with summon's extra formulas), as
    ``time_calls`` is the one timing loop, and is not counted. A kind's ``measure_costs`` that
    delegates to the one measurement does none of these and is not counted; a helper that only calls the one
    timing loop under another name is not counted either (it is not a second measurement).
``timing_loops``
    ``for``/``while`` loops in ``src/summon`` (outside ``serve/``) that time repeated runs: the loop's test or body
    reads a clock (:data:`CLOCKS`) and its body records into a list (calls ``.append``/``.extend``). Nested
    function definitions are not part of a loop, and a loop inside a counted loop is not counted again.
    ``serve/`` is left out: its loops read the clock to meet request deadlines and batch windows, not to time a
    computation (the training loop's per-step timers are not counted either: they sum, they do not append).
``largest_class_lines`` / ``largest_class_methods``
    Over every class in ``src/summon``: ``end_lineno - lineno + 1`` (decorators not included), and the function
    definitions directly in the class body (properties and static/class methods included).
``benchmark_protocol_copies``
    Function definitions in ``benchmarks/*.py`` that re-implement the held-out protocol: named like one of its
    pieces (:data:`PROTOCOL_NAMES`), or drawing a split themselves (a ``.permutation(...)`` call and a ``// 2``
    in the same function).
``top_level_modules``
    ``.py`` files directly in ``src/summon`` other than ``__init__.py``.
``src_lines``
    Files and lines (``str.splitlines``) of every ``.py`` file under ``src/summon``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREDICTOR_CLASSES = frozenset({"StagedBase", "StagedPredictor", "Predictor", "PlainPredictor", "EarlyExitPredictor",
                               "TokenExitPredictor", "CascadePredictor", "ProgressivePredictor"})
BRANCH_EXEMPT = frozenset({"adaptive/kinds.py", "adaptive/plain.py", "adaptive/knob.py", "adaptive/staged.py"})
CLOCKS = frozenset({"clock", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time"})
FLOP_COUNTERS = frozenset({"FlopCounterMode", "FlopMeter", "count_flops"})
COST_NAMES = frozenset({"measure_costs", "measure_stage_costs", "stage_latency", "stage_flops", "_stage_ms",
                        "_stage_flops", "measure_ms", "measure_latency"})
TIMING_CALLS = frozenset({"time_call", "time_calls", "median_call"})  # the one timing loop and its wrappers
TIMING_LOOP_HOME = frozenset({"measure/timing.py"})  # where the one timing loop lives
FLOP_COUNTER_HOME = frozenset({("measure/cost.py", "FlopMeter.__call__")})  # the one FLOP primitive (torch's counter)
PROTOCOL_NAMES = frozenset({"halves", "halvings", "first_halving", "mean", "spread", "share_within", "split_rows"})
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
LOOPS = (ast.For, ast.AsyncFor, ast.While)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)  # what _own_nodes does not enter


def package(root: Path) -> Path:
    return Path(root) / "src" / "summon"


def _files(root: Path) -> list[tuple[str, ast.Module]]:
    """``(path relative to src/summon, syntax tree)`` for every package file, sorted."""
    return [(f.rel, f.tree) for f in _index(root)]


class _File:
    """One parsed package file: its tree, every node's parent, and its scopes (the module, each class, function
    and lambda) each with its qualified name and its own nodes (those outside nested scopes)."""

    def __init__(self, rel: str, tree: ast.Module):
        self.rel, self.tree = rel, tree
        self.parents: dict[ast.AST, ast.AST] = {}
        self.scopes: list[tuple[str, ast.AST, list[ast.AST]]] = []
        self._scan(tree, "", "<module>")

    def _scan(self, scope: ast.AST, prefix: str, name: str) -> None:
        own: list[ast.AST] = []
        self.scopes.append((name, scope, own))
        stack = [scope]
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
                own.append(child)
                if isinstance(child, SCOPES):
                    inner = prefix + getattr(child, "name", "<lambda>")
                    self._scan(child, inner + ".", inner)
                else:
                    stack.append(child)


def _index(root: Path) -> list[_File]:
    pkg = package(root)
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(pkg.rglob("*.py")))
    return _parse(pkg, stamp)


@functools.lru_cache(maxsize=4)
def _parse(pkg: Path, stamp: tuple[tuple[str, int], ...]) -> list[_File]:
    return [_File(Path(p).relative_to(pkg).as_posix(), ast.parse(Path(p).read_text(encoding="utf-8"), filename=p))
            for p, _ in stamp]


def _called_name(call: ast.Call) -> str | None:
    """``f`` for ``f(...)`` and ``a.b.f(...)``."""
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` (not ``node`` itself) outside nested function, lambda and class definitions."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, SCOPES):
            yield from _own_nodes(child)


def _is_clock(node: ast.AST) -> bool:
    """A call of ``clock(...)``, ``time.perf_counter()``, ``time.monotonic()``, ``time.time()``, ``perf_counter()``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in CLOCKS
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "time":
        return func.attr in CLOCKS | {"time", "time_ns"}
    return False


# --- plain-or-staged branches ------------------------------------------------------------------------------


def _class_names(node: ast.AST) -> set[str]:
    """The class names an isinstance class argument names: ``A``, ``m.A``, ``(A, B)``, ``A | B``, ``A if c else B``."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Tuple):
        return set().union(*(_class_names(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _class_names(node.left) | _class_names(node.right)
    if isinstance(node, ast.IfExp):
        return _class_names(node.body) | _class_names(node.orelse)
    return set()


def _is_plain(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "plain"


def _in_test_position(node: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.If | ast.While | ast.IfExp | ast.Assert) and parent.test is node:
        return True
    if isinstance(parent, ast.comprehension) and node in parent.ifs:
        return True
    return isinstance(parent, ast.BoolOp) or (isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not))


def _branch_kind(node: ast.AST, parent: ast.AST | None, from_registry: set[str]) -> str | None:
    """Which rule (see the module docstring) ``node`` breaks, or None."""
    if isinstance(node, ast.Call):
        name = _called_name(node)
        named = _class_names(node.args[1]) & PREDICTOR_CLASSES if len(node.args) == 2 else set()
        if name in ("isinstance", "issubclass") and named:
            return "isinstance " + "|".join(sorted(named))
        if (name == "getattr" and len(node.args) == 3 and _is_plain(node.args[2])) or \
                (name == "get" and len(node.args) == 2 and _is_plain(node.args[1])):
            return '"plain" default'
    elif isinstance(node, ast.Attribute):
        if node.attr == "staged" and isinstance(node.ctx, ast.Load):
            used_as_object = (isinstance(parent, ast.Attribute | ast.Subscript) and parent.value is node) or \
                (isinstance(parent, ast.Call) and parent.func is node)
            return None if used_as_object else "staged flag"
    elif isinstance(node, ast.Name):
        if node.id == "staged" and isinstance(node.ctx, ast.Load) and _in_test_position(node, parent):
            return "staged flag"
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        equality = any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
        if equality and any(map(_is_plain, operands)):
            return '"plain" compared'
        if any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops) and any(
                isinstance(o, ast.Constant) and o.value is None for o in operands) and any(
                (isinstance(o, ast.Call) and _called_name(o) == "staged_kind") or
                (isinstance(o, ast.Name) and o.id in from_registry) for o in operands):
            return "staged_kind(...) is None"
    return None


def _registry_names(own: list[ast.AST]) -> set[str]:
    """Names assigned from ``staged_kind(...)`` among a scope's own nodes."""
    return {t.id for n in own if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
            and _called_name(n.value) == "staged_kind" for t in n.targets if isinstance(t, ast.Name)}


def plain_staged_branches(root: Path) -> list[str]:
    """``path:line: rule`` for each line of the package that asks "plain or staged?" (module docstring)."""
    found: dict[tuple[str, int], set[str]] = {}
    for f in _index(root):
        if f.rel in BRANCH_EXEMPT:
            continue
        for _, _, own in f.scopes:
            registry = _registry_names(own)
            for node in own:
                rule = _branch_kind(node, f.parents.get(node), registry)
                if rule:
                    found.setdefault((f.rel, node.lineno), set()).add(rule)
    return [f"{rel}:{line}: {', '.join(sorted(rules))}" for (rel, line), rules in sorted(found.items())]


# --- cost measurement and timing loops -----------------------------------------------------------------------


def _is_stub(function: ast.AST) -> bool:
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return all((isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis)
               or isinstance(s, ast.Pass)
               or (isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s)) for s in body)


def _is_timing_loop(loop: ast.AST) -> bool:
    """A loop whose test or body reads a clock and whose body appends (module docstring)."""
    inside = list(_own_nodes(loop))
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("append", "extend")
               for n in inside) and any(map(_is_clock, inside))


def _timing_loops_in(f: _File, own: list[ast.AST]) -> list[ast.AST]:
    """The timing loops among a scope's own nodes that are not inside another timing loop of it."""
    loops = [n for n in own if isinstance(n, LOOPS) and _is_timing_loop(n)]
    outer = []
    for loop in loops:
        up = f.parents.get(loop)
        while up is not None and up not in loops:
            up = f.parents.get(up)
        if up is None:
            outer.append(loop)
    return outer


def _timing_loop_sites(root: Path) -> list[tuple[str, int, str, ast.AST]]:
    """``(path, line, scope name, scope)`` of every counted timing loop (``serve/`` left out)."""
    return [(f.rel, loop.lineno, name, scope) for f in _index(root) if not f.rel.startswith("serve/")
            for name, scope, own in f.scopes for loop in _timing_loops_in(f, own)]


def timing_loops(root: Path) -> list[str]:
    """``path:line in function`` for each loop of the package that times repeated runs (module docstring)."""
    return [f"{rel}:{line} in {name}" for rel, line, name, _ in sorted(_timing_loop_sites(root), key=lambda s: s[:2])]


def cost_measurement_functions(root: Path) -> list[str]:
    """``path:line name: what it does`` for each function that itself counts FLOPs or times for a cost."""
    sites = _timing_loop_sites(root)
    holders = {id(scope) for *_, scope in sites}
    loop_functions = set(TIMING_CALLS) | {scope.name for *_, scope in sites if isinstance(scope, FUNCTIONS)}
    found = []
    for f in _index(root):
        for name, function, own in f.scopes:
            if not isinstance(function, FUNCTIONS) or _is_stub(function):
                continue
            calls = {_called_name(n) for n in own if isinstance(n, ast.Call)}
            what = []
            if calls & FLOP_COUNTERS and (f.rel, name) not in FLOP_COUNTER_HOME:
                what.append("counts FLOPs")
            if function.name in COST_NAMES and (any(map(_is_clock, own)) or calls & loop_functions):
                what.append("times stages")
            if f.rel not in TIMING_LOOP_HOME and id(function) in holders:
                what.append("holds its own timing loop")
            if what:
                found.append((f.rel, function.lineno, f"{name}: {', '.join(what)}"))
    return [f"{rel}:{line} {what}" for rel, line, what in sorted(found)]


# --- classes, benchmarks, modules, lines ---------------------------------------------------------------------


def classes(root: Path) -> list[dict[str, Any]]:
    """``{"class": "path:line Name", "lines": N, "methods": M}`` for every class in the package."""
    return [{"class": f"{f.rel}:{node.lineno} {name}", "lines": node.end_lineno - node.lineno + 1,
             "methods": sum(isinstance(s, FUNCTIONS) for s in node.body)}
            for f in _index(root) for name, node, _ in f.scopes if isinstance(node, ast.ClassDef)]


def largest_class(root: Path, by: str) -> dict[str, Any]:
    """The class with the most ``by`` (``"lines"`` or ``"methods"``): ``{"value": N, "class": "path:line Name"}``."""
    top = max(classes(root), key=lambda c: c[by])
    return {"value": top[by], "class": top["class"]}


def benchmark_protocol_copies(root: Path) -> list[str]:
    """``benchmarks/file.py:line name`` for each benchmark function that re-implements the held-out protocol."""
    found = []
    for path in sorted((Path(root) / "benchmarks").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "permutation" not in text and not any(f"def {name}(" in text for name in PROTOCOL_NAMES):
            continue  # nothing the rule could find (a shortcut only: the syntax tree decides)
        for function in (n for n in ast.walk(ast.parse(text, filename=str(path))) if isinstance(n, FUNCTIONS)):
            own = list(_own_nodes(function))
            draws = any(isinstance(n, ast.Call) and _called_name(n) == "permutation" for n in own) and any(
                isinstance(n, ast.BinOp) and isinstance(n.op, ast.FloorDiv) and isinstance(n.right, ast.Constant)
                and n.right.value == 2 for n in own)
            if function.name in PROTOCOL_NAMES or draws:
                found.append(f"benchmarks/{path.name}:{function.lineno} {function.name}")
    return found


def top_level_modules(root: Path) -> list[str]:
    return sorted(p.name for p in package(root).glob("*.py") if p.name != "__init__.py")


def src_lines(root: Path) -> dict[str, int]:
    files = sorted(package(root).rglob("*.py"))
    return {"files": len(files), "lines": sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)}


def file_lines(root: Path, relative: str) -> int:
    """Lines of ``src/summon/<relative>`` (0 when it is not there)."""
    path = package(root) / relative
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def static_metrics(root: Path) -> dict[str, tuple[int, list[str]]]:
    """Every static metric of ``root`` by its name in issue 23: ``(value, where)``, ``where`` the places counted
    (for the largest class, which class; for ``src_lines``, how many files)."""
    lines, methods, sizes = largest_class(root, "lines"), largest_class(root, "methods"), src_lines(root)
    listed = {"plain_staged_branches": plain_staged_branches(root),
              "cost_measurement_functions": cost_measurement_functions(root),
              "timing_loops": timing_loops(root),
              "benchmark_protocol_copies": benchmark_protocol_copies(root),
              "top_level_modules": top_level_modules(root)}
    return {**{name: (len(where), where) for name, where in listed.items()},
            "largest_class_lines": (lines["value"], [lines["class"]]),
            "largest_class_methods": (methods["value"], [methods["class"]]),
            "src_lines": (sizes["lines"], [f"{sizes['files']} files"])}
