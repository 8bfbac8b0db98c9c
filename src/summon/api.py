"""The Python facade: ``summon.load``, ``train``, ``calibrate``, ``cascade``, ``evaluate`` and ``recipes``.

Each is one call over the layers below; the command line calls the same functions::

    import summon
    teacher_dir = summon.train("sst2_finetune", data_dir="../shared/data")
    model = summon.load(teacher_dir, device="auto")
    summon.calibrate(exits_model, "sst2:dev", max_drop=0.01, data_dir="../shared/data")
    exits_model.predict(["a gem"], budget=0.4)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from summon import recipe as _recipe
from summon.adaptive.calibration import Calibration, CalibrationSpec
from summon.adaptive.cascade import CascadePredictor, build_cascade
from summon.adaptive.kinds import staged_kind
from summon.adaptive.knob import Knob
from summon.adaptive.staged import StagedPredictor
from summon.data.spec import DatasetSpec, TaskData
from summon.evaluate.adaptive import evaluate_adaptive
from summon.evaluate.report import write_report
from summon.evaluate.runner import evaluate_entry, load_for, spec_for
from summon.hf import load_plain
from summon.predictor import Predictor
from summon.saved import read_json_manifest, safe_name
from summon.train.loop import train as _train


def load(path: str | os.PathLike, *, device: str | torch.device | None = "auto") -> Any:
    """Load any saved summon predictor (plain, early exit, cascade, ...), a fine-tuned Hugging Face classifier
    folder (``AutoModelForSequenceClassification``/``...TokenClassification``) or ``hf:HUB_ID``, onto ``device``.

    ``device``: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Nothing is
    unpickled: weights are safetensors, everything else JSON.
    """
    directory = _predictor_path(path)
    manifest = read_json_manifest(directory) if directory.is_dir() else None
    kind = staged_kind(manifest)
    if kind is None:
        return load_plain(path, device=device)  # a summon predictor, a Hugging Face folder or hf:ID
    return kind.load(directory, manifest, device=device)


def _predictor_path(path: Any) -> Path:
    """``path`` as a Path, refusing what cannot name a predictor folder: not a path at all, or a file."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"summon.load: expected a predictor folder (a str or Path) or 'hf:HUB_ID', got "
                        f"{type(path).__name__}")
    directory = Path(path)
    if directory.is_file():
        raise ValueError(f"{directory} is a file; summon.load takes the predictor's folder, the one holding "
                         f"manifest.json (here perhaps {directory.parent})")
    return directory


def _paths(value: Any, what: str) -> list[Any]:
    """A list of predictors or stages, refusing one string (or mapping) that iterating would split into
    characters (or keys)."""
    if isinstance(value, str | os.PathLike | bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{what}: expected a list, got {type(value).__name__}; wrap a single one in a list: "
                        f"[{value!r:.60}]")
    return list(value)


def _data(predictor: Any, data: str | DatasetSpec | TaskData, data_dir: str | None, limit: int | None) -> TaskData:
    """Loaded rows in the predictor's label order, from a spec string (``sst2:dev``), a DatasetSpec or as given."""
    if isinstance(data, TaskData):
        if list(data.labels) != list(predictor.labels):
            raise ValueError(f"{data.source}: the data's labels are [{', '.join(data.labels)}] but the predictor "
                             f"predicts [{', '.join(predictor.labels)}]; load the data for this predictor (e.g. "
                             "summon.evaluate(..., 'sst2:dev') maps label names) or use a matching predictor")
        return data
    spec = data if isinstance(data, DatasetSpec) else spec_for(predictor, data, limit)
    return load_for(predictor, spec, data_dir)


def _as_predictor(predictor: Any, device: Any = "auto") -> Any:
    return load(predictor, device=device) if isinstance(predictor, str | os.PathLike) else predictor


def calibrate(predictor: Any, data: str | DatasetSpec | TaskData, *, budget: float | None = None, max_drop: float | None = None,
              guaranteed: float | None = None, delta: float = 0.1, policy: str = "max_prob", unit: str = "flops",
              temperature_fraction: float = 0.3, seed: int = 0, latency: bool = True, against: str = "reference",
              data_dir: str | None = None, limit: int | None = None, save: bool = True) -> Calibration:
    """Calibrate a staged predictor (or its directory) on held-out ``data`` (a TaskData or ``"sst2:dev"``).

    One of ``budget``, ``max_drop`` (``against`` the reference model's answers or ``"gold"`` labels) or
    ``guaranteed`` (with ``delta``) chooses the default operating point; the default is ``max_drop=0.01``.
    With ``save`` the calibration is written into the saved predictor (the previous one kept).
    """
    predictor = _as_predictor(predictor)
    if not isinstance(predictor, StagedPredictor):
        raise ValueError(f"{predictor.path or 'this predictor'} has no stages to calibrate: train it with "
                         "model.exits (e.g. 'all'), or build a cascade with summon.cascade([...])")
    spec = CalibrationSpec(policy=policy, cost_unit=unit, temperature_fraction=temperature_fraction, seed=seed,
                           delta=delta, **_rule(budget, max_drop, guaranteed, against))
    calibration = predictor.calibrate(_data(predictor, data, data_dir, limit), spec, latency=latency)
    if save and predictor.path is not None:
        predictor.save_calibration()
    return calibration


