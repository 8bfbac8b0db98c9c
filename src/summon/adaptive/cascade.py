"""Cascades that summon the teacher only when in doubt (Rawat et al. 2021, *When in Doubt, Summon the Titans*).

A cascade is a chain of separate models — e.g. bag of n-grams -> 2-layer transformer -> teacher — each a
stage of the adaptive core: it answers the rows whose confidence score reaches the threshold and defers
the rest to the next stage. Execution is stage-major: the first stage runs on every row in full batches,
the deferred rows are gathered into full batches for the next stage, and so on, so each stage batches as
well as it can (each stage tokenises with its own featurizer). Every prediction says which stage answered,
what it cost, and whether it is a fallback (a later stage was asked but did not answer, e.g. a remote
teacher timed out, so the last stage that did answer gave it).

Deferral scores (one per non-final stage, all "high = answer here"): the calibrated ``max_prob``,
``margin`` or ``entropy`` of the stage's class probabilities; ``defer`` — one minus the probability of a
learned defer output (students trained with the learning-to-defer loss of :mod:`summon.methods.easy_kd`);
or ``gate`` — a logistic model predicting agreement with the last stage (:mod:`summon.adaptive.gate`).
Thresholds, temperatures and costs come from held-out data exactly as for early exit.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import summon
from summon.adaptive.calibration import calibration_report, fit_temperature
from summon.adaptive.costs import StageCosts
from summon.adaptive.gate import Gate
from summon.adaptive.knob import KnobMixin, softmax_rows
from summon.adaptive.policies import POLICIES
from summon.adaptive.predictor import choose, split_rows
from summon.adaptive.stages import LocalStage, StageUnavailable, split_defer
from summon.adaptive.thresholds import ThresholdTable
from summon.data.spec import TaskData
from summon.predictor import MANIFEST, Prediction, canonical_inputs

CASCADE_FORMAT = "summon-cascade"
SCORERS = ("max_prob", "margin", "entropy", "defer", "gate")


def readout(raw: np.ndarray, num_labels: int, temperature: float, scorer: str,
            gate: Gate | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class logits ``[n, K]`` and confidence scores ``[n]`` of one stage's raw logits."""
    classes, _ = split_defer(raw, num_labels)
    scaled = classes.astype(np.float64) / temperature
    probs = softmax_rows(scaled)
    if scorer == "defer":
        if raw.shape[1] != num_labels + 1:
            raise ValueError("scorer 'defer' needs a stage with a defer output (trained with easy_kd variant 'defer')")
        score = 1.0 - softmax_rows(raw.astype(np.float64) / temperature)[:, num_labels]
    elif scorer == "gate":
        if gate is None:
            raise ValueError("scorer 'gate' needs a fitted gate; calibrate the cascade with scorer='gate'")
        score = gate(probs).numpy()
    elif scorer in POLICIES and scorer != "patience":
        score = POLICIES[scorer](torch.from_numpy(probs), None)[0].numpy()
    else:
        raise ValueError(f"unknown cascade scorer '{scorer}'; choose from {', '.join(SCORERS)}")
    return scaled, score


@dataclass
class CascadeResult:
    logits: np.ndarray  # [N, K] calibrated class logits of the answering stage
    stage: np.ndarray  # [N] answering stage
    fallback: np.ndarray  # [N] True where a later stage was asked and did not answer


