"""``summon auto``: from a teacher, data and a target to the cheapest predictor that keeps its promise.

The run (:func:`run_auto`):

1. loads the teacher and the labelled held-out split, and cuts the held-out rows in three
   (:func:`~summon.search.front.three_parts`): calibration, selection, certification, written to ``OUT/data``;
2. plans the candidates (:func:`~summon.search.candidates.plan_candidates`), cheapest to train first, and estimates
   each one's time here from the teacher's measured speed;
3. builds them in order while the time budget lasts — a training run (``OUT/candidates/NAME/run``, the shipped
   method's recipe with the user's teacher and data, teacher outputs cached once in ``OUT/cache`` and shared), an
   int8 copy, or a cascade of two built ones —, calibrates each staged one on the calibration rows and measures
   its whole accuracy-vs-cost curve on the selection rows (FLOPs as a fraction of the teacher's, milliseconds
   per example at batch 32, featurisation included). A candidate whose cheapest possible point (its
   ``floor_cost``) is no cheaper than the best point at the target so far is skipped: it cannot win; one whose
   estimated time does not fit what is left is skipped too. Each finished candidate is written to
   ``OUT/auto_state.json`` at once, so a run killed at any point continues where it stopped when the same command
   runs again (a training run resumes from its last checkpoint);
4. picks the point at the target on the selection rows across every candidate (the front; with ``guaranteed``, by
   Learn-then-Test over every candidate and threshold, :func:`choose`), certifies its drop
   from the teacher on the certification rows (:func:`~summon.search.front.certify`), saves the chosen predictor —
   calibrated, its default the chosen point — to ``OUT/predictor`` (``summon serve OUT/predictor`` serves it as it
   is), and writes ``OUT/report/report.{json,md,png}`` (:mod:`summon.search.report`).

Not built yet (the issue asks for them; each is said in the report): early pruning from a partly trained
candidate (today a candidate is pruned before training by its floor cost, or by time), unlabelled text for
distillation, a latency target, taggers' token exits and CRF students, progressive ensembles.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from summon.adaptive.calibration import DefaultPoint
from summon.adaptive.kinds import load
from summon.adaptive.thresholds import OperatingPoint
from summon.core.files import check_destination, exclusive, follow_umask
from summon.data.spec import TaskData
from summon.evaluation.runner import load_for, spec_for
from summon.search.build import build_candidate, reproduce_command, teacher_facts, train_spec
from summon.search.candidates import Candidate, plan_candidates
from summon.search.config import AutoConfig
from summon.search.front import Point, at_target, certify, front, guaranteed_choice, three_parts
from summon.search.measure import (
    calibrated_costs,
    curve,
    predicted,
    stage_answers,
    teacher_costs,
)
from summon.search.report import write_report
from summon.search.state import PARTS, load_state, not_an_auto_run, save_state, write_parts

__all__ = ["NOT_BUILT", "PROTOCOL", "choose", "methods_of", "run_auto"]

logger = logging.getLogger(__name__)


# --- the run ---------------------------------------------------------------------------------------------------


def run_auto(config: AutoConfig, *, dry_run: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``summon auto`` as ``config`` says (module docstring); returns the report's content (the plan, with
    ``dry_run``: nothing is trained and nothing written).

    Raises:
        ValueError: For a missing teacher or split, a teacher that is no classifier, held-out data without labels
            or too few rows, an ``OUT`` holding anything but an earlier run of the same command.
    """
    missing = config.missing()
    if missing:
        raise ValueError(f"summon auto needs {', '.join(missing)}: the teacher, a training split and a labelled "
                         "held-out split (summon auto TEACHER --train sst2:train --heldout sst2:dev)")
    out = Path(config.out)
    if not dry_run:
        check_destination(out, what="the auto search", option="--out", sources=_sources(config),
                          not_ours=not_an_auto_run, own="an earlier run of summon auto, which it continues")
    teacher = load(config.teacher, device=config.device)
    heldout = _heldout(teacher, config)
    candidates = plan_candidates(teacher.task, teacher_facts(teacher), ngram_buckets=config.ngram_buckets,
                                 student_layers=config.student_layers, continue_layer=config.continue_layer,
                                 int8=config.int8, only=config.only)
    parts = three_parts(len(heldout.examples), config.seed)
    teacher_flops, pace = teacher_costs(teacher, [heldout.examples[i] for i in parts[0]])
    n_train = _train_rows(teacher, config)
    plan = [{"name": c.name, "method": c.method, "needs": list(c.needs), "floor_cost": c.floor_cost,
             "estimated_minutes": round(_estimate(c, pace, n_train, len(heldout.examples)) / 60, 2), "notes": c.notes}
            for c in candidates]
    if dry_run:
        return {"dry_run": True, "target": config.target, "time_budget_minutes": config.seconds / 60,
                "train_rows": n_train, "heldout_rows": {p: len(r) for p, r in zip(PARTS, parts, strict=True)},
                "teacher_ms_per_example_bs32": pace * 1000, "candidates": plan}
    with exclusive(out, option="--out"):
        return _search(config, out, teacher, heldout, parts, candidates, plan, (teacher_flops, pace), n_train, say)


