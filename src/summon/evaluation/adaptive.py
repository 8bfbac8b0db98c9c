"""Evaluate staged predictors: accuracy against cost over thresholds, beside the oracle curves.

* policy curve: every threshold's (mean cost, accuracy), and its upper envelope;
* oracle "earliest correct": each row answered by its cheapest correct stage (the first stage when none
  is), rows added in order of the extra cost they need — the best any exit rule could do
  (sledgehammer's ``gold_layer`` oracle); it can beat the last stage ("overthinking");
* oracle "earliest agreeing": each row answered by its cheapest stage that agrees with the last stage;
  at its end it has the full model's accuracy at the least cost any rule matching the full model can pay;
* area between the policy envelope and each oracle over the cost range, exit histograms, reliability
  diagrams, and wall-clock speed-up measured against the speed-up the FLOPs promise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from summon.adaptive.scoring import TokenReadout, score_all, token_view
from summon.adaptive.staged import row_lengths
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable, sweep
from summon.measure.metrics import reliability_bins, softmax, span_f1
from summon.measure.timing import time_calls

Curve = list[tuple[float, float]]  # (cost fraction, accuracy), ascending cost


def envelope(points: Sequence[OperatingPoint]) -> Curve:
    """The best accuracy reachable at each cost: the upper-left envelope of the operating points."""
    best: Curve = []
    for p in sorted(points, key=lambda p: (p.cost, -(p.accuracy or 0.0))):
        if not best or p.accuracy > best[-1][1] + 1e-12:
            best.append((p.cost, p.accuracy))
    return best


def oracle_curve(preds: np.ndarray, target: np.ndarray, gold: np.ndarray, costs: Sequence[float]) -> Curve:
    """Rows start at stage 0 and move, cheapest extra cost first, to their earliest stage predicting ``target``.

    ``target`` is the gold label (earliest-correct oracle) or the last stage's prediction (earliest-agreeing).
    Rows with no such stage stay at stage 0. Accuracy is always measured against ``gold``.
    """
    costs = np.asarray(costs, dtype=float)
    n = len(gold)
    hit = preds == target[:, None]
    has = hit.any(axis=1)
    stage = np.where(has, hit.argmax(axis=1), 0)
    gain = (preds[np.arange(n), stage] == gold).astype(float) - (preds[:, 0] == gold).astype(float)
    extra = costs[stage] - costs[0]
    order = np.argsort(extra, kind="stable")
    acc0 = float((preds[:, 0] == gold).mean())
    cost_path = costs[0] + np.concatenate([[0.0], np.cumsum(extra[order]) / n])
    acc_path = acc0 + np.concatenate([[0.0], np.cumsum(gain[order]) / n])
    return list(zip(cost_path.tolist(), acc_path.tolist(), strict=True))


def cost_at_accuracy(curve: Curve, target: float) -> float | None:
    """The least cost at which ``curve`` reaches ``target`` accuracy (None if it never does)."""
    for cost, acc in sorted(curve):
        if acc >= target - 1e-12:
            return cost
    return None


def _step_value(curve: Curve, cost: float) -> float:
    """Best accuracy on ``curve`` at cost <= ``cost`` (a staircase)."""
    values = [a for c, a in curve if c <= cost + 1e-12]
    return max(values) if values else curve[0][1]


def area_between(upper: Curve, lower: Curve, grid: int = 512) -> float:
    """Mean gap (accuracy points x cost fraction) between two staircases over their common cost range."""
    lo = max(min(c for c, _ in upper), min(c for c, _ in lower))
    hi = min(max(c for c, _ in upper), max(c for c, _ in lower))
    if hi <= lo:
        return 0.0
    xs = np.linspace(lo, hi, grid)
    gaps = [_step_value(upper, x) - _step_value(lower, x) for x in xs]
    return float(np.trapezoid(gaps, xs))


def curves(preds: np.ndarray, gold: np.ndarray, costs: Sequence[float],
           points: Sequence[OperatingPoint]) -> dict[str, Any]:
    """Policy envelope, both oracle curves, areas between them, and each curve's cost at a 1-point drop."""
    full = float((preds[:, -1] == gold).mean())
    policy = envelope(points)
    correct = oracle_curve(preds, gold, gold, costs)
    agree = oracle_curve(preds, preds[:, -1], gold, costs)
    return {
        "full_accuracy": full,
        "policy": policy, "oracle_correct": correct, "oracle_agree": agree,
        "area_policy_to_oracle_correct": area_between(correct, policy),
        "area_policy_to_oracle_agree": area_between(agree, policy),
        "cost_at_drop_1pt": {"policy": cost_at_accuracy(policy, full - 0.01),
                             "oracle_correct": cost_at_accuracy(correct, full - 0.01),
                             "oracle_agree": cost_at_accuracy(agree, full - 0.01)},
        "oracle_agree_end": {"cost": agree[-1][0], "accuracy": agree[-1][1]},
        "oracle_correct_end": {"cost": correct[-1][0], "accuracy": correct[-1][1]},
    }