class CascadePredictor(KnobMixin):
    """A chain of stages with one run-time knob; build it from stages or load it from a cascade directory."""

    calibrate_hint = "summon calibrate {where} --data SPLIT"

    def __init__(self, stages: Sequence[Any], task: str, labels: Sequence[str], manifest: dict | None = None,
                 path: Path | None = None):
        if len(stages) < 2:
            raise ValueError("a cascade needs at least two stages (e.g. a student and its teacher)")
        for stage in stages:
            if list(stage.labels) != list(labels):
                raise ValueError(f"stage '{stage.name}' predicts {stage.labels}, the cascade {list(labels)}")
        self.stages = list(stages)
        self.task, self.labels = task, list(labels)
        self.manifest = manifest or {}
        self.path = path

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def gates(self) -> list[Gate | None]:
        saved = (self.adaptive or {}).get("gates") or [None] * self.num_stages
        return [Gate(**g) if g else None for g in saved]

    # --- running ----------------------------------------------------------------------------------

    def run(self, examples: Sequence[dict[str, Any]], threshold: float | Sequence[float], *,
            batch_size: int = 64) -> CascadeResult:
        """Stage-major adaptive execution over canonical examples."""
        n, k_labels = len(examples), len(self.labels)
        limits = [float(threshold)] * self.num_stages if np.isscalar(threshold) else [float(t) for t in threshold]
        temps, scorer, gates = self.temperatures(), self.policy_name(), self.gates()
        logits = np.zeros((n, k_labels))
        stage = np.zeros(n, dtype=np.int64)
        fallback = np.zeros(n, dtype=bool)
        remaining = np.arange(n)
        for k, current in enumerate(self.stages):
            try:
                raw = current.logits([examples[i] for i in remaining], batch_size)
            except StageUnavailable:
                if k == 0:
                    raise
                fallback[remaining] = True  # they keep the answer of the last stage that answered
                break
            last = k == self.num_stages - 1
            scaled, score = readout(raw, k_labels, temps[k], "max_prob" if last else scorer, gates[k])
            logits[remaining], stage[remaining] = scaled, k  # provisional: kept if later stages fail
            if last:
                break
            remaining = remaining[score < limits[k]]
            if len(remaining) == 0:
                break
        return CascadeResult(logits=logits, stage=stage, fallback=fallback)

    def predict(self, inputs: Sequence[Any], *, budget: float | None = None, max_drop: float | None = None,
                threshold: float | None = None, batch_size: int = 64) -> list[Prediction]:
        """Predict with the knob (``budget``, ``max_drop`` or ``threshold``); see :class:`Prediction`."""
        limit = self.threshold_for(budget=budget, max_drop=max_drop, threshold=threshold)
        examples = canonical_inputs(self.task, inputs)
        result = self.run(examples, limit, batch_size=batch_size)
        fractions = self.stage_fractions()
        out = []
        for probs, k, fell in zip(softmax_rows(result.logits), result.stage, result.fallback, strict=True):
            j = int(probs.argmax())
            out.append(Prediction(label=self.labels[j], label_id=j, probs=[float(p) for p in probs], stage=int(k),
                                  cost=None if fractions is None else fractions[int(k)], fallback=bool(fell)))
        return out

    def stage_raw_logits(self, examples: Sequence[dict[str, Any]], *, batch_size: int = 64) -> list[np.ndarray]:
        """Raw logits of every stage on every row (for calibration and evaluation)."""
        return [stage.logits(examples, batch_size) for stage in self.stages]

    # --- saving -----------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the cascade manifest; local stages are referenced by path (relative when inside ``directory``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stages = [_stage_entry(stage, directory) for stage in self.stages]
        manifest = {**{k: v for k, v in self.manifest.items() if k not in ("stages",)},
                    "format": CASCADE_FORMAT, "format_version": 1, "summon_version": summon.__version__,
                    "task": self.task, "labels": self.labels, "stages": stages,
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, directory / MANIFEST)
        self.manifest, self.path = manifest, directory
        return directory


def _stage_entry(stage: Any, directory: Path) -> dict[str, Any]:
    entry = stage.describe()
    if entry.get("type") == "local":
        if not entry.get("path"):
            raise ValueError(f"stage '{stage.name}' was built in memory: save it (Predictor.save) and build the "
                             "cascade from its directory")
        path = Path(entry["path"]).resolve()
        entry["path"] = os.path.relpath(path, directory.resolve())
    return entry


def load_cascade(directory: Path, manifest: dict[str, Any]) -> CascadePredictor:
    from summon.predictor import load
    from summon.serve.protocol import RemoteStage

    stages = []
    for i, entry in enumerate(manifest.get("stages", [])):
        if entry.get("type") == "local":
            path = (directory / entry["path"]).resolve()
            stages.append(LocalStage(entry.get("name") or f"stage{i}", load(path), str(path)))
        elif entry.get("type") == "remote":
            stages.append(RemoteStage.from_dict(entry))
        else:
            raise ValueError(f"{directory / MANIFEST}: stage {i} has unknown type {entry.get('type')!r}")
    return CascadePredictor(stages, manifest["task"], manifest["labels"], manifest, path=directory)


def build_cascade(stage_specs: Sequence[str], *, timeout: float = 10.0) -> CascadePredictor:
    """Stages from predictor directories or ``http(s)://`` URLs of logits servers, cheapest first."""
    from summon.predictor import load
    from summon.serve.protocol import RemoteStage

    stages = []
    for i, spec in enumerate(stage_specs):
        name = f"stage{i}"
        if spec.startswith(("http://", "https://")):
            stages.append(RemoteStage.connect(spec, name=name, timeout=timeout))
        else:
            predictor = load(spec)
            if hasattr(predictor, "num_stages"):
                raise ValueError(f"{spec} has exits; use a plain predictor as a cascade stage")
            stages.append(LocalStage(name, predictor, str(Path(spec).resolve())))
    first = stages[0]
    task = first.predictor.task if isinstance(first, LocalStage) else first.task
    return CascadePredictor(stages, task, first.labels)


# --- calibration ----------------------------------------------------------------------------------