def _rule(budget: float | None, max_drop: float | None, guaranteed: float | None, against: str) -> dict[str, Any]:
    """The calibration rule and value of one knob (``max_drop=0.01`` when none is given)."""
    Knob.of(budget=budget, max_drop=max_drop, guaranteed=guaranteed)  # validates: at most one, in range
    if against not in ("reference", "gold"):
        raise ValueError(f"against must be 'reference' or 'gold', got {against!r}")
    if budget is not None:
        return {"rule": "budget", "value": budget}
    if guaranteed is not None:
        return {"rule": "guaranteed", "value": guaranteed}
    drop = 0.01 if max_drop is None else max_drop
    return {"rule": "max_drop_gold" if against == "gold" else "max_drop", "value": drop}


def cascade(stages: Sequence[str], *, out: str | os.PathLike | None = None, timeout: float = 10.0,
            device: str | torch.device | None = "auto") -> CascadePredictor:
    """A cascade of saved predictor directories and logits-server URLs, cheapest first; saved to ``out``."""
    built = build_cascade(_paths(stages, "summon.cascade(stages)"), timeout=timeout, device=device)
    if out is not None:
        built.save(out)
    return built


def evaluate(predictors: Sequence[Any], data: str | DatasetSpec | TaskData, *, out: str | os.PathLike | None = None,
             knob: Knob | None = None, latency: bool = True, speedup: bool = False, data_dir: str | None = None,
             limit: int | None = None, max_seconds: float = 10.0, device: Any = "auto",
             names: Sequence[str] | None = None, title: str | None = None,
             progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate predictors (objects or directories) on one split: metrics and measured cost for each; for a
    calibrated staged predictor also the accuracy-vs-cost curve with both oracle curves, the stage histogram,
    reliability diagrams and (``speedup``) measured-vs-FLOPs speed-up. Writes ``report.{json,md,png}`` (and a
    folder of plots per staged predictor) to ``out``."""
    predictors = _paths(predictors, "summon.evaluate(predictors)")
    if names is not None and len(names) != len(predictors):
        raise ValueError(f"summon.evaluate: {len(names)} names for {len(predictors)} predictors; give one name each")
    entries = []
    for i, item in enumerate(predictors):
        predictor = _as_predictor(item, device)
        split = _data(predictor, data, data_dir, limit)
        name = names[i] if names else _name(predictor)
        options = {"latency": latency, "max_seconds": max_seconds}
        if not isinstance(predictor, StagedPredictor):
            options["progress"] = progress
        entry = evaluate_entry(predictor, split, name=name, knob=knob, **options)
        if isinstance(predictor, StagedPredictor) and predictor.calibration is not None:
            folder = Path(out) / safe_name(name) if out else None
            threshold = predictor.threshold_for(knob or Knob())
            entry["adaptive"] = evaluate_adaptive(predictor, split, out_dir=folder, threshold=threshold,
                                                  speed=speedup, title=f"{name} on {split.source}")
            if folder is not None:
                (folder / "adaptive.json").write_text(json.dumps(entry["adaptive"], indent=2, default=str) + "\n")
        entries.append(entry)
    if out is not None:
        source = data if isinstance(data, str) else getattr(data, "source", None) or str(data)
        write_report(entries, out, title=title or f"summon eval on {source}", reference=entries[0]["name"])
    return entries


def _name(predictor: Any) -> str:
    path = Path(predictor.path) if getattr(predictor, "path", None) else None
    if path is None:
        return type(predictor).__name__
    return path.parent.name if path.name == "model" else path.name


def train(recipe: str | os.PathLike, *, data_dir: str | None = None, **overrides: Any) -> Path:
    """Train from a recipe (a file or a shipped name) with overrides; returns the saved model directory.

    Overrides are dotted keys, written with ``__`` for the dots in Python:
    ``summon.train("sst2_finetune", train__lr=3e-5, model__first=3)``.
    """
    pairs = [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in overrides.items()]
    if data_dir is not None:
        pairs.append(f"data.data_dir={json.dumps(str(data_dir))}")
    cfg = _recipe.load_run_config(str(recipe), pairs)
    # train() writes config.yaml once its resume checks pass: a refused resume leaves the old one as it was
    return _train(cfg)


def recipes() -> dict[str, str]:
    """Shipped recipes: name -> what it does."""
    return {name: _recipe.describe(path) for name, path in _recipe.shipped().items()}


__all__ = ["Predictor", "calibrate", "cascade", "evaluate", "load", "recipes", "train"]
