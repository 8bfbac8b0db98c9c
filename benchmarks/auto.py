"""``summon auto`` as a user runs it (issue 24): the choice, its cost against the best hand-run benchmark, the
measured speed-up, the guarantee over re-splits and the choice after kills.

    python benchmarks/auto.py --dataset sst2 --data-dir ../shared/data --time 60m

Phases, each resumable (its output kept under ``--work``, default ``benchmarks/work/auto_<dataset>``):

1. **teacher** — ``--teacher PATH``, else the shipped ``<dataset>_finetune`` recipe trained into ``WORK/teacher``
   (the whole-data MiniLM-L6 teacher the early-exit benchmarks train; ``--teacher-train-limit`` for a quick one);
2. **run** — ``summon auto TEACHER --train <dataset>:train --heldout <dataset>:dev --max-drop 0.01 --guaranteed
   --delta 0.1 --time T`` in its own process, timed;
3. **speed-up** — the chosen predictor at its default point against the teacher on the same selection rows, batch
   32, featurisation included, interleaved medians (``summon.measure.timing``);
4. **re-splits** — every built candidate's per-row answers at each of its points on the selection and
   certification rows (``summon.search.auto.stage_answers``); 50 random re-cuts of those rows into new selection
   and certification halves; each re-cut chooses (the run's rule: the cheapest point whose accuracy on the
   selection half is within the target, among points whose selection bound meets it) and certifies on its
   certification half. ``guarantee_violation_rate`` is the share of re-cuts whose certified drop exceeds the
   target (the issue's "certified drop ≤ the target in ≥ 90 % of re-splits" is ``1 - rate >= 0.9``);
5. **kills** — the same command in a fresh folder killed (SIGKILL) at ``--kills`` random points and restarted,
   then run to its end: ``resume_same_choice`` compares its choice with the uninterrupted run's (``--kill-train-limit``
   shrinks this phase's training split, said in the result, when the whole run is too long to repeat).

Writes ``benchmarks/results/auto_<dataset>.json`` with the issue's keys and copies the report's plot beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, provenance, write_result

RESULTS = REPO / "benchmarks" / "results"
TARGET = 0.01
DELTA = 0.1


def summon_cli() -> str:
    return str(Path(sys.executable).with_name("summon"))


def teacher_path(args: argparse.Namespace, work: Path) -> Path:
    if args.teacher:
        return Path(args.teacher)
    model = work / "teacher" / "model"
    if not (model / "manifest.json").exists():
        extra = [f"data.train.limit={args.teacher_train_limit}"] if args.teacher_train_limit else []
        cmd = [summon_cli(), "train", f"{args.dataset}_finetune", "--data-dir", args.data_dir,
               f"output_dir={work / 'teacher'}", "train.progress=false", *extra]
        print("teacher:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return model


def auto_command(args: argparse.Namespace, teacher: Path, out: Path, train_limit: int | None) -> list[str]:
    cmd = [summon_cli(), "auto", str(teacher), "--train", f"{args.dataset}:train", "--heldout", f"{args.dataset}:dev",
           "--out", str(out), "--max-drop", str(TARGET), "--guaranteed", "--delta", str(DELTA), "--time", args.time,
           "--data-dir", args.data_dir, "--seed", str(args.seed)]
    if train_limit:
        cmd += ["--train-limit", str(train_limit)]
    return cmd


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    started = time.monotonic()
    with log.open("a") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - started


def best_hand_run(dataset: str) -> dict[str, Any]:
    """The cheapest cost within 1 point of the teacher any hand-run benchmark on main reached on ``dataset``: an
    early-exit schedule's ``cost_within_1pt_of_teacher`` (its drop from the teacher, not its own last exit), else a
    file's top-level ``cost_at_drop_1pt``."""
    found = []
    for path in sorted(RESULTS.glob(f"*_{dataset}.json")):
        if not path.exists() or path.name.startswith("auto_"):
            continue
        data = json.loads(path.read_text())
        within = data.get("cost_within_1pt_of_teacher")
        if isinstance(within, dict):
            found += [(float(v), f"{path.name}: cost_within_1pt_of_teacher.{k}") for k, v in within.items()
                      if isinstance(v, int | float)]
        elif isinstance(data.get("cost_at_drop_1pt"), int | float) and data.get("dataset", dataset) == dataset:
            found.append((float(data["cost_at_drop_1pt"]), f"{path.name}: cost_at_drop_1pt"))
    if not found:
        return {"cost": None, "source": None}
    cost, source = min(found)
    return {"cost": cost, "source": source, "considered": [s for _, s in found]}


