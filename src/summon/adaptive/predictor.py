"""Adaptive predictors: stages + temperatures + a threshold table, with one run-time knob.

``summon.load(path)`` returns an :class:`AdaptivePredictor` for a model with exits. After
:func:`calibrate` (``summon calibrate``), ``predict(texts, budget=0.4)``, ``predict(texts, max_drop=0.01)``
or ``predict(texts, threshold=0.9)`` move the operating point at run time, with no retraining; each
prediction says which stage answered and what it cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from summon.adaptive.calibration import calibration_report, fit_temperatures
from summon.adaptive.costs import StageCosts, measure_stage_costs
from summon.adaptive.executor import run_batch, run_full_batch, run_regrouped
from summon.adaptive.knob import KnobMixin, softmax_rows
from summon.adaptive.policies import get_policy, stage_scores
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable
from summon.data.features import collate
from summon.data.spec import TaskData
from summon.inference import length_sorted_batches, predict_logits, to_device
from summon.predictor import Prediction, Predictor, as_batch

logger = logging.getLogger(__name__)

REGROUP_ROWS = 4096  # rows regrouped together (at least one batch): bounds the hidden states held between stages


class AdaptiveModule(torch.nn.Module):
    """A staged model run adaptively at a fixed threshold, callable like any summon model: ``m(batch) -> [B, C]``.

    Lets the generic evaluation (metrics, FLOPs counting, latency) measure the adaptive predictor as it
    runs: only the stages each row actually reaches are computed, so counted FLOPs are the real ones.
    """

    def __init__(self, model: torch.nn.Module, policy: str, temperatures: Sequence[float], threshold: float):
        super().__init__()
        self.model = model
        self.policy, self.temperatures, self.threshold = get_policy(policy), list(temperatures), threshold

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return run_batch(self.model, batch, self.policy, self.temperatures, self.threshold).logits


class AdaptivePredictor(KnobMixin, Predictor):
    """A :class:`Predictor` whose model answers in stages (see :mod:`summon.adaptive.executor`)."""

    @property
    def num_stages(self) -> int:
        return self.model.num_stages

    def predict(self, inputs: Sequence[Any], *, budget: float | None = None, max_drop: float | None = None,
                threshold: float | None = None, batch_size: int = 64) -> list[Prediction]:
        """Predict adaptively; ``budget`` (mean cost fraction), ``max_drop`` or ``threshold`` set the knob."""
        limit = self.threshold_for(budget=budget, max_drop=max_drop, threshold=threshold)
        inputs = as_batch(inputs)
        features = self.featurizer.encode(self.examples_from_inputs(inputs), self.task)
        logits, stages = self.run(features, limit, batch_size=batch_size)
        fractions = self.stage_fractions()
        out = []
        for probs, stage in zip(softmax_rows(logits), stages, strict=True):
            k = int(probs.argmax())
            out.append(Prediction(label=self.labels[k], label_id=k, probs=[float(p) for p in probs],
                                  stage=int(stage), cost=None if fractions is None else fractions[int(stage)]))
        return out

    def as_module(self, **knob: float | None) -> AdaptiveModule:
        """This predictor at one operating point (``budget=``, ``max_drop=``, ``threshold=``) as a module."""
        return AdaptiveModule(self.model, self.policy_name(), self.temperatures(), self.threshold_for(**knob))

    @torch.inference_mode()
    def run(self, features: Sequence[dict], threshold: float | Sequence[float], *, batch_size: int = 64,
            sort: bool = True, regroup: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Adaptive execution over featurized examples: calibrated logits [N, C] and answering stage [N].

        With ``regroup`` (and a batch size above 1) the rows still going after a stage are gathered from
        about :data:`REGROUP_ROWS` rows' batches into full batches for the next stage
        (:func:`~summon.adaptive.executor.run_regrouped`); otherwise each batch shrinks on its own.
        """
        policy, temps = get_policy(self.policy_name()), self.temperatures()
        device = next(self.model.parameters()).device
        logits = np.zeros((len(features), len(self.labels)), dtype=np.float32)
        stages = np.zeros(len(features), dtype=np.int64)
        order = (list(length_sorted_batches(features, batch_size)) if sort else
                 [list(range(i, min(i + batch_size, len(features)))) for i in range(0, len(features), batch_size)])
        self.model.eval()

        def batches(group):
            for idx in group:
                yield idx, to_device(collate([features[i] for i in idx], self.featurizer.pad_id), device)

        if regroup and batch_size > 1 and hasattr(self.model, "pack"):
            window = max(1, REGROUP_ROWS // batch_size)
            for start in range(0, len(order), window):
                answers = run_regrouped(self.model, batches(order[start:start + window]), policy, temps,
                                        threshold, batch_size)
                for row, (row_logits, stage, _) in answers.items():
                    logits[row], stages[row] = row_logits.cpu().numpy(), stage
            return logits, stages
        for idx, batch in batches(order):
            result = run_batch(self.model, batch, policy, temps, threshold)
            logits[idx] = result.logits.cpu().numpy()
            stages[idx] = result.stage.cpu().numpy()
        return logits, stages

    @torch.inference_mode()
    def run_full(self, features: Sequence[dict], *, batch_size: int = 64) -> np.ndarray:
        """The full model without exits (every layer, last head only), in the same batches as :meth:`run`."""
        device = next(self.model.parameters()).device
        out = np.zeros((len(features), len(self.labels)), dtype=np.float32)
        self.model.eval()
        for idx in length_sorted_batches(features, batch_size):
            batch = to_device(collate([features[i] for i in idx], self.featurizer.pad_id), device)
            out[idx] = run_full_batch(self.model, batch).float().cpu().numpy()
        return out

    def stage_logits(self, examples: Sequence[dict[str, Any]], *, batch_size: int = 64,
                     progress: bool | str = False) -> np.ndarray:
        """Uncalibrated logits of every stage at full depth: [N, S, C]."""
        features = self.featurizer.encode(examples, self.task)
        rows = predict_logits(self.model, features, self.task, pad_id=self.featurizer.pad_id,
                              batch_size=batch_size, progress=progress)
        return np.stack(rows)


# --- calibration ----------------------------------------------------------------------------------


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``fraction`` of row indices (for temperatures) and the rest (for thresholds)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"temperature_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(fraction * n))
    if cut >= n:
        raise ValueError(f"{n} calibration rows are too few to split; give more held-out data")
    return np.sort(order[:cut]), np.sort(order[cut:])


def choose(table: ThresholdTable, rule: str, value: float, delta: float = 0.1) -> tuple[OperatingPoint, Any]:
    """Apply a named rule: ``budget``, ``max_drop`` (against the full model), ``max_drop_gold`` or ``guaranteed``."""
    if rule == "budget":
        return table.budget(value), None
    if rule == "max_drop":
        return table.max_drop(value, "reference"), None
    if rule == "max_drop_gold":
        return table.max_drop(value, "gold"), None
    if rule == "guaranteed":
        return table.guaranteed(value, delta)
    raise ValueError(f"unknown rule '{rule}'; use budget, max_drop, max_drop_gold or guaranteed")


def fit_thresholds(stage_logits: np.ndarray, gold: np.ndarray | None, temperatures: Sequence[float], policy: str,
                   fractions: Sequence[float], cost_unit: str) -> ThresholdTable:
    """The operating-point table of ``policy`` on these rows (logits [N, S, C], temperatures per stage)."""
    scaled = torch.from_numpy(stage_logits).double() / torch.tensor(temperatures, dtype=torch.float64)[None, :, None]
    probs = scaled.softmax(-1)
    scores = stage_scores(probs, get_policy(policy)).numpy()
    preds = probs.argmax(-1).numpy()
    return ThresholdTable.build(policy, cost_unit, scores, preds, np.asarray(fractions), gold)


def calibrate(predictor: AdaptivePredictor, data: TaskData, *, policy: str = "max_prob", cost_unit: str = "flops",
              temperature_fraction: float = 0.3, rule: str = "max_drop", value: float = 0.01, delta: float = 0.1,
              latency: bool = True, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """Fit temperatures, measure stage costs and tabulate thresholds on held-out ``data``; store them.

    A random ``temperature_fraction`` of the rows fits the per-stage temperatures; the other rows build the
    threshold table, so the scores are fixed before the rows that test thresholds are seen (as the
    Learn-then-Test guarantee requires). ``rule``/``value`` choose the default operating point.
    Returns the new ``adaptive`` manifest section (also set on the predictor; save it with ``update_manifest``).
    """
    get_policy(policy)
    if not data.has_labels:
        raise ValueError(f"{data.source}: calibration needs labels (temperatures are fitted by NLL)")
    logits = predictor.stage_logits(data.examples, batch_size=batch_size, progress="calibration pass")
    gold = np.array([ex["label"] for ex in data.examples])
    temp_rows, test_rows = split_rows(len(gold), temperature_fraction, seed)
    temps = fit_temperatures(torch.from_numpy(logits[temp_rows]), torch.from_numpy(gold[temp_rows]))
    report = calibration_report(torch.from_numpy(logits[test_rows]), torch.from_numpy(gold[test_rows]), temps)
    costs = _measure(predictor, data, latency, batch_size)
    table = fit_thresholds(logits[test_rows], gold[test_rows], temps, policy, costs.fractions(cost_unit), cost_unit)
    point, tests = choose(table, rule, value, delta)
    section = {"policy": policy, "cost_unit": cost_unit, "temperatures": temps, "costs": costs.to_dict(),
               "table": table.to_dict(), "calibration": report, "data": data.source,
               "rows": {"temperature": len(temp_rows), "thresholds": len(test_rows), "seed": seed},
               "default": {"rule": rule, "value": value, "delta": delta if rule == "guaranteed" else None,
                           **point.to_dict()}}
    if tests is not None:
        section["default"]["tests"] = len(tests)
    predictor.manifest["adaptive"] = section
    return section


def _measure(predictor: AdaptivePredictor, data: TaskData, latency: bool, batch_size: int) -> StageCosts:
    features = predictor.featurizer.encode(data.examples[:512], data.task)
    batches = [collate([features[i] for i in idx], predictor.featurizer.pad_id)
               for idx in length_sorted_batches(features, 32)]
    timing = collate([features[i % len(features)] for i in range(32)], predictor.featurizer.pad_id)
    return measure_stage_costs(predictor.model, batches, timing if latency else None)
