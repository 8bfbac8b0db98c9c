"""Provenance shared by the benchmark scripts: the exact command, commit, versions and machine."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from summon.measure.cost import machine_info

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("summon", "torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors", "numpy")


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    commit = run("rev-parse", "HEAD") or "unknown"
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


_STARTED_AT_COMMIT = git_commit()  # taken at import, i.e. when the benchmark starts: the code it runs


def provenance(seed: int) -> dict[str, Any]:
    return {"command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "commit": _STARTED_AT_COMMIT, "commit_at_finish": git_commit(), "versions": versions(),
            "machine": machine_info(), "seed": seed}


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (portable results), else absolute."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def train_seconds(run_dir: str | Path) -> float:
    """Wall-clock seconds a training run spent across all its sessions, from its ``metrics.jsonl``.

    Each session runs from its ``start``/``resume`` record to its last record, so the time between an
    interruption and the resumption is not counted (steps redone after a resumption are), and loading a
    run that had already finished adds only that load's few seconds.
    """
    total, begun, last = 0.0, None, None
    for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") in ("start", "resume"):
            total += (last - begun) if begun is not None else 0.0
            begun = record["time"]
        last = record["time"]
    return total + ((last - begun) if begun is not None else 0.0)


def setup_logging() -> None:
    """INFO logs from summon with timestamps; accelerate and transformers only from WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_paths(work: str | None, out: str | None, name: str) -> tuple[Path, Path]:
    """The run folders (default benchmarks/work/<name>) and the result file (default benchmarks/results/<name>.json)."""
    return (Path(work or REPO / "benchmarks" / "work" / name),
            Path(out or REPO / "benchmarks" / "results" / f"{name}.json"))
