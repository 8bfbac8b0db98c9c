"""How ``summon auto`` measures a candidate: calibrated on the calibration rows, its per-row stage answers on the
selection rows, and its curve of operating points (FLOPs as a fraction of the teacher's, milliseconds at batch
32, harmful rows against the teacher)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from summon.adaptive.calibration import CalibrationSpec
from summon.adaptive.scoring import score_all
from summon.adaptive.thresholds import candidate_thresholds, exit_stage
from summon.data.spec import DatasetSpec
from summon.evaluation.runner import load_for
from summon.search.front import Point

__all__ = ["answers_at", "calibrated_costs", "curve", "predicted", "stage_answers", "teacher_costs"]


def calibrated_costs(predictor: Any, calibration_file: str, rows: list[dict[str, Any]], max_drop: float) -> Any:
    """Calibrate a staged predictor on the calibration rows (saved into its folder) and return its stage costs; a
    one-stage one's costs measured on ``rows`` (the calibration rows). Milliseconds are measured at batch 32
    (featurisation included)."""
    if predictor.num_stages == 1:
        return predictor.measure_costs(rows, latency=True)
    data = load_for(predictor, DatasetSpec(path=calibration_file, task=predictor.task, labels=list(predictor.labels)))
    predictor.calibrate(data, CalibrationSpec(rule="max_drop_gold", value=max_drop), latency=True)
    predictor.save_calibration()
    return predictor.calibration.costs


def stage_answers(predictor: Any, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Every row's calibrated score and predicted class at every stage, ``[N, S]`` each, from one full pass
    (a one-stage predictor: scores of zero)."""
    raws = predictor.stage_logits(rows)
    if predictor.num_stages == 1:
        preds = np.asarray(raws[0])[:, : len(predictor.labels)].argmax(1)[:, None]
        return np.zeros(preds.shape), preds
    scores, preds, _ = score_all(raws, predictor.readout())
    return np.asarray(scores, dtype=float), np.asarray(preds)


def curve(name: str, scores: np.ndarray, preds: np.ndarray, gold: np.ndarray, fractions: list[float],
          ms: list[float] | None, teacher_right: np.ndarray | None = None) -> list[Point]:
    """The candidate's operating points from its per-row stage answers: cost as a fraction of the teacher's FLOPs,
    milliseconds per example from the stages' measured ones, and (given the teacher's per-row correctness) the
    harmful rows each point has (the teacher right, the point wrong)."""
    thresholds = [math.inf] if scores.shape[1] == 1 else candidate_thresholds(scores)
    weights = None if ms is None else np.asarray(ms, dtype=float)
    points = []
    for threshold in thresholds:
        stage = _stages(scores, threshold)
        right = preds[np.arange(len(preds)), stage] == gold
        counts = np.bincount(stage, minlength=scores.shape[1])
        points.append(Point(name, float(threshold), float(np.asarray(fractions)[stage].mean()), float(right.mean()),
                            None if weights is None else float(weights[stage].mean()), tuple(counts.tolist()),
                            None if teacher_right is None else int((teacher_right & ~right).sum())))
    return points


def answers_at(scores: np.ndarray, preds: np.ndarray, threshold: float) -> np.ndarray:
    """Each row's answer at ``threshold``: the class of the first stage whose score reaches it (else the last)."""
    return preds[np.arange(len(preds)), _stages(scores, threshold)]


def _stages(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Each row's answering stage at ``threshold`` (a one-stage predictor's: 0)."""
    return exit_stage(scores, threshold) if scores.shape[1] > 1 else np.zeros(len(scores), dtype=int)


def predicted(predictor: Any, rows: list[dict[str, Any]], threshold: float) -> np.ndarray:
    """Predicted class ids of ``predictor`` at ``threshold`` (inf: every row to the last stage)."""
    result = predictor.run_examples(rows, threshold if predictor.num_stages > 1 else math.inf)
    return np.array([np.asarray(row)[: len(predictor.labels)].argmax() for row in result.logits])


def teacher_costs(teacher: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """The teacher's FLOPs per example and seconds per example at batch 32 (featurisation included), in one
    measurement on ``rows`` (the calibration rows, where every candidate's costs are measured too)."""
    costs = teacher.measure_costs(rows, latency=True)
    return float(costs.flops[-1]), float(costs.ms[-1]) / 1000.0 if costs.ms else 0.01
