"""One calibration for every staged predictor: temperatures, gates or learned scores, costs, the threshold table
and the default operating point, computed by one pure function and saved as JSON in the manifest.

Temperature scaling per stage (Guo et al. 2017), fitted by NLL on held-out logits, as The Right Tool for
the Job does for each exit. We minimise NLL over log T with L-BFGS (the paper's code runs Adam over a list
of learning rates and keeps the best; L-BFGS reaches the same one-dimensional optimum in a few steps).

:func:`fit_calibration` splits the held-out rows at random: a ``temperature_fraction`` of them fits the
temperatures (and the gates of the ``gate`` scorer, or the per-stage models of the ``learned`` scorer,
:mod:`summon.adaptive.learned`); the others build the threshold table, so every score is fixed before the rows
that test thresholds are seen, as the Learn-then-Test guarantee requires. The learned models, saved under the
section's ``learned`` key, are never fitted on a threshold row.
The result is a typed :class:`Calibration`; ``to_dict``/``from_dict`` keep the JSON layout of the
``adaptive`` manifest section that summon has always written, so older predictors read back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from summon.adaptive.cascade_stages import split_defer
from summon.adaptive.gate import Gate
from summon.adaptive.learned import FEATURES, TARGETS, LearnedScores, check_features, fit_learned
from summon.adaptive.policies import TOKEN_REDUCTIONS
from summon.adaptive.scoring import SCORERS, Readout, TokenReadout, check_scorer, score_all, token_view
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable
from summon.measure.metrics import expected_calibration_error
from summon.measure.stage_costs import StageCosts

RULES = ("budget", "max_drop", "max_drop_gold", "guaranteed")
MIN_TEMPERATURE_ROWS, MIN_THRESHOLD_ROWS = 5, 10  # below these a calibration is noise, not a measurement


# --- temperatures ---------------------------------------------------------------------------------


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising mean NLL of ``softmax(logits / T)``; logits [N, C], labels [N]."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))  # beyond this only separable toy data goes


def calibration_report(stage_logits: torch.Tensor, labels: torch.Tensor, temperatures: list[float],
                       n_bins: int = 15) -> list[dict[str, float]]:
    """Per stage: temperature, NLL and ECE before and after scaling (on the data given)."""
    rows = []
    gold = labels.numpy()
    for k, t in enumerate(temperatures):
        raw = stage_logits[:, k].double()
        before, after = raw.softmax(-1).numpy(), (raw / t).softmax(-1).numpy()
        rows.append({"stage": k, "temperature": t,
                     "nll_before": _nll(before, gold), "nll_after": _nll(after, gold),
                     "ece_before": expected_calibration_error(before, gold, n_bins),
                     "ece_after": expected_calibration_error(after, gold, n_bins)})
    return rows


def _nll(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())


# --- the typed calibration ------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSpec:
    """How to calibrate: the confidence score, the cost unit, the temperature share and the default rule.

    ``rule``/``value`` pick the default operating point: ``budget`` (mean cost fraction), ``max_drop``
    (disagreement with the last stage), ``max_drop_gold`` (accuracy drop against gold labels) or
    ``guaranteed`` (Learn-then-Test at failure probability ``delta``).

    ``learned_target`` (``reference``: agree with the last stage; ``gold``: be right), ``learned_l2`` and
    ``learned_features`` (None: all of :data:`~summon.adaptive.learned.FEATURES`) shape the ``learned`` scorer.
    ``token_reduce`` (``min``, ``mean``, ``path``) turns a tagger's per-word scores into one per sentence.

    The one declaration of the calibration options: ``summon calibrate``/``summon quantize`` derive their flags
    from these fields and their ``help`` (:mod:`summon.core.options`), and ``summon.calibrate``/``summon.quantize``
    take them as keywords; ``rule``, ``value``, ``delta`` and ``cost_unit`` are given by the knob flags and keywords
    (their ``flag`` metadata names them).
    """

    policy: str = field(default="max_prob", metadata={"choices": SCORERS, "help": (
        "confidence score; defer needs a learned defer output (cascade students); learned fits a logistic score per "
        "stage on the temperature rows (this and the previous stage's confidence, agreement run, input length)")})
    cost_unit: Literal["flops", "ms"] = field(default="flops", metadata={
        "cli": False, "flag": "--unit", "help": "the unit of stage costs: the table's cost fractions and budgets"})
    temperature_fraction: float = field(default=0.3, metadata={
        "help": "share of rows that fit temperatures (and gates or learned scores); the others choose thresholds"})
    rule: Literal["budget", "max_drop", "max_drop_gold", "guaranteed"] = field(default="max_drop", metadata={
        "cli": False, "flag": ("--budget", "--max-drop", "--guaranteed", "--against"),
        "help": "the rule of the default operating point (the knob: budget, max_drop, against gold, guaranteed)"})
    value: float = field(default=0.01, metadata={
        "cli": False, "flag": ("--budget", "--max-drop", "--guaranteed"), "help": "the rule's value (the knob's)"})
    delta: float = field(default=0.1, metadata={
        "cli": False, "flag": "--delta", "help": "guaranteed: the failure probability of the Learn-then-Test bound"})
    seed: int = field(default=0, metadata={"help": "seed of the temperature/threshold row split"})
    learned_target: Literal["reference", "gold"] = field(default="reference", metadata={
        "help": "--policy learned: predict agreement with the full model's answer or with the gold label"})
    learned_l2: float = field(default=1e-3, metadata={
        "help": "--policy learned: L2 penalty on the weights of each stage's logistic score"})
    learned_features: tuple[str, ...] | None = field(default=None, metadata={
        "choices": FEATURES, "metavar": "FEATURE",
        "help": "--policy learned: the features each stage's score is fitted on (default: all of them)"})
    token_reduce: Literal["min", "mean", "path"] = field(default="min", metadata={
        "help": "taggers with exits: a sentence's score from its words' (the least sure word, the mean, or the "
        "product: the best tag path's probability)"})

    def __post_init__(self) -> None:
        check_scorer(self.policy)
        if self.token_reduce not in TOKEN_REDUCTIONS:
            raise ValueError(f"token_reduce must be one of {', '.join(TOKEN_REDUCTIONS)}, got {self.token_reduce!r}")
        if self.learned_target not in TARGETS:
            raise ValueError(f"learned_target must be one of {', '.join(TARGETS)}, got {self.learned_target!r}")
        if isinstance(self.learned_l2, bool) or not isinstance(self.learned_l2, int | float) or not (
                0.0 <= self.learned_l2 < float("inf")):
            raise ValueError(f"learned_l2 must be a finite number >= 0, got {self.learned_l2!r}")
        if self.learned_features is not None:  # a list read back from JSON becomes the tuple it was
            object.__setattr__(self, "learned_features", check_features(self.learned_features))
        if self.cost_unit not in ("flops", "ms"):
            raise ValueError(f"cost unit must be 'flops' or 'ms', got {self.cost_unit!r}")
        if not 0.0 < self.temperature_fraction < 1.0:
            raise ValueError(f"temperature_fraction must be in (0, 1), got {self.temperature_fraction}")
        if self.rule not in RULES:
            raise ValueError(f"unknown rule '{self.rule}'; use {', '.join(RULES)}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@dataclass
class DefaultPoint:
    """The operating point a predictor uses when no knob is given, and the rule that chose it."""

    rule: str
    value: float
    delta: float | None
    point: OperatingPoint
    tests: int | None = None  # guaranteed rule: how many hypotheses were tested

    @property
    def threshold(self) -> float:
        return self.point.threshold

    def to_dict(self) -> dict[str, Any]:
        out = {"rule": self.rule, "value": self.value, "delta": self.delta, **self.point.to_dict()}
        if self.tests is not None:
            out["tests"] = self.tests
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DefaultPoint:
        keys = OperatingPoint.__dataclass_fields__
        point = OperatingPoint(**{k: data[k] for k in keys if k in data and k != "threshold"},
                               threshold=float(data["threshold"]))
        return cls(data["rule"], data["value"], data.get("delta"), point, data.get("tests"))


@dataclass
class Calibration:
    """Everything a staged predictor needs to run at an operating point, and how it was obtained."""

    policy: str
    cost_unit: str
    temperatures: list[float]
    costs: StageCosts
    table: ThresholdTable
    default: DefaultPoint
    report: list[dict[str, float]] = field(default_factory=list)  # per stage: T, NLL and ECE before/after
    gates: list[Gate | None] | None = None
    learned: LearnedScores | None = None
    data: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    spec: CalibrationSpec | None = None
    token_reduce: str | None = None  # taggers: how per-word scores become one per sentence (None: not a tagger)

    def readout(self, num_labels: int) -> Readout | TokenReadout:
        if self.token_reduce is not None:
            return TokenReadout(self.policy, self.temperatures, num_labels, self.token_reduce)
        return Readout(self.policy, self.temperatures, num_labels, self.gates, self.learned)

    def fractions(self, unit: str | None = None) -> list[float]:
        """Cost of answering at each stage as a fraction of the reference model, in ``unit`` (default: ours)."""
        return self.costs.fractions(unit or self.cost_unit)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy, "cost_unit": self.cost_unit, "temperatures": list(self.temperatures),
            "costs": self.costs.to_dict(), "table": self.table.to_dict(), "calibration": self.report,
            "data": self.data, "rows": dict(self.rows), "default": self.default.to_dict()}
        if self.gates is not None:
            out["gates"] = [g.to_dict() if g else None for g in self.gates]
        if self.learned is not None:
            out["learned"] = self.learned.to_dict()
        if self.spec is not None:
            out["spec"] = asdict(self.spec)
        if self.token_reduce is not None:
            out["token_reduce"] = self.token_reduce
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "manifest.json") -> Calibration:
        learned = _learned_from_dict(data, where)
        try:
            gates = data.get("gates")
            return cls(policy=data["policy"], cost_unit=data.get("cost_unit", "flops"),
                       temperatures=[float(t) for t in data["temperatures"]],
                       costs=StageCosts.from_dict(data["costs"]), table=ThresholdTable.from_dict(data["table"]),
                       default=DefaultPoint.from_dict(data["default"]), report=list(data.get("calibration", [])),
                       gates=None if gates is None else [Gate(**g) if g else None for g in gates], learned=learned,
                       data=data.get("data", ""), rows=dict(data.get("rows", {})),
                       spec=CalibrationSpec(**data["spec"]) if data.get("spec") else None,
                       token_reduce=data.get("token_reduce"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: the 'adaptive' (calibration) section is damaged ({type(err).__name__}: "
                             f"{err}); recalibrate with `summon calibrate`") from None


def _learned_from_dict(data: Any, where: str) -> LearnedScores | None:
    """The ``learned`` key of a saved section (None when absent), refused with the file and key when malformed,
    when missing for the ``learned`` scorer, or when its stages do not match the temperatures."""
    if not isinstance(data, dict) or data.get("learned") is None:
        if isinstance(data, dict) and data.get("policy") == "learned":
            raise ValueError(f"{where}: 'adaptive.learned' is missing: the calibration uses the learned scorer but "
                             "holds no learned score models; recalibrate with `summon calibrate PREDICTOR --data SPLIT "
                             "--policy learned`")
        return None
    learned = LearnedScores.from_dict(data["learned"], where=where)
    temperatures = data.get("temperatures")
    if isinstance(temperatures, list) and len(temperatures) != len(learned.stages):
        raise ValueError(f"{where}: 'adaptive.learned.stages' has {len(learned.stages)} entries for "
                         f"{len(temperatures)} stages; recalibrate with `summon calibrate PREDICTOR --data SPLIT "
                         "--policy learned`")
    return learned


# --- the one calibration function -----------------------------------------------------------------


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``fraction`` of row indices (for temperatures) and the rest (for thresholds)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"temperature_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(fraction * n))
    if cut < MIN_TEMPERATURE_ROWS or n - cut < MIN_THRESHOLD_ROWS:
        raise ValueError(f"{n} calibration rows are too few: {cut} would fit the temperatures and {n - cut} choose "
                         f"thresholds; at least {MIN_TEMPERATURE_ROWS} and {MIN_THRESHOLD_ROWS} are needed (hundreds "
                         "make the table and any guarantee worth having). Give more held-out data")
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
    raise ValueError(f"unknown rule '{rule}'; use {', '.join(RULES)}")


def class_logits(raws: Sequence[np.ndarray], num_labels: int) -> list[np.ndarray]:
    """The class columns of each stage's raw logits (a defer column, if any, dropped)."""
    return [split_defer(np.asarray(raw), num_labels)[0] for raw in raws]


