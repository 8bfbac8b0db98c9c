"""What the staged-core rework changed in the package's shape, measured: lines of ``src/summon``, imports that run
upward or hide inside functions, the test tiers' counts and times, and command-line start-up time, each before
(at ``--base``) and after (the working tree).

Usage (from the repository root; takes about three minutes on two cores):
    python benchmarks/core_surface.py --base 0bdb065
Writes benchmarks/results/core_surface.json.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _common import REPO, provenance, write_result

sys.path.insert(0, str(REPO / "tests"))
import test_layers as layers  # the same walk the import test does


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="0bdb065", help="the commit to compare with (main before the rework)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "core_surface.json"))
    p.add_argument("--skip-tests", action="store_true", help="do not run the test tiers")
    return p.parse_args()


def export(commit: str, into: Path) -> Path:
    """The tree of ``commit`` unpacked under ``into`` (git archive)."""
    archive = into / "base.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def source_lines(root: Path) -> dict[str, int]:
    files = sorted((root / "src" / "summon").rglob("*.py"))
    return {"files": len(files), "lines": sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)}


def violations(root: Path) -> dict[str, int]:
    """Upward and in-function summon imports, by the ranks of tests/test_layers.py (modules it does not rank
    are placed by their package; the pre-rework evaluate.metrics/cost count as evaluate, as they were)."""
    layers.PACKAGE = root / "src" / "summon"
    edges = layers.edges()
    inside = sum(1 for *_, nested in edges if nested)
    upward = sum(1 for src, target, _, _, nested in edges
                 if not nested and layers.RANKS[layers.layer(target)] > layers.RANKS[layers.layer(src)])
    return {"inside_functions": inside, "upward": upward, "summon_import_edges": len(edges)}


def cli_seconds(root: Path, args: list[str], repeats: int = 5) -> float:
    """Median wall seconds of ``python -m summon.cli.main ARGS`` with ``root/src`` first on the path."""
    code = f"import sys; sys.path.insert(0, {str(root / 'src')!r}); from summon.cli.main import main; main({args!r})"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_tier(marker: str | None) -> dict[str, float | int]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + (["-m", marker] if marker else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    return {**counts, "wall_seconds": seconds, "exit_code": done.returncode}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp))
        result = {
            "benchmark": "core_surface", **provenance(seed=0), "base": args.base,
            "src_lines": {"before": source_lines(base), "after": source_lines(REPO)},
            "imports": {"before": violations(base), "after": violations(REPO)},
            "cli_seconds": {
                "version_before": cli_seconds(base, ["--version"]), "version_after": cli_seconds(REPO, ["--version"]),
                "help_after": cli_seconds(REPO, ["--help"]), "recipes_ls_after": cli_seconds(REPO, ["recipes", "ls"]),
            },
        }
    if not args.skip_tests:
        result["tests"] = {"default": test_tier(None), "integration": test_tier("integration")}
    result["notes"] = ("imports: summon imports inside function bodies, and module-level imports from a lower "
                       "layer to a higher one, by tests/test_layers.py's ranks; cli_seconds: median of 5 fresh "
                       "processes; tests: the default tier (-m 'not slow and not integration') and -m integration, "
                       "wall seconds of one pytest run each on this machine")
    write_result(Path(args.out), result)


if __name__ == "__main__":
    main()
