"""The package's shape before and after issue 23's rework, measured by the issue's names.

``before`` is the tree of ``--base`` (default 8e4f438, main before the rework), unpacked by ``git archive`` into
a temporary folder; ``after`` is the working tree. The static metrics are read from syntax trees by
``tests/surface_metrics.py`` (its docstring states each definition exactly; ``tests/test_core_surface.py``
holds the reworked tree to them):

- ``plain_staged_branches``: lines of ``src/summon`` outside the kinds registry (``adaptive/kinds.py``,
  ``adaptive/plain.py``), the knob and the staged contract that ask "plain or staged?": an
  ``isinstance``/``issubclass`` naming a predictor class, a ``staged`` flag read (``self.staged``), the string
  ``"plain"`` compared or given as a kind default, or ``staged_kind(...) is None``.
- ``cost_measurement_functions``: functions that themselves count FLOPs (``FlopCounterMode``/``FlopMeter``/
  ``count_flops``), or that, named as a stage-cost measure (``measure_costs``, ``stage_latency``, ``_stage_ms``,
  ``measure_ms``, ...), read a clock or call a timing loop, or that hold a timing loop of their own outside
  ``measure/timing.py``.
- ``timing_loops``: ``for``/``while`` loops outside ``serve/`` that read a clock and append to a list.
- ``largest_class_lines`` / ``largest_class_methods``: the largest class of ``src/summon`` by lines
  (``end_lineno - lineno + 1``) and by function definitions directly in its body.
- ``benchmark_protocol_copies``: functions in ``benchmarks/*.py`` named like a piece of the held-out protocol
  (``halves``, ``halvings``, ``first_halving``, ``mean``, ``spread``, ``share_within``, ``split_rows``) or drawing
  a split themselves (``.permutation(...)`` and ``// 2`` in one function).
- ``top_level_modules``: ``.py`` files directly in ``src/summon`` other than ``__init__.py``.
- ``src_lines``: lines of every ``.py`` file under ``src/summon`` (``where``: how many files).

And from running the default test tier (``python -m pytest -q -p no:cacheprovider``: pyproject's addopts,
``-m 'not slow and not integration'``) in each tree, the base one with ``PYTHONPATH=<base>/src`` (checked to
import the base's ``summon``):

- ``default_tests``: pytest's counts (``passed``, ``failed``, ``skipped``, ``deselected``, ``errors``...), its
  own ``pytest_seconds`` and the ``exit_code``;
- ``default_test_seconds``: wall seconds of that one pytest process on this machine.

Shape of the JSON: each of those ten keys holds ``{"before": value, "after": value}``; a listed metric adds
``where_before`` and ``where_after`` (``path:line ...``, paths relative to ``src/summon``, or the class, or the
file count). Beside them: ``command``, ``commit``, ``versions``, ``machine`` (``benchmarks/_common.provenance``),
``base``, and ``extra``: ``serve_engine_lines``, summon ``imports`` that run upward or sit inside functions by
``tests/test_layers.py``'s ranks (modules it does not rank are listed as ``unranked``, never an error), and
``cli_seconds`` (median of 5 fresh ``summon --version`` processes).

Usage (from the repository root):
    python benchmarks/core_surface.py                     # everything: static metrics in seconds, tests ~minutes
    python benchmarks/core_surface.py --skip-tests        # static metrics; test figures kept from --out if there
    python benchmarks/core_surface.py --tests-only-after  # re-run the working tree's tests only, keep the base's
Writes benchmarks/results/core_surface.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, provenance, write_result

sys.path.insert(0, str(REPO / "tests"))
import surface_metrics  # the metric definitions, shared with tests/test_core_surface.py

TEST_KEYS = ("default_tests", "default_test_seconds")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="8e4f438", help="the commit to compare with (main before the rework)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "core_surface.json"))
    tests = p.add_mutually_exclusive_group()
    tests.add_argument("--skip-tests", action="store_true",
                       help="run no tests: keep default_tests/default_test_seconds from --out when it has them")
    tests.add_argument("--tests-only-after", action="store_true",
                       help="run the working tree's default tier only; keep the base's figures from --out")
    return p.parse_args()


def export(commit: str, into: Path) -> Path:
    """The tree of ``commit`` unpacked under ``into`` (git archive)."""
    archive = into / "base.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


# --- static -------------------------------------------------------------------------------------------------


def static(before: Path, after: Path) -> dict[str, dict[str, Any]]:
    """Every static metric as ``{"before", "after", "where_before", "where_after"}``."""
    old, new = surface_metrics.static_metrics(before), surface_metrics.static_metrics(after)
    return {name: {"before": old[name][0], "after": new[name][0], "where_before": old[name][1],
                   "where_after": new[name][1]} for name in new}


def imports(root: Path) -> dict[str, Any]:
    """Summon imports inside function bodies and module-level ones running upward, by the ranks of
    tests/test_layers.py as it stands now (its walk, pointed at ``root``); modules it does not rank are
    listed, not fatal. ``{"error": ...}`` when the layer test cannot be used at all."""
    try:
        import test_layers as layers  # the same walk the import test does
        layers.PACKAGE = root / "src" / "summon"
        edges = layers.edges()
    except Exception as exc:  # the layer test is someone else's file, possibly mid-move: report, do not fail
        return {"error": f"{type(exc).__name__}: {exc}"}
    unranked: set[str] = set()

    def rank(module: str) -> int | None:
        try:
            return layers.RANKS[layers.layer(module)]
        except KeyError:
            unranked.add(module)
            return None

    upward = 0
    for src, target, _, _, nested in edges:
        a, b = rank(src), rank(target)
        upward += int(not nested and a is not None and b is not None and b > a)
    return {"inside_functions": sum(1 for *_, nested in edges if nested), "upward": upward,
            "summon_import_edges": len(edges), "unranked": sorted(unranked)}


def cli_seconds(root: Path, args: list[str], repeats: int = 5) -> float:
    """Median wall seconds of ``summon ARGS`` in a fresh process with ``root/src`` first on the path."""
    code = f"import sys; sys.path.insert(0, {str(root / 'src')!r}); from summon.cli.main import main; main({args!r})"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extra(before: Path, after: Path) -> dict[str, Any]:
    return {"serve_engine_lines": {"before": surface_metrics.file_lines(before, "serve/engine.py"),
                                   "after": surface_metrics.file_lines(after, "serve/engine.py")},
            "imports": {"before": imports(before), "after": imports(after)},
            "cli_seconds": {"version_before": cli_seconds(before, ["--version"]),
                            "version_after": cli_seconds(after, ["--version"])},
            "notes": "imports: by tests/test_layers.py's RANKS of the working tree, for both trees; "
                     "cli_seconds: median of 5 fresh processes on this machine"}


# --- tests --------------------------------------------------------------------------------------------------


def check_imports_from(root: Path) -> None:
    """Refuse to time a tree whose tests would import another tree's summon (the venv's editable install)."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    done = subprocess.run([sys.executable, "-c", "import summon; print(summon.__file__)"], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    seen = Path(done.stdout.strip() or "?").resolve()
    if not seen.is_relative_to((root / "src").resolve()):
        raise RuntimeError(f"with PYTHONPATH={root / 'src'}, summon imports from {seen}, not from {root}: "
                           f"{done.stderr[-500:]}")