def _search(config: AutoConfig, out: Path, teacher: Any, heldout: TaskData, parts: tuple[np.ndarray, ...],
            candidates: list[Candidate], plan: list[dict[str, Any]], teacher_cost: tuple[float, float], n_train: int,
            say: Callable[[str], None]) -> dict[str, Any]:
    teacher_flops, pace = teacher_cost  # FLOPs and seconds per example, measured once on the calibration rows
    state = load_state(out, config)
    started, used_before = time.monotonic(), float(state["seconds_used"])
    files = write_parts(out, heldout, parts)
    save_state(out, state, used_before)  # from here on the folder is this run's, to continue
    rows = {name: [heldout.examples[i] for i in ids] for name, ids in zip(PARTS, parts, strict=True)}
    gold = {name: np.array([ex["label"] for ex in rows[name]]) for name in PARTS}
    teacher_right = {name: predicted(teacher, rows[name], math.inf) == gold[name] for name in ("selection", "certification")}
    teacher_accuracy = float(teacher_right["selection"].mean())
    built: dict[str, str] = {"teacher": str(config.teacher)}
    built.update({n: r["path"] for n, r in state["candidates"].items() if r.get("path")})
    for index, candidate in enumerate(candidates):
        record = state["candidates"].get(candidate.name)
        if record is not None and record.get("done"):
            continue
        left = config.seconds - used_before - (time.monotonic() - started)
        reason = _skip_reason(candidate, state, built, left, _estimate(candidate, pace, n_train, len(heldout.examples)),
                              config, teacher_accuracy, len(parts[1]))
        if reason:
            state["candidates"][candidate.name] = {"done": True, "pruned_at": reason, "method": candidate.method}
            say(f"summon auto: [{index + 1}/{len(candidates)}] {candidate.name}: skipped ({reason})")
            save_state(out, state, used_before + time.monotonic() - started)
            continue
        say(f"summon auto: [{index + 1}/{len(candidates)}] {candidate.name} ({candidate.method}); "
            f"{left / 60:.1f} min left")
        t0 = time.monotonic()
        path = build_candidate(candidate, out, config, built, files, teacher)
        seconds = time.monotonic() - t0
        predictor = load(path, device=config.device)
        points = _measure(candidate.name, predictor, files["calibration"], rows, gold["selection"], teacher_flops,
                          config, teacher_right["selection"])
        built[candidate.name] = str(path)
        point = at_target(points, teacher_accuracy=teacher_accuracy, **config.target)
        state["candidates"][candidate.name] = {
            "done": True, "method": candidate.method, "path": str(path), "train_minutes": round(seconds / 60, 3),
            "points": [p.to_dict() for p in points], "at_target": None if point is None else point.to_dict(),
            "command": reproduce_command(candidate, out, config, built)}
        save_state(out, state, used_before + time.monotonic() - started)
    minutes = (used_before + time.monotonic() - started) / 60
    return _finish(config, out, state, plan, built, teacher, rows, gold, teacher_right, teacher_accuracy, minutes)