def fit_gates(classes: Sequence[np.ndarray], temps: Sequence[float], rows: np.ndarray) -> list[Gate | None]:
    """One gate per non-final stage: does this stage's answer agree with the last stage's?"""
    final = classes[-1][rows].argmax(axis=1)
    gates: list[Gate | None] = []
    for k, c in enumerate(classes[:-1]):
        probs = torch.from_numpy(c[rows].astype(np.float64) / temps[k]).softmax(-1).numpy()
        gates.append(Gate.fit(probs, (probs.argmax(axis=1) == final).astype(float)))
    return [*gates, None]


def fit_thresholds(raws: Sequence[np.ndarray], gold: np.ndarray | None, readout: Readout,
                   fractions: Sequence[float], cost_unit: str, lengths: np.ndarray | None = None) -> ThresholdTable:
    """The operating-point table of ``readout`` on these rows (raw logits per stage, cost per stage, row lengths
    for the ``learned`` scorer)."""
    scores, preds, _ = score_all(raws, readout, lengths)
    return ThresholdTable.build(readout.policy, cost_unit, scores, preds, np.asarray(fractions), gold)


def fit_calibration(raws: Sequence[np.ndarray] | np.ndarray, gold: np.ndarray, costs: StageCosts,
                    spec: CalibrationSpec, *, num_labels: int, data: str = "",
                    rows: tuple[np.ndarray, np.ndarray] | None = None,
                    lengths: np.ndarray | Sequence[int] | None = None) -> Calibration:
    """Temperatures, gates or learned scores, threshold table and default point from held-out stage logits (a
    pure function).

    The temperatures, gates and learned scores are fitted on the temperature rows only; the threshold table
    is built on the other rows, which no fitted part of the score has seen (Learn-then-Test needs this).

    Args:
        raws: raw logits per stage, ``[N, S, K]`` or a list of ``[N, K (+1 defer column)]``.
        gold: ``[N]`` gold label ids.
        costs: what answering at each stage costs.
        spec: the score, cost unit, temperature share, default rule and seed.
        num_labels: ``K``.
        data: where the rows came from (recorded).
        rows: ``(temperature rows, threshold rows)`` to use instead of the random split of ``spec`` (for
            benchmarks that hold a report half out and re-split many times).
        lengths: ``[N]`` row lengths as the executor knows them (``runner.length``;
            :func:`summon.adaptive.staged.row_lengths`): the ``learned`` scorer's ``log_length`` feature.
    """
    raws = [raws[:, k] for k in range(raws.shape[1])] if isinstance(raws, np.ndarray) and raws.ndim == 3 else list(raws)
    gold = np.asarray(gold)
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
    if lengths is not None and lengths.shape != gold.shape:
        raise ValueError(f"{lengths.shape} row lengths for {len(gold)} labels")
    if any(len(r) != len(gold) for r in raws):
        raise ValueError(f"stage logits have {[len(r) for r in raws]} rows for {len(gold)} labels")
    if len(costs.flops) != len(raws):
        raise ValueError(f"{len(costs.flops)} stage costs for {len(raws)} stages")
    fit_rows, test_rows = rows if rows is not None else split_rows(len(gold), spec.temperature_fraction, spec.seed)
    classes = class_logits(raws, num_labels)
    temps = [fit_temperature(torch.from_numpy(c[fit_rows]).double(), torch.from_numpy(gold[fit_rows]))
             for c in classes]
    gates = fit_gates(classes, temps, fit_rows) if spec.policy == "gate" else None
    learned = None
    if spec.policy == "learned":  # the temperature rows only: the threshold rows never shape the score
        learned = fit_learned([c[fit_rows] for c in classes], temps, gold[fit_rows],
                              None if lengths is None else lengths[fit_rows], target=spec.learned_target,
                              l2=spec.learned_l2, features=spec.learned_features)
    report = calibration_report(torch.from_numpy(np.stack([c[test_rows] for c in classes], axis=1)),
                                torch.from_numpy(gold[test_rows]), temps)
    readout = Readout(spec.policy, temps, num_labels, gates, learned)
    table = fit_thresholds([r[test_rows] for r in raws], gold[test_rows], readout, costs.fractions(spec.cost_unit),
                           spec.cost_unit, None if lengths is None else lengths[test_rows])
    point, tests = choose(table, spec.rule, spec.value, spec.delta)
    default = DefaultPoint(spec.rule, spec.value, spec.delta if spec.rule == "guaranteed" else None, point,
                           None if tests is None else len(tests))
    return Calibration(policy=spec.policy, cost_unit=spec.cost_unit, temperatures=temps, costs=costs, table=table,
                       default=default, report=report, gates=gates, learned=learned, data=data,
                       rows={"temperature": len(fit_rows), "thresholds": len(test_rows), "seed": spec.seed},
                       spec=spec)


