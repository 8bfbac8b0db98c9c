"""The Python facade: ``summon.load``, ``train``, ``calibrate``, ``quantize``, ``cascade``, ``evaluate`` and
``recipes``.

Each is one call over the layers below; the command line calls the same functions::

    import summon
    teacher_dir = summon.train("sst2_finetune", data_dir="../shared/data")
    model = summon.load(teacher_dir, device="auto")
    summon.calibrate(exits_model, "sst2:dev", max_drop=0.01, data_dir="../shared/data")
    exits_model.predict(["a gem"], budget=0.4)
    int8 = summon.quantize(exits_model, calibrate_on="sst2:dev", max_drop=0.01, data_dir="../shared/data")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from summon.adaptive.calibration import Calibration, CalibrationSpec
from summon.adaptive.cascade import CascadePredictor, build_cascade, stage_folders
from summon.adaptive.kinds import as_staged
from summon.adaptive.kinds import load as load_kind
from summon.adaptive.knob import Knob
from summon.core.files import check_destination, check_report_folder, check_writable
from summon.core.options import options_for
from summon.data.labelset import same_labels, show_set
from summon.data.spec import DatasetSpec, TaskData
from summon.evaluation.adaptive import evaluate_adaptive
from summon.evaluation.report import write_report
from summon.evaluation.runner import evaluate_entry, load_for, spec_for
from summon.models.hf import HF_PREFIX
from summon.models.quantize import Quantization
from summon.predictors.predictor import Predictor
from summon.predictors.saved import safe_name
from summon.search.auto import run_auto
from summon.search.config import AutoConfig
from summon.training import recipe as _recipe
from summon.training.loop import train as _train


def load(path: str | os.PathLike, *, device: str | torch.device | None = "auto") -> Any:
    """Load any saved summon predictor (plain, early exit, cascade, ...), a fine-tuned Hugging Face classifier
    folder (``AutoModelForSequenceClassification``/``...TokenClassification``) or ``hf:HUB_ID``, onto ``device``.

    ``device``: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Nothing is
    unpickled: weights are safetensors, everything else JSON.
    """
    _predictor_path(path)
    return load_kind(path, device=device)


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
        if not same_labels(data.labels, predictor.labels):
            raise ValueError(f"{data.source}: the data's labels are {show_set(data.labels)} but the predictor "
                             f"predicts {show_set(predictor.labels)}; load the data for this predictor (e.g. "
                             "summon.evaluate(..., 'sst2:dev') maps label names) or use a matching predictor")
        return data
    spec = data if isinstance(data, DatasetSpec) else spec_for(predictor, data, limit)
    return load_for(predictor, spec, data_dir)


def _as_predictor(predictor: Any, device: Any = "auto") -> Any:
    """A folder loaded as its kind, or a predictor object as its kind (a plain one as the one-stage kind)."""
    return load(predictor, device=device) if isinstance(predictor, str | os.PathLike) else as_staged(predictor)


# the CalibrationSpec fields that the knob's keywords give (**options name the others)
SPEC_SET_BY = {"rule": ("budget", "max_drop", "guaranteed", "against"), "value": ("budget", "max_drop", "guaranteed"),
               "cost_unit": ("unit",)}
_SET_BY = {name: " or ".join(f"{keyword}=" for keyword in keywords) for name, keywords in SPEC_SET_BY.items()}
_KNOB = ("budget", "max_drop", "guaranteed", "against", "unit", "latency", "data_dir", "limit")
_KEYWORDS = {"summon.calibrate": (*_KNOB, "save"), "summon.quantize": (*_KNOB, "dtype", "calibrate_on", "out")}


def calibrate(predictor: Any, data: str | DatasetSpec | TaskData, *, budget: float | None = None,
              max_drop: float | None = None, guaranteed: float | None = None, against: str | None = None,
              unit: str | None = None, latency: bool = True, data_dir: str | None = None, limit: int | None = None,
              save: bool = True, **options: Any) -> Calibration:
    """Calibrate a staged predictor (or its directory) on held-out ``data`` (a TaskData or ``"sst2:dev"``).

    One of ``budget``, ``max_drop`` (``against`` the reference model's answers, the default, or ``"gold"``
    labels) or ``guaranteed`` (with ``delta``) chooses the default operating point; the default is
    ``max_drop=0.01``. ``unit`` is the cost unit (``"flops"``, the default, or ``"ms"``). With ``save`` the
    calibration is written into the saved predictor (the previous one kept).

    ``**options`` are the fields of :class:`~summon.adaptive.calibration.CalibrationSpec`, each documented there
    (its ``help``): ``policy`` (the confidence score), ``temperature_fraction``, ``seed``, ``delta``;
    ``policy="learned"`` fits a logistic score per stage on the temperature rows (:mod:`summon.adaptive.learned`)
    shaped by ``learned_target`` (``"reference"``: agree with the reference model; ``"gold"``: be right),
    ``learned_l2`` and ``learned_features``; a tagger with exits reduces its words' scores over the sentence by
    ``token_reduce`` (``min``, ``mean`` or ``path``). An unknown option is refused with a suggestion.
    """
    spec = calibration_spec(budget=budget, max_drop=max_drop, guaranteed=guaranteed, against=against, unit=unit,
                            where="summon.calibrate", **options)  # checked before anything loads
    return _calibrate(_as_predictor(predictor), data, spec, latency=latency, data_dir=data_dir, limit=limit,
                      save=save)


def calibration_spec(*, budget: float | None = None, max_drop: float | None = None, guaranteed: float | None = None,
                     against: str | None = None, unit: str | None = None, where: str = "summon.calibrate",
                     **options: Any) -> CalibrationSpec:
    """The :class:`CalibrationSpec` that :func:`calibrate` and :func:`quantize` build from their keywords: the
    knob's rule and value, ``unit`` as the cost unit, and ``options`` (its other fields, checked by name)."""
    chosen = options_for(options, CalibrationSpec, where=where, set_by=_SET_BY, also=_KEYWORDS.get(where, ()))[0]
    if unit is not None:
        chosen["cost_unit"] = unit
    return CalibrationSpec(**chosen, **_rule(budget, max_drop, guaranteed, against or "reference"))


