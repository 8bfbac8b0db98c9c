"""Behaviour stays as it is: the early-exit and cascade benchmarks at small settings, run from two commits (before
and after a refactoring), must give identical figures except timings.

Each side runs from its own ``git worktree`` of the commit (so the working tree is never touched):
    early_exit.py --dataset sst2 --train-limit 1000 --epochs 1 --schedules two_stage --policies max_prob,learned
                  --eval-limit 400 --speedup-rows 40 --halvings 5 --guarantee-splits 20
    cascade.py    --dataset sst2 --teacher <its teacher> --early-exit <its two_stage exits> --students ngram
                  --train-limit 1000 --eval-limit 400 --halvings 5
Every model is trained by each side's own code. Then every leaf of the two result files is compared, except
provenance (command, commit, versions, machine, paths of the run folders) and timings (keys naming
milliseconds, seconds, minutes, speed-ups, realised throughput).

Usage (from the repository root; about 8 minutes a side on two cores):
    python benchmarks/refactor_parity.py --base 8e4f438 --head HEAD
    python benchmarks/refactor_parity.py --base 8e4f438 --head 638ae3e --work /work/parity --compare-only
Writes benchmarks/results/refactor_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import REPO, provenance, write_result

RUNS = {
    "early_exit_sst2.json": ["benchmarks/early_exit.py", "--dataset", "sst2", "--train-limit", "1000", "--epochs", "1",
                             "--schedules", "two_stage", "--policies", "max_prob,learned", "--eval-limit", "400",
                             "--speedup-rows", "40", "--halvings", "5", "--guarantee-splits", "20"],
    "cascade_sst2.json": ["benchmarks/cascade.py", "--dataset", "sst2", "--students", "ngram", "--train-limit", "1000",
                          "--eval-limit", "400", "--halvings", "5"],
}
PROVENANCE = {"command", "commit", "commit_at_finish", "versions", "machine", "plot", "plots", "path", "teacher"}
TIMING_WORDS = {"ms", "seconds", "minutes", "time", "speedup", "realised", "realized", "latency", "wall",
                "throughput", "elapsed", "rows_per_second"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="8e4f438", help="the commit before the refactoring")
    p.add_argument("--head", default="HEAD", help="the commit after it")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "refactor_parity"),
                   help="worktrees and run folders: WORK/{before,after}/")
    p.add_argument("--compare-only", action="store_true", help="compare the result files already in WORK")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refactor_parity.json"))
    return p.parse_args()


def run_side(commit: str, side: Path, data_dir: str) -> None:
    """Both benchmarks from a worktree of ``commit``, results and models under ``side``."""
    tree = side / "tree"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True)
    env_py = [sys.executable]
    common = ["--data-dir", data_dir]
    ee = RUNS["early_exit_sst2.json"] + common + ["--work", str(side / "work_ee"), "--out",
                                                  str(side / "early_exit_sst2.json")]
    cascade = RUNS["cascade_sst2.json"] + common + [
        "--teacher", str(side / "work_ee" / "teacher" / "model"), "--early-exit",
        str(side / "work_ee" / "two_stage" / "model"), "--work", str(side / "work_cascade"), "--out",
        str(side / "cascade_sst2.json")]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}  # that commit's summon, not the installed one
    for argv in (ee, cascade):
        subprocess.run(env_py + argv, cwd=tree, env=env, check=True)


def leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, str(i)))
    else:
        yield path, node


def skipped(path: tuple[str, ...]) -> bool:
    """Provenance, or a key one of whose ``_``-separated words names a timing."""
    return any(part in PROVENANCE or bool(set(part.lower().split("_")) & TIMING_WORDS) for part in path)


def compare(before: Path, after: Path) -> dict:
    a, b = dict(leaves(json.loads(before.read_text()))), dict(leaves(json.loads(after.read_text())))
    paths = sorted(set(a) | set(b))
    kept = [p for p in paths if not skipped(p)]
    differ = [{"path": ".".join(p), "before": a.get(p, "<missing>"), "after": b.get(p, "<missing>")}
              for p in kept if a.get(p, "<missing>") != b.get(p, "<missing>")]
    return {"compared": len(kept), "identical": len(kept) - len(differ), "differ": len(differ),
            "skipped_timing_or_provenance": len(paths) - len(kept), "differences": differ}


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    base = subprocess.run(["git", "rev-parse", args.base], cwd=REPO, capture_output=True, text=True, check=True)
    head = subprocess.run(["git", "rev-parse", args.head], cwd=REPO, capture_output=True, text=True, check=True)
    if not args.compare_only:
        run_side(base.stdout.strip(), work / "before", args.data_dir)
        run_side(head.stdout.strip(), work / "after", args.data_dir)
    files = {name: compare(work / "before" / name, work / "after" / name) for name in RUNS}
    result = {"benchmark": "refactor_parity", **provenance(seed=42), "base": base.stdout.strip(),
              "head": head.stdout.strip(), "settings": {name: " ".join(argv[1:]) for name, argv in RUNS.items()},
              "files": files, "all_identical": all(f["differ"] == 0 for f in files.values()),
              "notes": "every leaf of each result file compared, except provenance (command, commit, versions, "
                       "machine, plot paths, run-folder paths) and timings (keys naming ms, seconds, minutes, "
                       "time, speed-ups, realised figures, latency, throughput); each side trained its own models "
                       "from its own commit's code"}
    write_result(Path(args.out), result)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "differences"} for k, v in files.items()}))


if __name__ == "__main__":
    main()
