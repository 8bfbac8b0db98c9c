"""How ``summon auto`` makes a candidate: a training run of the shipped method's recipe with the user's teacher and
data (resumed when cut short), an int8 copy, or a cascade of two built ones; and the command that makes it alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from summon.adaptive.cascade import build_cascade
from summon.adaptive.kinds import load
from summon.core.config import dump_yaml, from_dict, to_dict
from summon.data.catalog import CATALOG
from summon.data.spec import DatasetSpec
from summon.evaluation.runner import spec_for
from summon.models.quantize import Quantization
from summon.search.candidates import Candidate
from summon.search.config import AutoConfig
from summon.training.config import RunConfig
from summon.training.loop import train

__all__ = ["build_candidate", "reproduce_command", "teacher_facts", "train_spec"]


def teacher_facts(teacher: Any) -> dict[str, Any]:
    """What the plan needs from the teacher: its model kind, layers and pooling (from its saved architecture)."""
    arch = (getattr(teacher, "manifest", None) or {}).get("architecture") or {}
    config = arch.get("hf_config") or {}
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    return {"kind": arch.get("type"), "layers": layers, "pooling": arch.get("pooling")}


def build_candidate(candidate: Candidate, out: Path, config: AutoConfig, built: dict[str, str], files: dict[str, str],
           teacher: Any) -> Path:
    """Make the candidate's predictor folder (resuming a training run that was cut short)."""
    folder = out / "candidates" / candidate.name
    if candidate.method == "teacher":
        return Path(config.teacher)
    target = folder / "predictor"
    if candidate.method in ("int8", "cascade") and not (target / "manifest.json").exists():
        shutil.rmtree(target, ignore_errors=True)  # a copy cut short is made again
        if candidate.method == "int8":  # the calibration is not carried over: _measure calibrates the copy
            load(built[candidate.needs[0]], device="cpu").quantized(Quantization.of("int8")).save(target)
        else:
            build_cascade([built[n] for n in candidate.needs], device=config.device).save(target)
    if candidate.method in ("int8", "cascade"):
        return target
    cfg = _run_config(candidate, folder, config, files, teacher)
    dump_yaml(to_dict(cfg), folder / "recipe.yaml")
    return train(cfg)


def _run_config(candidate: Candidate, folder: Path, config: AutoConfig, files: dict[str, str], teacher: Any) -> RunConfig:
    recipe = json.loads(json.dumps(candidate.recipe))
    recipe["train"] = {**recipe.get("train", {}), "seed": config.seed, "progress": False}
    recipe.update(teacher=str(config.teacher), output_dir=str(folder / "run"), cache_dir=str(Path(config.out) / "cache"),
                  description=f"summon auto candidate {candidate.name}: {candidate.notes}",
                  data={"train": _spec_dict(train_spec(teacher, config), teacher),
                        "eval": {"path": files["calibration"], "task": teacher.task, "labels": list(teacher.labels)},
                        **({"data_dir": config.data_dir} if config.data_dir else {})})
    return from_dict(RunConfig, recipe, source=f"summon auto candidate {candidate.name}")


def reproduce_command(candidate: Candidate, out: Path, config: AutoConfig, built: dict[str, str]) -> str:
    """How to make this candidate alone with the summon CLI (what the search ran)."""
    folder = out / "candidates" / candidate.name
    calibrate = f"summon calibrate {{path}} --data {out / 'data' / 'calibration.jsonl'} --max-drop " \
                f"{config.target.get('max_drop', 0.01)} --against gold"
    if candidate.method == "teacher":
        return f"(the teacher: {config.teacher})"
    if candidate.method == "int8":
        quantize = f"summon quantize {built[candidate.needs[0]]} {folder / 'predictor'}"
        if candidate.needs[0] == "teacher":
            return quantize
        return quantize + f" --data {out / 'data' / 'calibration.jsonl'} --max-drop " \
                          f"{config.target.get('max_drop', 0.01)} --against gold"
    if candidate.method == "cascade":
        path = folder / "predictor"
        stages = " ".join(built[n] for n in candidate.needs)
        return f"summon cascade {stages} --out {path} && " + calibrate.format(path=path)
    path = folder / "run" / "model"
    calibrated = candidate.method in ("early_exit", "cascade_continue")
    return f"summon train {folder / 'recipe.yaml'}" + (" && " + calibrate.format(path=path) if calibrated else "")


def train_spec(teacher: Any, config: AutoConfig) -> DatasetSpec:
    return spec_for(teacher, config.train, config.train_limit)


def _spec_dict(spec: DatasetSpec, teacher: Any) -> dict[str, Any]:
    data = {k: v for k, v in to_dict(spec).items() if v not in (None, {}, [])}
    if spec.name not in CATALOG:
        data["labels"] = list(teacher.labels)
    return data