def _calibrate(predictor: Any, data: str | DatasetSpec | TaskData, spec: CalibrationSpec, *, latency: bool,
               data_dir: str | None, limit: int | None, save: bool) -> Calibration:
    predictor.require_stages("calibration")
    if save and predictor.path is not None:  # a folder we cannot write to is refused before the pass, not after
        check_writable(predictor.path, what="the calibration", advice=(
            "Copy the predictor to a folder you can write to and calibrate the copy, or fix the folder's "
            "permissions (the calibration is written into its manifest.json)"))
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


QUANTIZED = "the folder of the predictor being quantized"


def quantize(predictor: Any, *, dtype: str = "int8", calibrate_on: str | DatasetSpec | TaskData | None = None,
             out: str | os.PathLike | None = None, budget: float | None = None, max_drop: float | None = None,
             guaranteed: float | None = None, against: str | None = None, unit: str | None = None,
             latency: bool = True, data_dir: str | None = None, limit: int | None = None, **options: Any) -> Any:
    """An int8 copy of a predictor (an object, or a folder loaded on the CPU): every ``nn.Linear`` of its torch
    models replaced by a dynamic int8 one (``torch.ao.nn.quantized.dynamic.Linear``; :mod:`summon.models.quantize`).

    Plain predictors and every staged kind: early exit (its one model), cascade (each local stage; a remote stage
    is left as it is served, with a warning) and progressive ensemble (every member). The copy runs on the CPU
    (dynamic int8 kernels exist for no other device); the original is left as it is.

    The calibration is never carried over: temperatures, costs and thresholds measured on fp32 stages do not hold
    for int8 ones, so the copy is uncalibrated (a knob is refused; without one every input runs to the last
    stage) until it is calibrated: ``calibrate_on`` held-out data does that here, with the keywords of
    :func:`calibrate` (``budget``/``max_drop``/``guaranteed`` choose the default operating point, ``max_drop=0.01``
    if none; ``**options`` are the fields of :class:`~summon.adaptive.calibration.CalibrationSpec`, such as
    ``policy``, ``learned_l2`` or ``learned_features``). FLOPs count as for the fp32 model (an int8 multiply-add is
    2 FLOPs too); the calibration measures the int8 stages' milliseconds on this machine, so ``unit="ms"``
    fractions are the int8 ones.

    With ``out`` the copy is saved there — the fp32 weights as they are and a ``quantization`` manifest section,
    applied again at load — and returned as ``summon.load(out, device="cpu")`` gives it. ``out`` follows the one
    rule of :func:`~summon.core.files.check_destination`: a new or empty folder, apart from the predictor's folder
    and its stages', checked before anything loads.

    A benchmark's four predictors: ``fp32 = summon.load(path, device="cpu")`` and ``int8 = summon.quantize(fp32,
    calibrate_on=split)``; full depth ``predict(texts, threshold=float("inf"))`` (or ``run_full``), early exit
    ``predict(texts, max_drop=...)``; or ``summon.evaluate([fp32, int8], split, speedup=True)``.

    Raises:
        ValueError: For a dtype other than ``"int8"``; calibration keywords without ``calibrate_on``;
            ``calibrate_on`` for a plain predictor; an ``out`` that is a file, holds anything, or is (or lies
            inside) the predictor's or a stage's folder; a predictor int8 already.
        TypeError: For an option that is no field of the calibration (with a suggestion).
    """
    spec = Quantization.of(dtype)  # every argument is checked before anything loads
    calibration = calibration_spec(budget=budget, max_drop=max_drop, guaranteed=guaranteed, against=against,
                                   unit=unit, where="summon.quantize", **options)
    knobs = {"budget": budget, "max_drop": max_drop, "guaranteed": guaranteed, "against": against, "unit": unit}
    given = [name for name, value in knobs.items() if value is not None] + list(options)
    if calibrate_on is None and given:
        them = "it" if len(given) == 1 else "them"
        raise ValueError(f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} how the int8 predictor is "
                         f"calibrated; give calibrate_on= (held-out data) with {them}, or drop {them}")
    source = getattr(predictor, "path", None) if not isinstance(predictor, str | os.PathLike) else predictor
    inputs = {source: QUANTIZED} if source is not None and not str(source).startswith(HF_PREFIX) else {}
    if out is not None:  # the one rule (summon.core.files), before anything loads ...
        check_destination(out, what="the int8 predictor", option="out folder", sources=inputs)
    predictor = _as_predictor(predictor, device="cpu")
    if out is not None:  # ... and once the cascade's stage folders are known, before any work
        check_destination(out, what="the int8 predictor", option="out folder",
                          sources={**inputs, **stage_folders(getattr(predictor, "stages", []))})
    if calibrate_on is not None:
        predictor.require_stages("calibration")
    if not hasattr(predictor, "quantized"):
        raise TypeError(f"summon.quantize: a {type(predictor).__name__} cannot be quantized (it has no quantized())")
    quantized = predictor.quantized(spec)
    if calibrate_on is not None:
        _calibrate(quantized, calibrate_on, calibration, latency=latency, data_dir=data_dir, limit=limit, save=False)
    if out is None:
        return quantized
    quantized.save(out)
    return load(out, device="cpu")