def _finish(config: AutoConfig, out: Path, state: dict[str, Any], plan: list[dict[str, Any]], built: dict[str, str],
            teacher: Any, rows: dict[str, list], gold: dict[str, np.ndarray], teacher_right: dict[str, np.ndarray],
            teacher_accuracy: float, minutes: float) -> dict[str, Any]:
    points = [_point(p) for r in state["candidates"].values() for p in r.get("points", [])]
    chosen = choose(points, teacher_accuracy, len(gold["selection"]), config, methods_of(state))
    result: dict[str, Any] = {"target": config.target, "guaranteed": config.guaranteed, "delta": config.delta,
                              "time_budget_minutes": config.seconds / 60, "minutes_used": round(minutes, 2),
                              "teacher_accuracy_selection": teacher_accuracy, "plan": plan,
                              "rows": {p: len(rows[p]) for p in PARTS},
                              "protocol": PROTOCOL[config.guaranteed],
                              "candidates": _candidate_rows(state, teacher_accuracy, config),
                              "front": [p.to_dict() for p in front(points)], "not_built": NOT_BUILT}
    if chosen is None:
        result["chosen"] = None
        result["why"] = ("no candidate point meets the target on the selection rows" + (
            f" with the guarantee: even the teacher's own point needs at least "
            f"{math.ceil(math.log(config.delta) / math.log(1 - config.target['max_drop']))} selection rows at this "
            f"target and delta (there are {len(gold['selection'])}); give more held-out rows, or drop --guaranteed"
            if config.guaranteed else ""))
    else:
        predictor = load(built[chosen.candidate], device=config.device)
        right = predicted(predictor, rows["certification"], chosen.threshold) == gold["certification"]
        certificate = certify(teacher_right["certification"], right, delta=config.delta,
                              max_drop=config.target.get("max_drop"))
        saved = _save_chosen(predictor, chosen, out / "predictor", config)
        result["chosen"] = {"name": chosen.candidate, "path": str(saved), "threshold": chosen.to_dict()["threshold"],
                            "cost_at_target": chosen.cost, "ms_per_example_bs32": chosen.ms,
                            "accuracy_selection": chosen.accuracy,
                            "certified_drop_points": round(100 * certificate.drop_upper, 3),
                            "certificate": asdict(certificate)}
        result["why"] = _why(chosen, points, teacher_accuracy, config)
    result["next_in_line"] = _next_in_line(state, plan)
    result["commands"] = {name: r.get("command") for name, r in state["candidates"].items() if r.get("command")}
    result["report"] = {k: str(v) for k, v in write_report(result, points, out / "report").items()}
    return result


PROTOCOL = {
    False: "selection then certification: the point is chosen on the selection rows (the cheapest within the target "
           "as measured there); its drop is certified once, on certification rows no training, calibration or "
           "selection saw (Clopper-Pearson upper bound on the rows the teacher gets right and it wrong, at delta)",
    True: "guaranteed: the point is chosen by Learn-then-Test on the selection rows (fixed-sequence tests of "
          "H0: harmful rate > target over every candidate and threshold, dearest first, family-wise error delta), "
          "then certified once on certification rows no training, calibration or selection saw (Clopper-Pearson "
          "upper bound on the harmful rate, at delta)",
}

NOT_BUILT = ["pruning from a partly trained candidate (pruned before training by floor cost or time only)",
             "unlabelled text for distillation", "a latency target (--latency-ms)",
             "token exits and CRF students for taggers", "progressive ensembles as candidates"]