def default_tier(root: Path) -> tuple[dict[str, Any], float]:
    """Run the default test tier in ``root``: (pytest's counts, its seconds and exit code; wall seconds)."""
    check_imports_from(root)
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    print(f"running the default tier in {root} ...", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if re.search(r" in [\d.]+s", line)), lines[-1] if lines else "")
    counts: dict[str, Any] = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary)}
    counts.setdefault("passed", 0)
    pytest_seconds = re.search(r" in ([\d.]+)s", summary)
    counts["pytest_seconds"] = float(pytest_seconds.group(1)) if pytest_seconds else None
    counts["exit_code"] = done.returncode
    counts["summary"] = summary.strip("= ")
    return counts, wall


def kept_tests(path: Path) -> dict[str, dict[str, Any]]:
    """The test figures of an earlier result at ``path`` (empty before/after where there are none)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    return {key: {side: (old.get(key) or {}).get(side) for side in ("before", "after")} for key in TEST_KEYS}


def tests(args: argparse.Namespace, base: Path) -> dict[str, dict[str, Any]]:
    out = kept_tests(Path(args.out))
    sides = [("before", base), ("after", REPO)]
    sides = [] if args.skip_tests else sides[1:] if args.tests_only_after else sides
    for side, root in sides:
        out["default_tests"][side], out["default_test_seconds"][side] = default_tier(root)
    return out


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp))
        metrics = static(base, REPO)
        result = {"benchmark": "core_surface", **provenance(seed=0), "base": args.base,
                  **metrics, **tests(args, base), "extra": extra(base, REPO)}
    write_result(Path(args.out), result)
    for name in (*metrics, *TEST_KEYS):
        print(f"{name:28s} before {_short(result[name]['before'])}  after {_short(result[name]['after'])}")


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if k in ("passed", "failed", "skipped", "errors"))
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