def scores_and_preds(raws: Sequence[np.ndarray], num_labels: int, temps: Sequence[float], scorer: str,
                     gates: Sequence[Gate | None]) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, S] and predictions [N, S] of every stage (the last stage's score is never used)."""
    scores, preds = [], []
    for k, raw in enumerate(raws):
        last = k == len(raws) - 1
        scaled, score = readout(raw, num_labels, temps[k], "max_prob" if last else scorer, gates[k])
        scores.append(score)
        preds.append(scaled.argmax(axis=1))
    return np.stack(scores, axis=1), np.stack(preds, axis=1)


def stage_costs(cascade: CascadePredictor, data: TaskData, latency: bool) -> StageCosts:
    """Cumulative cost of answering at each stage (every earlier stage ran too), relative to the last stage alone."""
    from summon.evaluate.measure import measure_costs

    per_stage_flops, per_stage_ms = [], []
    for stage in cascade.stages:
        if isinstance(stage, LocalStage):
            p = stage.predictor
            features = p.featurizer.encode(data.examples[:512], data.task)
            c = measure_costs(p.model, features, p.featurizer.pad_id, latency=latency, batch_sizes=[32],
                              max_seconds=4.0)
            per_stage_flops.append(c["flops_per_example"])
            per_stage_ms.append(c["latency"]["32"]["per_example_ms"] if latency else None)
        else:
            per_stage_flops.append(stage.flops_per_example)
            per_stage_ms.append(stage.measure_ms(data.examples[:64]) if latency else None)
    flops = np.cumsum(per_stage_flops).tolist()
    ms = np.cumsum(per_stage_ms).tolist() if latency and None not in per_stage_ms else None
    return StageCosts(flops=flops, flops_full=per_stage_flops[-1], ms=ms,
                      ms_full=per_stage_ms[-1] if ms else None, batch_size=32 if ms else None)


def calibrate_cascade(cascade: CascadePredictor, data: TaskData, *, scorer: str = "max_prob",
                      cost_unit: str = "flops", temperature_fraction: float = 0.3, rule: str = "max_drop",
                      value: float = 0.01, delta: float = 0.1, latency: bool = True, seed: int = 0,
                      batch_size: int = 64) -> dict[str, Any]:
    """Temperatures (and gates) on one part of ``data``, the threshold table on the rest; sets ``adaptive``.

    The reference "full model" is the last stage alone: cost fractions are relative to it, and drops are
    measured against its answers (``max_drop``) or gold labels (``max_drop_gold``).
    """
    if scorer not in SCORERS:
        raise ValueError(f"unknown cascade scorer '{scorer}'; choose from {', '.join(SCORERS)}")
    if not data.has_labels:
        raise ValueError(f"{data.source}: calibration needs labels")
    k = len(cascade.labels)
    raws = cascade.stage_raw_logits(data.examples, batch_size=batch_size)
    gold = np.array([ex["label"] for ex in data.examples])
    fit_rows, test_rows = split_rows(len(gold), temperature_fraction, seed)
    classes = [split_defer(raw, k)[0] for raw in raws]
    temps = [fit_temperature(torch.from_numpy(c[fit_rows]).double(), torch.from_numpy(gold[fit_rows])) for c in classes]
    gates = _fit_gates(classes, temps, fit_rows) if scorer == "gate" else [None] * len(raws)
    report = calibration_report(torch.from_numpy(np.stack([c[test_rows] for c in classes], axis=1)),
                                torch.from_numpy(gold[test_rows]), temps)
    costs = stage_costs(cascade, data, latency)
    scores, preds = scores_and_preds([r[test_rows] for r in raws], k, temps, scorer, gates)
    table = ThresholdTable.build(scorer, cost_unit, scores, preds, np.asarray(costs.fractions(cost_unit)),
                                 gold[test_rows])
    point, _ = choose(table, rule, value, delta)
    section = {"policy": scorer, "cost_unit": cost_unit, "temperatures": temps, "costs": costs.to_dict(),
               "gates": [g.to_dict() if g else None for g in gates], "table": table.to_dict(),
               "calibration": report, "data": data.source,
               "rows": {"temperature": len(fit_rows), "thresholds": len(test_rows), "seed": seed},
               "default": {"rule": rule, "value": value, "delta": delta if rule == "guaranteed" else None,
                           **point.to_dict()}}
    cascade.manifest["adaptive"] = section
    return section


def _fit_gates(classes: Sequence[np.ndarray], temps: Sequence[float], rows: np.ndarray) -> list[Gate | None]:
    """One gate per non-final stage: does this stage's answer agree with the last stage's?"""
    final = classes[-1][rows].argmax(axis=1)
    gates: list[Gate | None] = []
    for k, c in enumerate(classes[:-1]):
        probs = softmax_rows(c[rows].astype(np.float64) / temps[k])
        gates.append(Gate.fit(probs, (probs.argmax(axis=1) == final).astype(float)))
    return [*gates, None]