# --- what each candidate is ------------------------------------------------------------------------------------


def _measure(name: str, predictor: Any, calibration_file: str, rows: dict[str, list[dict[str, Any]]],
             gold: np.ndarray, teacher_flops: float, config: AutoConfig, teacher_right: np.ndarray) -> list[Point]:
    """The candidate's points on the selection rows; a staged one is calibrated on the calibration rows first.
    Stage costs, like the teacher's, are measured on the calibration rows."""
    costs = calibrated_costs(predictor, calibration_file, rows["calibration"], config.target.get("max_drop", 0.01))
    scores, preds = stage_answers(predictor, rows["selection"])
    return curve(name, scores, preds, gold, [f / teacher_flops for f in costs.flops], costs.ms, teacher_right)


def _save_chosen(predictor: Any, chosen: Point, target: Path, config: AutoConfig) -> Path:
    """The chosen predictor, copied to ``target``; a staged one with the chosen point as its default."""
    source = Path(predictor.path)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    follow_umask(target)
    if predictor.num_stages > 1:
        copy = load(target, device=config.device)
        own = copy.calibration.table
        point = min(own.points, key=lambda p: abs(p.threshold - chosen.threshold)) if own.points else None
        chosen_point = OperatingPoint(chosen.threshold, point.cost if point else chosen.cost, point.disagreement if point
                                      else 0.0, chosen.accuracy, list(chosen.exit_counts))
        rule = "max_drop_gold" if "max_drop" in config.target else "budget"
        default = DefaultPoint(rule, next(iter(config.target.values())), config.delta if config.guaranteed else None,
                               chosen_point)
        copy.calibration = replace(copy.calibration, default=default,
                                   data=f"{copy.calibration.data}; default chosen by summon auto on its selection rows")
        copy.save_calibration()
    return target


# --- choosing and skipping ----------------------------------------------------------------------------------------


def _skip_reason(candidate: Candidate, state: dict[str, Any], built: dict[str, str], left: float, estimate: float,
                 config: AutoConfig, teacher_accuracy: float, rows: int) -> str | None:
    if any(need not in built for need in candidate.needs):
        return f"needs {', '.join(n for n in candidate.needs if n not in built)}, which was not built"
    if candidate.method != "teacher" and estimate > left:
        return f"time: estimated {estimate / 60:.1f} min, {max(0.0, left) / 60:.1f} min left"
    best = _best_cost(state, config, teacher_accuracy, rows)
    if ("max_drop" in config.target and best is not None and candidate.floor_cost >= best - 1e-12
            and candidate.method not in ("teacher", "int8")):  # int8 saves milliseconds, not FLOPs: always measured
        return (f"dominated before training: its cheapest stage costs {candidate.floor_cost:.3f} of the teacher, "
                f"the best point at the target so far {best:.3f}")
    return None


def _best_cost(state: dict[str, Any], config: AutoConfig, teacher_accuracy: float, rows: int) -> float | None:
    """The cost of the point the run would choose now (None before any)."""
    points = [_point(p) for r in state["candidates"].values() for p in r.get("points", [])]
    point = choose(points, teacher_accuracy, rows, config, methods_of(state)) if points else None
    return None if point is None else point.cost


def choose(points: list[Point], teacher_accuracy: float, rows: int, config: AutoConfig,
           methods: dict[str, str]) -> Point | None:
    """The run's choice on the selection rows: with ``guaranteed``, Learn-then-Test over every point
    (:func:`~summon.search.front.guaranteed_choice`); else the cheapest point at the target as measured.

    Int8 copies (``methods[name] == "int8"``) are left out of the tested sequence: they cost their source's FLOPs,
    so they can never be the cheaper choice, and one tested early that fails would end the sequence for every
    cheaper point. The rule is fixed by the plan, not by the selection rows, so the test stays valid."""
    if config.guaranteed:
        tested = [p for p in points if methods.get(p.candidate) != "int8"]
        return guaranteed_choice(tested, rows, config.target["max_drop"], config.delta)
    return at_target(points, teacher_accuracy=teacher_accuracy, **config.target)