def fit_token_calibration(raws: Sequence[Sequence[np.ndarray]], gold: Sequence[np.ndarray], costs: StageCosts,
                          spec: CalibrationSpec, *, num_labels: int, data: str = "",
                          rows: tuple[np.ndarray, np.ndarray] | None = None) -> Calibration:
    """:func:`fit_calibration` for taggers (a pure function): one temperature per exit fitted by word-level NLL
    on the temperature sentences; the threshold table on the other sentences, where a sentence's answer is its
    whole tag sequence (:func:`~summon.adaptive.scoring.token_view`): ``max_drop`` bounds the share of sentences
    whose tags differ from the last exit's, ``max_drop_gold`` the drop in whole-sentence accuracy.

    Args:
        raws: per stage, one ``[words, K]`` array of raw word logits per sentence.
        gold: per sentence, its gold tag ids ``[words]``.
    """
    n = len(gold)
    if any(len(r) != n for r in raws):
        raise ValueError(f"stage logits have {[len(r) for r in raws]} sentences for {n} gold tag sequences")
    if len(costs.flops) != len(raws):
        raise ValueError(f"{len(costs.flops)} stage costs for {len(raws)} stages")
    bad = next((i for i in range(n) if len(raws[0][i]) != len(gold[i])), None)
    if bad is not None:
        raise ValueError(f"sentence {bad}: {len(raws[0][bad])} words of logits for {len(gold[bad])} gold tags")
    TokenReadout(spec.policy, [1.0] * len(raws), num_labels, spec.token_reduce)  # refuses sentence-only scorers
    fit_rows, test_rows = rows if rows is not None else split_rows(n, spec.temperature_fraction, spec.seed)

    def words(k: int, idx: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(raws[k][i], np.float64).reshape(-1, num_labels) for i in idx])

    fit_gold = torch.from_numpy(np.concatenate([np.asarray(gold[i], np.int64) for i in fit_rows]))
    temps = [fit_temperature(torch.from_numpy(words(k, fit_rows)), fit_gold) for k in range(len(raws))]
    test_gold = torch.from_numpy(np.concatenate([np.asarray(gold[i], np.int64) for i in test_rows]))
    report = calibration_report(torch.from_numpy(np.stack([words(k, test_rows) for k in range(len(raws))], axis=1)),
                                test_gold, temps)
    readout = TokenReadout(spec.policy, temps, num_labels, spec.token_reduce)
    view = token_view([[r[i] for i in test_rows] for r in raws], readout, [gold[i] for i in test_rows])
    table = ThresholdTable.build(spec.policy, spec.cost_unit, view["scores"], view["preds"],
                                 np.asarray(costs.fractions(spec.cost_unit)), view["gold"])
    point, tests = choose(table, spec.rule, spec.value, spec.delta)
    default = DefaultPoint(spec.rule, spec.value, spec.delta if spec.rule == "guaranteed" else None, point,
                           None if tests is None else len(tests))
    return Calibration(policy=spec.policy, cost_unit=spec.cost_unit, temperatures=temps, costs=costs, table=table,
                       default=default, report=report, data=data,
                       rows={"temperature": len(fit_rows), "thresholds": len(test_rows), "seed": spec.seed},
                       spec=spec, token_reduce=spec.token_reduce)