# --- wall-clock speed-up --------------------------------------------------------------------------


def _interleaved_medians(first, second, repeats: int, device: Any = None) -> tuple[float, float]:
    """Median seconds of two functions timed in turn by the one timing loop
    (:func:`~summon.measure.timing.time_calls`: no warm-up, exactly ``repeats`` rounds), so load on the machine
    hits both alike."""
    a, b = time_calls(first, second, device=device, warmup=0, repeats=repeats, max_seconds=math.inf)
    return statistics.median(a), statistics.median(b)


def measure_speedup(predictor: Any, items: Sequence[Any], threshold: float, batch_sizes: Sequence[int] = (1, 32, 128),
                    repeats: int = 5, examples: Sequence[dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Realised speed-up (reference model time / adaptive time) against the FLOPs-promised one, per batch size.

    Both runs take the same stage-0 inputs (``predictor.inputs(examples)``: featurized for early exit, the
    examples for a cascade); the reference model is the last stage alone (for exits: every layer and only
    the last head). Times are medians of ``repeats`` alternating runs.

    ``theoretical`` counts the FLOPs these inputs need: each row's cost is its stage's cost fraction
    weighted by its length (an encoder's FLOPs grow with length, and longer inputs tend to go deeper), so
    ``theoretical = Σ n_i / Σ n_i·f(stage_i)``. ``theoretical_uniform`` is the length-blind
    ``1 / mean f(stage_i)`` that treats every row as the average one.

    With ``examples`` (the canonical examples ``items`` were made from), both sides are timed once more from
    the examples, featurizing included (``realised_with_tokenisation``, ``..._over_theoretical_with_tokenisation``):
    what a caller of ``predict`` sees, where tokenisation is paid whatever the exits do.
    """
    fractions = np.asarray(predictor.costs.fractions("flops"))
    runner, device = predictor.runner(), getattr(predictor, "device", None)
    lengths = np.array([runner.length(item) for item in items], dtype=float)
    out = {}
    for bs in batch_sizes:
        stages = predictor.run(items, threshold, batch_size=bs).stage  # also a warm-up
        predictor.run_full(items, batch_size=bs)
        t_adaptive, t_full = _interleaved_medians(lambda bs=bs: predictor.run(items, threshold, batch_size=bs),
                                                  lambda bs=bs: predictor.run_full(items, batch_size=bs), repeats,
                                                  device)
        theoretical = float(lengths.sum() / (lengths * fractions[stages]).sum())
        realised = t_full / t_adaptive
        row = {"full_seconds": t_full, "adaptive_seconds": t_adaptive, "realised": realised,
               "theoretical": theoretical, "realised_over_theoretical": realised / theoretical,
               "theoretical_uniform": float(1.0 / fractions[stages].mean()),
               "realised_over_theoretical_uniform": realised * float(fractions[stages].mean())}
        if examples is not None:
            t_adaptive, t_full = _interleaved_medians(
                lambda bs=bs: predictor.run(predictor.inputs(examples), threshold, batch_size=bs),
                lambda bs=bs: predictor.run_full(predictor.inputs(examples), batch_size=bs), repeats, device)
            row.update(full_seconds_with_tokenisation=t_full, adaptive_seconds_with_tokenisation=t_adaptive,
                       realised_with_tokenisation=t_full / t_adaptive,
                       realised_over_theoretical_with_tokenisation=t_full / t_adaptive / theoretical)
        out[str(bs)] = row
    return out


# --- plots ----------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_curves(result: dict[str, Any], path: Path, title: str, chosen: OperatingPoint | None = None) -> Path:
    """Accuracy against cost: policy envelope, both oracles, the full model and the chosen point."""
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for key, label, style in (("policy", "threshold policy", "-"), ("oracle_correct", "oracle: earliest correct", "--"),
                              ("oracle_agree", "oracle: earliest agreeing with last", ":")):
        xs, ys = zip(*result[key], strict=True)
        ax.step(xs, ys, style, where="post", label=label)
    ax.axhline(result["full_accuracy"], color="grey", lw=0.8, label="full model")
    ax.axhline(result["full_accuracy"] - 0.01, color="grey", lw=0.8, ls="--", label="full model − 1 point")
    if chosen is not None and chosen.accuracy is not None:
        ax.plot([chosen.cost], [chosen.accuracy], "o", color="black", label="chosen threshold")
    ax.set_xlabel("mean cost (fraction of the full model's FLOPs)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_exits(exit_counts: Sequence[int], path: Path, title: str) -> Path:
    fig = _figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(1, len(exit_counts) + 1), exit_counts)
    ax.set_xlabel("exit (stage)")
    ax.set_ylabel("inputs answered")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_reliability(bins: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per stage: accuracy against confidence per bin, before and after temperature scaling."""
    fig = _figure(3.0 * len(bins), 3.2)
    for k, stage in enumerate(bins):
        ax = fig.add_subplot(1, len(bins), k + 1)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        for key, label in (("before", "T = 1"), ("after", f"T = {stage['temperature']:.2f}")):
            conf = [c for c in stage[key]["confidence"] if c is not None]
            acc = [a for a, c in zip(stage[key]["accuracy"], stage[key]["confidence"], strict=True) if c is not None]
            ax.plot(conf, acc, "o-", ms=3, label=label)
        ax.set_title(f"stage {k + 1}", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        if k == 0:
            ax.set_ylabel("accuracy", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# --- one call: everything about a calibrated staged predictor on one split -------------------------


def stage_view(predictor: Any, data: Any, *, batch_size: int = 64) -> dict[str, Any]:
    """Every stage's raw logits on ``data`` read out by the predictor's calibration: ``raws`` (per stage),
    ``scores`` and ``preds`` ``[N, S]``, ``gold`` ``[N]``, and for reliability diagrams the calibrated ``probs``
    ``[M, S, K]`` of the ``reliability_raw`` logits (per stage) against ``reliability_gold`` ``[M]``: the rows
    for sentence kinds, the words for taggers (whose ``preds``/``gold`` are tag-sequence ids and ``tags`` each
    stage's tag ids per sentence, :func:`~summon.adaptive.scoring.token_view`)."""
    calibration = predictor.require_calibration("adaptive evaluation")
    raws = predictor.stage_logits(data.examples, batch_size=batch_size, progress="stage logits")
    readout = calibration.readout(len(predictor.labels))
    if isinstance(readout, TokenReadout):
        gold_tags = [np.asarray(ex["tags"], np.int64) for ex in data.examples]
        view = token_view(raws, readout, gold_tags)
        words = [np.concatenate([np.asarray(r, np.float64).reshape(-1, readout.num_labels) for r in raw])
                 for raw in raws]
        probs = np.stack([softmax(w / t) for w, t in zip(words, readout.temperatures, strict=True)], axis=1)
        return {**view, "raws": raws, "probs": probs, "reliability_raw": words,
                "reliability_gold": np.concatenate(gold_tags) if gold_tags else np.zeros(0, np.int64),
                "gold_tags": gold_tags}
    lengths = row_lengths(predictor, data.examples) if readout.needs_lengths else None
    scores, preds, probs = score_all(raws, readout, lengths)
    gold = np.array([ex["label"] for ex in data.examples])
    k = len(predictor.labels)
    return {"raws": raws, "scores": scores, "preds": preds, "probs": probs, "gold": gold,
            "reliability_raw": [raw[:, :k] for raw in raws], "reliability_gold": gold}


def evaluate_adaptive(predictor: Any, data: Any, *, out_dir: Path | None = None, threshold: float | None = None,
                      speed: bool = False, batch_sizes: Sequence[int] = (1, 32, 128), title: str = "",
                      batch_size: int = 64) -> dict[str, Any]:
    """Curves with both oracles, the operating point at ``threshold`` (default: the calibrated one), the
    stage histogram, reliability diagrams and optionally measured speed-ups of any calibrated staged predictor
    (:class:`~summon.adaptive.staged.StagedPredictor`)."""
    calibration = predictor.require_calibration("adaptive evaluation")
    view = stage_view(predictor, data, batch_size=batch_size)
    scores, preds, probs, gold = view["scores"], view["preds"], view["probs"], view["gold"]
    fractions = np.asarray(calibration.fractions())
    table = ThresholdTable.build(calibration.policy, calibration.cost_unit, scores, preds, fractions, gold)
    chosen_t = calibration.default.threshold if threshold is None else float(threshold)
    chosen = sweep(scores, preds, fractions, gold, thresholds=np.array([chosen_t]))[0]
    result = curves(preds, gold, fractions, table.points)
    raw_probs = [softmax(np.asarray(raw, np.float64)) for raw in view["reliability_raw"]]
    bins_gold = view["reliability_gold"]
    reliability = [{"temperature": t, "before": reliability_bins(raw_probs[s], bins_gold),
                    "after": reliability_bins(probs[:, s], bins_gold)} for s, t in enumerate(calibration.temperatures)]
    result.update({"kind": getattr(predictor, "kind", "staged"), "scorer": calibration.policy,
                   "cost_unit": calibration.cost_unit, "device": calibration.costs.device,
                   "chosen": chosen.to_dict(), "chosen_rule": calibration.default.to_dict(),
                   "table": table.to_dict(), "reliability": reliability,
                   "exit_accuracy": [float((preds[:, s] == gold).mean()) for s in range(preds.shape[1])]})
    if "tags" in view:  # a tagger: span F1 of each exit (exit_accuracy is whole-sentence accuracy)
        result["exit_f1"] = [exit_span_f1(predictor.labels, view["gold_tags"], tags) for tags in view["tags"]]
    if speed:
        result["speedup"] = measure_speedup(predictor, predictor.inputs(data.examples), chosen_t, batch_sizes,
                                            examples=data.examples)
    if out_dir is not None:
        result["plots"] = _plots(result, Path(out_dir), title or data.source, chosen, chosen_t)
    return result


def exit_span_f1(labels: Sequence[str], gold: Sequence[np.ndarray], tags: Sequence[np.ndarray]) -> float:
    """Span F1 (seqeval) of one stage's tag ids against the gold tag ids."""
    return span_f1([[labels[t] for t in g] for g in gold], [[labels[t] for t in row] for row in tags])["f1"]


def _plots(result: dict[str, Any], out_dir: Path, title: str, chosen: OperatingPoint, threshold: float) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "curve": str(plot_curves(result, out_dir / "accuracy_vs_cost.png", title, chosen)),
        "exits": str(plot_exits(chosen.exit_counts, out_dir / "exit_histogram.png", f"stages at threshold {threshold:.4g}")),
        "reliability": str(plot_reliability(result["reliability"], out_dir / "reliability.png", "reliability per stage")),
    }
    if "speedup" in result:
        plots["speedup"] = str(plot_speedup(result["speedup"], out_dir / "speedup.png", title))
    return plots


def plot_speedup(speedup: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Measured speed-up beside the one the FLOPs promise, per batch size."""
    fig = _figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    sizes = list(speedup)
    xs = np.arange(len(sizes))
    ax.bar(xs - 0.2, [speedup[b]["theoretical"] for b in sizes], 0.4, label="promised by FLOPs")
    ax.bar(xs + 0.2, [speedup[b]["realised"] for b in sizes], 0.4, label="measured")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(xs, [f"batch {b}" for b in sizes])
    ax.set_ylabel("speed-up over the full model")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