def methods_of(state: dict[str, Any]) -> dict[str, str]:
    """Candidate name -> method, from a run's state."""
    return {name: record.get("method", "") for name, record in state["candidates"].items()}


def _why(chosen: Point, points: list[Point], teacher_accuracy: float, config: AutoConfig) -> str:
    rivals = {}
    for p in points:
        if p.candidate != chosen.candidate:
            best = at_target([q for q in points if q.candidate == p.candidate], teacher_accuracy=teacher_accuracy,
                             **config.target)
            if best is not None:
                rivals[p.candidate] = best
    ranked = sorted(rivals.values(), key=lambda p: p.cost)
    second = f"; the next cheapest at the target is {ranked[0].candidate} at {ranked[0].cost:.3f}" if ranked else ""
    return (f"{chosen.candidate} meets the target at {chosen.cost:.3f} of the teacher's FLOPs on the selection rows "
            f"(accuracy {chosen.accuracy:.4f}, teacher {teacher_accuracy:.4f}){second}")


def _next_in_line(state: dict[str, Any], plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a larger budget would try: the candidates skipped for time, cheapest floor first."""
    skipped = [p for p in plan if str(state["candidates"].get(p["name"], {}).get("pruned_at", "")).startswith("time")]
    return sorted(skipped, key=lambda p: p["floor_cost"])


def _candidate_rows(state: dict[str, Any], teacher_accuracy: float, config: AutoConfig) -> list[dict[str, Any]]:
    """Per candidate: its point at the target (or, when none meets it, its most accurate point, with
    ``meets_target`` false), training minutes and why it was skipped."""
    out = []
    for name, record in state["candidates"].items():
        point = record.get("at_target")
        shown = point or max(record.get("points") or [{}], key=lambda p: p.get("accuracy", -1.0))
        out.append({"name": name, "method": record.get("method"), "train_minutes": record.get("train_minutes"),
                    "cost_at_target": None if point is None else point["cost"],
                    "ms_per_example_bs32": shown.get("ms"), "accuracy": shown.get("accuracy"),
                    "cost": shown.get("cost"), "meets_target": point is not None if record.get("points") else None,
                    "pruned_at": record.get("pruned_at"), "path": record.get("path")})
    return out


def _point(data: dict[str, Any]) -> Point:
    threshold = data["threshold"]
    return Point(data["candidate"], float(threshold), float(data["cost"]), float(data["accuracy"]), data.get("ms"),
                 tuple(data.get("exit_counts", ())), data.get("harmful"))


# --- data, estimates, state ------------------------------------------------------------------------------------


def _heldout(teacher: Any, config: AutoConfig) -> TaskData:
    data = load_for(teacher, spec_for(teacher, config.heldout, config.heldout_limit), config.data_dir)
    if not data.has_labels:
        raise ValueError(f"--heldout {config.heldout}: the held-out split needs labels (it certifies the promise)")
    return data


def _train_rows(teacher: Any, config: AutoConfig) -> int:
    return len(load_for(teacher, train_spec(teacher, config), config.data_dir).examples)


def _estimate(candidate: Candidate, pace: float, n_train: int, n_heldout: int) -> float:
    """Seconds: training passes over the training split plus one calibration pass over the held-out rows."""
    return pace * (candidate.train_passes * n_train + n_heldout)


def _sources(config: AutoConfig) -> dict[str, str]:
    sources = {config.teacher: "the teacher"}
    for value, what in ((config.train, "the training data"), (config.heldout, "the held-out data")):
        if value and Path(value).exists():
            sources[value] = what
    return {k: v for k, v in sources.items() if k and not str(k).startswith("hf:")}
