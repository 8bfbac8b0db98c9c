"""Choose the exit threshold from a calibration split, for one of three stated objectives.

A threshold ``t`` makes every row stop at the first stage whose policy score is ``>= t`` (the last stage
always answers), so each ``t`` is an operating point with a mean cost, an accuracy and a disagreement rate
with the full model (the last stage). :func:`sweep` tabulates them; :class:`ThresholdTable` then picks:

* ``budget(B)``: the most accurate point whose mean cost is at most ``B`` (a fraction of the full model,
  in FLOPs or measured milliseconds — whichever cost vector the table was built with);
* ``max_drop(eps)``: the cheapest point whose accuracy drop is at most ``eps`` — against the full model's
  predictions (disagreement) or against gold labels;
* ``guaranteed(eps, delta)``: the cheapest point certified by Learn-then-Test (Angelopoulos et al. 2021)
  with fixed-sequence testing: thresholds are tested from the most to the least conservative, each
  null hypothesis "disagreement rate > eps" is rejected when the exact binomial p-value
  ``P(Binom(n, eps) <= observed)`` is at most ``delta``, and testing stops at the first failure. With
  probability at least ``1 - delta`` over the draw of the calibration set, every threshold kept has
  disagreement rate at most ``eps`` on new data from the same distribution — so its accuracy drop
  against the full model is at most ``eps`` too. The scores (including temperatures) must be fixed
  before the calibration rows are seen, so fit temperatures on a different split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class OperatingPoint:
    threshold: float
    cost: float  # mean cost as a fraction of the full model
    disagreement: float  # share of rows whose answer differs from the last stage's
    accuracy: float | None  # against gold labels, when given
    exit_counts: list[int]  # rows answered by each stage

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threshold"] = _json_float(self.threshold)
        return out


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _from_json_float(x: float | str) -> float:
    return float(x)


def candidate_thresholds(scores: np.ndarray, max_points: int = 400) -> np.ndarray:
    """Thresholds midway between adjacent distinct early-stage scores (thinned to ``max_points``), plus ±inf.

    Midpoints, not the scores themselves: a threshold equal to a row's score would flip that row's decision
    under the slightest rounding difference between calibration and serving.
    """
    values = np.unique(scores[:, :-1])
    mids = (values[:-1] + values[1:]) / 2.0
    if len(mids) > max_points:
        mids = mids[np.unique(np.linspace(0, len(mids) - 1, max_points).round().astype(int))]
    return np.concatenate([[-np.inf], mids, [np.inf]])


def exit_stage(scores: np.ndarray, threshold: float) -> np.ndarray:
    """First stage with ``score >= threshold`` (the last stage when none): [N, S] -> [N]."""
    hit = scores[:, :-1] >= threshold
    return np.where(hit.any(axis=1), hit.argmax(axis=1), scores.shape[1] - 1)


def sweep(scores: np.ndarray, preds: np.ndarray, costs: np.ndarray, gold: np.ndarray | None = None,
          thresholds: np.ndarray | None = None) -> list[OperatingPoint]:
    """Operating points for each threshold.

    Args:
        scores: [N, S] policy scores per row and stage.
        preds: [N, S] predicted class per row and stage.
        costs: [S] cost of answering at each stage (cumulative, as a fraction of the full model).
        gold: [N] labels, or None.
        thresholds: candidates (default :func:`candidate_thresholds`).
    """
    scores, preds, costs = np.asarray(scores, float), np.asarray(preds), np.asarray(costs, float)
    n, stages = scores.shape
    if preds.shape != (n, stages) or costs.shape != (stages,):
        raise ValueError(f"scores {scores.shape}, preds {preds.shape} and costs {costs.shape} do not line up")
    thresholds = candidate_thresholds(scores) if thresholds is None else np.asarray(thresholds, float)
    reference = preds[:, -1]
    rows = np.arange(n)
    points = []
    for t in thresholds:
        stage = exit_stage(scores, t)
        answer = preds[rows, stage]
        points.append(OperatingPoint(
            threshold=float(t), cost=float(costs[stage].mean()),
            disagreement=float((answer != reference).mean()),
            accuracy=None if gold is None else float((answer == gold).mean()),
            exit_counts=np.bincount(stage, minlength=stages).tolist()))
    return points


def binom_cdf(k: int, n: int, p: float) -> float:
    """Exact ``P(Binom(n, p) <= k)``, summed in log space (stable for n in the tens of thousands)."""
    if not 0.0 <= p <= 1.0 or n < 0:
        raise ValueError(f"need 0 <= p <= 1 and n >= 0, got p={p}, n={n}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass
class ThresholdTable:
    """Operating points of one policy on one calibration split, and the rules that pick among them."""

    policy: str
    cost_unit: str  # "flops" or "ms"
    n: int
    full_accuracy: float | None
    points: list[OperatingPoint] = field(default_factory=list)

    @classmethod
    def build(cls, policy: str, cost_unit: str, scores, preds, costs, gold=None) -> ThresholdTable:
        points = sweep(scores, preds, costs, gold)
        full = None if gold is None else float((np.asarray(preds)[:, -1] == np.asarray(gold)).mean())
        return cls(policy, cost_unit, len(scores), full, sorted(points, key=lambda p: (p.cost, -p.threshold)))

    def _drop(self, point: OperatingPoint, against: str) -> float:
        if against == "reference":
            return point.disagreement
        if against == "gold":
            if point.accuracy is None or self.full_accuracy is None:
                raise ValueError("a drop against gold labels needs a calibration split with labels")
            return self.full_accuracy - point.accuracy
        raise ValueError(f"'against' must be 'reference' (the full model's predictions) or 'gold', got {against!r}")

    def budget(self, budget: float) -> OperatingPoint:
        """The most accurate point (fewest disagreements without labels) with mean cost <= ``budget``."""
        feasible = [p for p in self.points if p.cost <= budget + 1e-12]
        if not feasible:
            cheapest = min(p.cost for p in self.points)
            raise ValueError(f"budget {budget:.3f} is below the cheapest operating point ({cheapest:.3f} of the "
                             "full model): every input pays at least the first stage")
        key = (lambda p: (p.accuracy, -p.cost)) if self.full_accuracy is not None else (
            lambda p: (-p.disagreement, -p.cost))
        return max(feasible, key=key)

    def max_drop(self, max_drop: float, against: str = "reference") -> OperatingPoint:
        """The cheapest point whose accuracy drop is at most ``max_drop`` (a fraction, 0.01 = 1 point)."""
        feasible = [p for p in self.points if self._drop(p, against) <= max_drop + 1e-12]
        return min(feasible, key=lambda p: (p.cost, -p.threshold))  # the full model is always feasible

    def guaranteed(self, epsilon: float, delta: float) -> tuple[OperatingPoint, list[dict[str, float]]]:
        """Learn-then-Test with fixed-sequence testing; returns the point and the tests run (threshold, p)."""
        if not (0 < epsilon < 1 and 0 < delta < 1):
            raise ValueError(f"need 0 < epsilon < 1 and 0 < delta < 1, got {epsilon}, {delta}")
        ordered = sorted(self.points, key=lambda p: -p.threshold)  # most conservative first
        chosen = ordered[0]  # threshold +inf: always the last stage, identical to the full model
        tests = []
        for point in ordered[1:]:
            observed = round(point.disagreement * self.n)
            p_value = binom_cdf(observed, self.n, epsilon)
            tests.append({"threshold": point.threshold, "disagreements": observed, "p_value": p_value})
            if p_value > delta:
                break
            if point.cost <= chosen.cost:
                chosen = point
        return chosen, tests

    def in_unit(self, unit: str, fractions: Any) -> ThresholdTable:
        """The same points with each mean cost recomputed from its exit counts and per-stage ``fractions``
        (a cost in another unit: milliseconds instead of FLOPs, say)."""
        if unit == self.cost_unit:
            return self
        weights = np.asarray(fractions, dtype=float)
        points = [OperatingPoint(p.threshold, float(np.dot(p.exit_counts, weights) / max(1, sum(p.exit_counts))),
                                 p.disagreement, p.accuracy, list(p.exit_counts)) for p in self.points]
        return ThresholdTable(self.policy, unit, self.n, self.full_accuracy,
                              sorted(points, key=lambda p: (p.cost, -p.threshold)))

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "cost_unit": self.cost_unit, "n": self.n, "full_accuracy": self.full_accuracy,
                "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdTable:
        points = [OperatingPoint(**{**p, "threshold": _from_json_float(p["threshold"])}) for p in data["points"]]
        return cls(data["policy"], data["cost_unit"], data["n"], data.get("full_accuracy"), points)

    def format(self, chosen: OperatingPoint | None = None, max_rows: int = 24) -> str:
        """The table as text (thinned to ``max_rows``), the chosen point marked with ``*``."""
        rows = self.points
        if len(rows) > max_rows:
            keep = set(np.linspace(0, len(rows) - 1, max_rows).round().astype(int).tolist())
            rows = [p for i, p in enumerate(rows) if i in keep or p is chosen]
        head = f"{'':1s} {'threshold':>10s} {'cost':>7s} {'accuracy':>9s} {'disagree':>9s}  exits per stage"
        lines = [head]
        for p in rows:
            acc = f"{p.accuracy:9.4f}" if p.accuracy is not None else f"{'-':>9s}"
            mark = "*" if p is chosen else " "
            lines.append(f"{mark} {p.threshold:10.6g} {p.cost:7.3f} {acc} {p.disagreement:9.4f}  {p.exit_counts}")
        return "\n".join(lines)