def speedup(chosen: Path, teacher: Path, rows: list[dict], threshold: float) -> dict[str, float]:
    """Teacher ms / chosen ms per example at batch 32 on the same rows (the one timing loop, the two calls
    interleaved; featurisation included)."""
    import statistics

    import summon
    from summon.measure.timing import time_calls

    fast, full = summon.load(chosen, device="cpu"), summon.load(teacher, device="cpu")
    batch = (rows * (32 // max(1, len(rows)) + 1))[:32]
    texts = [(r["text"], r["text_pair"]) if r.get("text_pair") else r["text"] for r in batch]
    kwargs = {} if fast.num_stages == 1 else {"threshold": threshold}
    ours, theirs = time_calls(lambda: fast.predict(texts, batch_size=32, **kwargs),
                              lambda: full.predict(texts, batch_size=32), warmup=3, repeats=30, max_seconds=60)
    ms_ours, ms_theirs = statistics.median(ours) * 1000 / 32, statistics.median(theirs) * 1000 / 32
    return {"chosen_ms_per_example": ms_ours, "teacher_ms_per_example": ms_theirs, "speedup": ms_theirs / ms_ours,
            "rows": 32, "repeats": len(ours)}


def resplits(out: Path, teacher: Path, count: int, seed: int) -> dict[str, Any]:
    """Re-cut selection + certification rows ``count`` times; choose (the run's rule, ``summon.search.auto.choose``)
    and certify on each (module docstring)."""
    import summon
    from summon.evaluation.protocol import halvings
    from summon.search.auto import choose, methods_of
    from summon.search.config import AutoConfig
    from summon.search.front import Point, certify
    from summon.search.measure import answers_at, stage_answers
    from summon.search.state import STATE

    state = json.loads((out / STATE).read_text())
    config = AutoConfig(**{**state["config"], "only": tuple(state["config"]["only"]) if state["config"].get("only")
                           else None})
    rows = [json.loads(line) for part in ("selection", "certification")
            for line in (out / "data" / f"{part}.jsonl").read_text().splitlines()]
    teacher_model = summon.load(teacher, device="cpu")
    labels = list(teacher_model.labels)
    examples = [{**{k: v for k, v in r.items() if k != "label"}, "label": labels.index(r["label"])} for r in rows]
    gold = np.array([e["label"] for e in examples])
    t_scores, t_preds = stage_answers(teacher_model, examples)
    teacher_right = answers_at(t_scores, t_preds, np.inf) == gold
    options = []  # (point as recorded, per-row right on these rows)
    for record in state["candidates"].values():
        if not record.get("points"):
            continue
        predictor = summon.load(record["path"], device="cpu")
        scores, preds = stage_answers(predictor, examples)
        for point in record["points"]:
            options.append((point, answers_at(scores, preds, float(point["threshold"])) == gold))
    outcomes = []
    for split in halvings(len(rows), count, seed):  # the one held-out protocol: choose on one half, measure the other
        sel, cert = split.calibration, split.report
        points = [Point(p["candidate"], float(p["threshold"]), float(p["cost"]), float(right[sel].mean()),
                        p.get("ms"), (), int((teacher_right[sel] & ~right[sel]).sum())) for p, right in options]
        chosen = choose(points, float(teacher_right[sel].mean()), len(sel), config, methods_of(state))
        if chosen is None:
            outcomes.append({"chosen": None})
            continue
        right = next(r for p, r in options if p["candidate"] == chosen.candidate
                     and float(p["threshold"]) == chosen.threshold)
        c = certify(teacher_right[cert], right[cert], delta=DELTA, max_drop=TARGET)
        outcomes.append({"chosen": chosen.candidate, "cost": chosen.cost, "certified_drop_points": 100 * c.drop_upper,
                         "drop_points": 100 * c.drop, "holds": c.holds})
    made = [o for o in outcomes if o["chosen"] is not None]
    return {"resplits": count, "rows": len(rows), "chose_something": len(made),
            "guarantee_violation_rate": float(np.mean([o["drop_points"] > 100 * TARGET for o in made])) if made else None,
            "certified_within_target_rate": float(np.mean([bool(o["holds"]) for o in made])) if made else None,
            "mean_cost": float(np.mean([o["cost"] for o in made])) if made else None,
            "chosen_counts": {str(n): sum(o["chosen"] == n for o in outcomes) for n in {o["chosen"] for o in outcomes}},
            "definition": "each re-cut halves the selection + certification rows at random, chooses on one half by the "
                          "run's rule and measures the chosen point on the other: a violation is a drop from the "
                          "teacher above the target there; certified_within_target_rate is the share whose "
                          "Clopper-Pearson bound (at delta) is within the target"}


def kills(args: argparse.Namespace, teacher: Path, work: Path, uninterrupted: dict[str, Any],
          full_seconds: float) -> dict[str, Any]:
    """Kill the same command ``args.kills`` times at random points, restart, finish; compare the choice."""
    out = work / "killed"
    log = work / "killed.log"
    rng = random.Random(args.seed)
    cmd = auto_command(args, teacher, out, args.kill_train_limit)
    points, killed = [], 0
    for _ in range(args.kills):  # each kill a random point into what is left (a restart resumes, so it is shorter)
        wait = rng.uniform(0.05, 0.3) * full_seconds
        with log.open("a") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
        points.append(round(wait, 1))
    code, _ = run(cmd, log)
    report = json.loads((out / "report" / "report.json").read_text())
    chosen = report.get("chosen") or {}
    base = uninterrupted.get("chosen") or {}
    same = chosen.get("name") == base.get("name") and chosen.get("threshold") == base.get("threshold")
    return {"kills": args.kills, "killed": killed, "killed_after_seconds": points, "exit_code": code,
            "chosen": chosen.get("name"),
            "threshold": chosen.get("threshold"), "same_choice": bool(same), "train_limit": args.kill_train_limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--time", default="60m")
    parser.add_argument("--teacher")
    parser.add_argument("--teacher-train-limit", type=int)
    parser.add_argument("--work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resplits", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--kill-train-limit", type=int, help="training rows for the kill phase (default: all)")
    parser.add_argument("--train-limit", type=int, help="training rows for the main run and the kill phase alike "
                        "(a reduced setting: said in the result as train_limit)")
    parser.add_argument("--skip-kills", action="store_true")
    parser.add_argument("--out", help="result file (default benchmarks/results/auto_<dataset>.json; the plot beside it)")
    args = parser.parse_args()
    work = Path(args.work or REPO / "benchmarks" / "work" / f"auto_{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    teacher = teacher_path(args, work)
    out = work / "run"
    timing = work / "run_seconds.json"
    if args.train_limit:
        args.kill_train_limit = args.train_limit
    if not (out / "report" / "report.json").exists():
        code, seconds = run(auto_command(args, teacher, out, args.train_limit), work / "run.log")
        timing.write_text(json.dumps({"exit_code": code, "seconds": seconds}))
    ran = json.loads(timing.read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    chosen = report.get("chosen")
    result: dict[str, Any] = {"benchmark": "auto", "dataset": args.dataset, **provenance(args.seed),
                              "auto_command": " ".join(auto_command(args, teacher, out, args.train_limit)),
                              "train_limit": args.train_limit,
                              "teacher": str(teacher), "target": report["target"], "delta": DELTA,
                              "time_budget_minutes": report["time_budget_minutes"],
                              "minutes_used": report["minutes_used"], "wall_minutes": ran["seconds"] / 60,
                              "exit_code": ran["exit_code"], "rows": report["rows"]}
    result["candidates"] = [{k: c.get(k) for k in ("name", "method", "train_minutes", "cost_at_target",
                                                   "ms_per_example_bs32", "accuracy", "pruned_at")}
                            for c in report["candidates"]]
    hand = best_hand_run(args.dataset)
    result["best_hand_run_cost_at_target"] = hand
    measured = [c for c in report["candidates"] if c.get("cost_at_target") is not None]
    cheapest = min(measured, key=lambda c: c["cost_at_target"]) if measured else None
    result["chosen_without_guarantee"] = None if cheapest is None else {  # what the selection rows alone pick
        "name": cheapest["name"], "cost_at_target": cheapest["cost_at_target"],
        "minus_best_hand_run": None if hand["cost"] is None else cheapest["cost_at_target"] - hand["cost"]}
    if chosen:
        selection = [json.loads(line) for line in (out / "data" / "selection.jsonl").read_text().splitlines()]
        measured = speedup(Path(chosen["path"]), teacher, selection, float(chosen["threshold"]))
        result["chosen"] = {"name": chosen["name"], "cost_at_target": chosen["cost_at_target"],
                            "speedup_bs32_measured": measured["speedup"], "timing": measured,
                            "certified_drop_points": chosen["certified_drop_points"]}
        result["chosen_minus_best_hand_run"] = (None if hand["cost"] is None
                                                else chosen["cost_at_target"] - hand["cost"])
    else:
        result["chosen"] = None
    result["resplit_study"] = resplits(out, teacher, args.resplits, args.seed)
    result["guarantee_violation_rate"] = result["resplit_study"]["guarantee_violation_rate"]
    if args.skip_kills:  # the key stays in the result, saying it was not measured
        result["resume"], result["resume_same_choice"] = {"not_run": "--skip-kills"}, None
    else:
        result["resume"] = kills(args, teacher, work, report, ran["seconds"])
        result["resume_same_choice"] = result["resume"]["same_choice"]
    target = Path(args.out).resolve() if args.out else RESULTS / f"auto_{args.dataset}.json"
    plot = target.with_suffix(".png")
    shutil.copyfile(out / "report" / "report.png", plot)
    result["plot"] = str(plot.relative_to(REPO)) if plot.resolve().is_relative_to(REPO) else str(plot)
    write_result(target, result)


if __name__ == "__main__":
    main()
