"""A ``summon auto`` run's folder: its state file (what each finished candidate measured, the time used), written
at once after every candidate so a killed run continues, and the held-out parts it cut."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from summon.data.spec import TaskData
from summon.search.config import AutoConfig

__all__ = ["PARTS", "STATE", "load_state", "not_an_auto_run", "save_state", "write_parts"]


STATE = "auto_state.json"


PARTS = ("calibration", "selection", "certification")


def _fixed(config: AutoConfig) -> dict[str, Any]:
    """The settings an earlier run must share to be continued (not the time budget or the device)."""
    return {k: v for k, v in asdict(config).items() if k not in ("time", "device", "out")}


def load_state(out: Path, config: AutoConfig) -> dict[str, Any]:
    path = out / STATE
    if not path.exists():
        return {"format": "summon-auto", "config": _fixed(config), "seconds_used": 0.0, "candidates": {}}
    state = json.loads(path.read_text(encoding="utf-8"))
    fixed = json.loads(json.dumps(_fixed(config)))
    if state.get("config") != fixed:
        changed = sorted(k for k in set(fixed) | set(state.get("config", {}))
                         if fixed.get(k) != state.get("config", {}).get(k))
        raise ValueError(f"--out {out} holds a summon auto run with other settings ({', '.join(changed)} differ); "
                         "run the same command to continue it, or give another --out")
    return state


def save_state(out: Path, state: dict[str, Any], seconds: float) -> None:
    state["seconds_used"] = seconds
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / STATE)


def not_an_auto_run(folder: Path) -> list[str]:
    return [] if (folder / STATE).is_file() or (folder / "candidates").is_dir() else sorted(p.name for p in folder.iterdir())


def write_parts(out: Path, heldout: TaskData, parts: tuple[np.ndarray, ...]) -> dict[str, str]:
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, ids in zip(PARTS, parts, strict=True):
        path = folder / f"{name}.jsonl"
        rows = [{**{k: v for k, v in heldout.examples[i].items() if k != "label"},
                 "label": heldout.labels[heldout.examples[i]["label"]]} for i in ids]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files[name] = str(path)
    return files