def cascade(stages: Sequence[str], *, out: str | os.PathLike | None = None, timeout: float = 10.0,
            device: str | torch.device | None = "auto") -> CascadePredictor:
    """A cascade of saved predictor directories and logits-server URLs, cheapest first; saved to ``out``, a new or
    empty folder apart from the stages' (:func:`~summon.core.files.check_destination`, checked before any stage
    loads)."""
    stages = _paths(stages, "summon.cascade(stages)")
    if out is not None:  # refused before any stage loads or server is asked (CascadePredictor.save checks again)
        check_destination(out, what="the cascade", option="--out folder",
                          sources={s: f"the folder of stage 'stage{i}'" for i, s in enumerate(map(str, stages))
                                   if not s.startswith(HF_PREFIX) and "://" not in s})
    built = build_cascade(stages, timeout=timeout, device=device)
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
    if out is not None:
        check_report_folder(out, option="out", sources=_report_sources(predictors, data))
    if names is not None and len(names) != len(predictors):
        raise ValueError(f"summon.evaluate: {len(names)} names for {len(predictors)} predictors; give one name each")
    entries = []
    for i, item in enumerate(predictors):
        predictor = _as_predictor(item, device)
        split = _data(predictor, data, data_dir, limit)
        name = names[i] if names else _name(predictor)
        entry = evaluate_entry(predictor, split, name=name, knob=knob, latency=latency, max_seconds=max_seconds,
                               progress=progress)
        if predictor.calibration is not None:
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


def _report_sources(predictors: Sequence[Any], data: Any) -> dict[str, str]:
    """The evaluation's local inputs, which its report folder must stay apart from (a string that is no path, such
    as ``sst2:dev`` or ``hf:ID``, is not there and is passed over)."""
    sources = {str(p): f"the predictor {p}" for p in predictors if isinstance(p, str | os.PathLike)}
    for p in predictors:
        path = getattr(p, "path", None)
        if isinstance(path, str | os.PathLike) and not str(path).startswith("hf:"):
            sources[str(path)] = f"the predictor {path}"
    if isinstance(data, str | os.PathLike):
        sources[str(data)] = "the evaluation data"
    return sources


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


def auto(teacher: str | os.PathLike, *, train: str, heldout: str, out: str | os.PathLike = "summon_auto",
         dry_run: bool = False, **options: Any) -> dict[str, Any]:
    """From a teacher, a training split and a labelled held-out split to the cheapest predictor that keeps a
    certified promise, across every method (``summon auto``; :mod:`summon.search.auto`). ``**options`` are the
    fields of :class:`~summon.search.config.AutoConfig` (``max_drop``, ``budget``, ``guaranteed``, ``delta``,
    ``time``, ``device``, ``only``, ...; an unknown one is refused with a suggestion). Returns the report's content:
    ``chosen`` (its ``path`` is the saved predictor) and every candidate's figures; with ``dry_run`` the plan."""
    chosen = options_for(options, AutoConfig, where="summon.auto")[0]
    config = AutoConfig(teacher=str(teacher), train=train, heldout=heldout, out=str(out), **chosen)
    return run_auto(config, dry_run=dry_run)


def recipes() -> dict[str, str]:
    """Shipped recipes: name -> what it does."""
    return {name: _recipe.describe(path) for name, path in _recipe.shipped().items()}


__all__ = ["Predictor", "auto", "calibrate", "cascade", "evaluate", "load", "quantize", "recipes", "train"]
