"""Early-exit benchmark (The Right Tool for the Job) on SST-2 or AG News with MiniLM-L6 and 6 exits.

Schedules compared, each trained once through the shipped recipes and the one training loop:
  joint      all exits trained together, sum of cross-entropies (the paper);
  distill    joint, earlier exits also distil the last exit (method_args.distill_last=0.5);
  two_stage  DeeBERT: fine-tune the teacher, then train exits 1-5 on its frozen copy;
  distill_teacher  joint, every exit also distils the fine-tuned teacher (method_args.distill_teacher=0.5);
  consistency      joint, each exit also learns the next one's answer (method_args.consistency=0.5);
  embedding        joint, with one more exit on the embeddings before the first layer (exits: embeddings+all).
The winner is the schedule with the lowest mean cost at the max-drop-1-point threshold. On the winner, every
exit score (max_prob, margin, entropy, patience, learned) is compared at the same halvings (``policies``).
Speed-ups are measured from the texts (tokenisation included) and from featurized inputs (model only).

Thresholds are always chosen on data disjoint from the data reported. The evaluation split (SST-2 dev,
or AG News test descriptions) is halved at random many times: one half calibrates (30% of it fits the
per-exit temperatures, 70% tabulates thresholds), the other half is reported (``summon.evaluation.protocol``).
Numbers are means over halvings. The guarantee (Learn-then-Test, epsilon = 1 point, delta = 0.1) is checked
over 200 splits.
"Within 1 point" is against each schedule's own last exit; ``vs_teacher`` also gives, per schedule, the cost
within 1 point of the fine-tuned teacher (two_stage's frozen last exit), which joint training can fall below.

Usage (from the repository root):
    python benchmarks/early_exit.py --dataset sst2 --train-limit 20000
    python benchmarks/early_exit.py --dataset ag_news
    python benchmarks/early_exit.py --dataset sst2 --epochs 1 \
        --schedules joint,distill,two_stage,distill_teacher,consistency,embedding   # whole training set
Training resumes if interrupted. Writes benchmarks/results/early_exit_<dataset>.json and plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import REPO, provenance, repo_relative, run_paths, setup_logging, train_seconds, write_result

from summon import load
from summon.adaptive.calibration import CalibrationSpec, calibration_report, choose, fit_calibration
from summon.adaptive.scoring import score_all
from summon.adaptive.staged import row_lengths
from summon.adaptive.thresholds import ThresholdTable, sweep
from summon.data.spec import TaskData
from summon.evaluation import protocol
from summon.evaluation.adaptive import curves, evaluate_adaptive, measure_speedup
from summon.evaluation.protocol import mean, share_within, spread
from summon.evaluation.runner import load_for
from summon.predictors.saved import read_manifest
from summon.training.loop import train
from summon.training.recipe import load_run_config

EPSILON, DELTA = 0.01, 0.1
SCHEDULES = ("joint", "distill", "two_stage", "distill_teacher", "consistency", "embedding")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["sst2", "ag_news"], required=True)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training rows")
    p.add_argument("--schedules", default="joint,distill,two_stage",
                   help=f"comma-separated, from {', '.join(SCHEDULES)}")
    p.add_argument("--epochs", type=int, default=1, help="epochs of every training run")
    p.add_argument("--policies", default="max_prob,margin,entropy,patience,learned",
                   help="exit scores compared on the winning schedule, at the same halvings")
    p.add_argument("--eval-limit", type=int, default=None, help="random subset of N evaluation rows (default all)")
    p.add_argument("--speedup-rows", type=int, default=None,
                   help="time the speed-up on the first N report rows (default all of the report half)")
    p.add_argument("--halvings", type=int, default=20)
    p.add_argument("--guarantee-splits", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-only", action="store_true",
                   help="train (or resume) the schedules and stop: no evaluation, no result file")
    p.add_argument("--work", default=None, help="run folders (default benchmarks/work/early_exit_<dataset>)")
    p.add_argument("--out", default=None, help="default benchmarks/results/early_exit_<dataset>.json")
    p.add_argument("--override", action="append", default=[], help="extra key=value for every training run "
                   "(e.g. a smoke test: model.name=tiny-bert data.train.limit=64)")
    return p.parse_args()


# --- training -------------------------------------------------------------------------------------


def train_schedules(args: argparse.Namespace, work: Path) -> dict[str, tuple[Path, float]]:
    base = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", f"train.seed={args.seed}",
            "train.progress=false", "train.eval_every=1000000",  # evaluate once at the end: no selection on eval
            f"train.epochs={args.epochs}"]
    if args.train_limit:
        base += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    base += args.override
    ds = args.dataset
    teacher = work / "teacher" / "model"
    runs = {"joint": (f"{ds}_early_exit", []),
            "distill": (f"{ds}_early_exit", ["method_args.distill_last=0.5"]),
            "two_stage": (f"{ds}_early_exit_two_stage", [f"teacher={teacher}"]),
            "distill_teacher": (f"{ds}_early_exit", ["method_args.distill_teacher=0.5", f"teacher={teacher}"]),
            "consistency": (f"{ds}_early_exit", ["method_args.consistency=0.5"]),
            "embedding": (f"{ds}_early_exit", ["model.exits=embeddings+all"])}
    out, teacher_seconds = {}, None
    for name in args.schedules.split(","):
        if name not in runs:
            raise ValueError(f"--schedules: unknown schedule {name!r}; choose from {', '.join(runs)}")
        recipe, extra = runs[name]
        needs_teacher = any(e.startswith("teacher=") for e in extra)
        if needs_teacher and teacher_seconds is None:  # the ordinary fine-tuned teacher, trained once
            teacher_seconds = timed(f"{ds}_finetune", [*base, f"output_dir={work / 'teacher'}"])
        seconds = timed(recipe, [*base, *extra, f"output_dir={work / name}"])
        out[name] = (work / name / "model", seconds + (teacher_seconds if name == "two_stage" else 0.0))
    return out


def timed(recipe: str, overrides: list[str]) -> float:
    """Train (or resume, or just load a finished run) and return the run's training seconds over all sessions."""
    cfg = load_run_config(recipe, overrides)
    train(cfg)
    return train_seconds(cfg.output_dir)


# --- evaluation -----------------------------------------------------------------------------------


def eval_data(args: argparse.Namespace, predictor) -> TaskData:
    limit = [f"data.eval.limit={args.eval_limit}", f"data.eval.shuffle_seed={args.seed}"] if args.eval_limit else []
    cfg = load_run_config(f"{args.dataset}_early_exit", [f"data.data_dir={args.data_dir}", *limit])
    return load_for(predictor, cfg.data.eval, args.data_dir)


def split_result(logits, gold, costs, temp_rows, thr_rows, report_rows, policy="max_prob",
                 rules=("reference", "gold", "guaranteed"), with_curves=True, lengths=None) -> dict:
    """Calibrate on the calibration rows (summon's one calibration, on the benchmark's own split) and report
    each rule's operating point on the report rows."""
    spec = CalibrationSpec(policy=policy, rule="max_drop", value=EPSILON, delta=DELTA)
    calibration = fit_calibration(logits, gold, costs, spec, num_labels=logits.shape[2], rows=(temp_rows, thr_rows),
                                  lengths=lengths)
    table, temps, fractions = calibration.table, calibration.temperatures, calibration.fractions()
    scores_rep, preds_rep, _ = score_all(logits[report_rows].transpose(1, 0, 2), calibration.readout(logits.shape[2]),
                                         None if lengths is None else lengths[report_rows])
    full = float((preds_rep[:, -1] == gold[report_rows]).mean())
    rule_names = {"reference": "max_drop", "gold": "max_drop_gold", "guaranteed": "guaranteed"}
    out = {"full_accuracy": full}
    for rule in rules:
        point = choose(table, rule_names[rule], EPSILON, DELTA)[0]
        at = sweep(scores_rep, preds_rep, np.asarray(fractions), gold[report_rows], np.array([point.threshold]))[0]
        out[rule] = {"threshold": point.threshold, "cost": at.cost, "accuracy": at.accuracy,
                     "drop": full - at.accuracy, "disagreement": at.disagreement, "exit_counts": at.exit_counts}
    if not with_curves:
        return out
    rep = ThresholdTable.build(policy, "flops", scores_rep, preds_rep, np.asarray(fractions), gold[report_rows])
    c = curves(preds_rep, gold[report_rows], fractions, rep.points)
    out["oracle"] = {k: c["cost_at_drop_1pt"][k] for k in ("oracle_agree", "oracle_correct")}
    out["policy_cost_at_drop_1pt_report"] = c["cost_at_drop_1pt"]["policy"]
    out["areas"] = {"to_oracle_agree": c["area_policy_to_oracle_agree"],
                    "to_oracle_correct": c["area_policy_to_oracle_correct"]}
    out["oracle_agree_end_cost"] = c["oracle_agree_end"]["cost"]
    out["temperatures"] = temps
    out["ece"] = calibration_report(torch.from_numpy(logits[report_rows]), torch.from_numpy(gold[report_rows]), temps)
    return out


def against_teacher(logits: np.ndarray, gold: np.ndarray, costs, teacher_pred: np.ndarray, halvings: int,
                    seed: int) -> dict:
    """The cheapest threshold within 1 point of the fine-tuned teacher's accuracy (not the schedule's own last
    exit, which joint training can leave below the teacher), at the same halvings: chosen on the calibration
    half's threshold rows (gold accuracy ≥ the teacher's there − 1 point), reported on the other half. A split
    where no threshold of this schedule reaches that accuracy counts as infeasible."""
    spec = CalibrationSpec(policy="max_prob", rule="max_drop", value=EPSILON, delta=DELTA)
    rows = []
    for temp_rows, thr_rows, report_rows in protocol.halvings(len(gold), halvings, seed):
        calibration = fit_calibration(logits, gold, costs, spec, num_labels=logits.shape[2], rows=(temp_rows, thr_rows))
        target = float((teacher_pred[thr_rows] == gold[thr_rows]).mean()) - EPSILON
        ok = [p for p in calibration.table.points if p.accuracy is not None and p.accuracy >= target - 1e-12]
        teacher_acc = float((teacher_pred[report_rows] == gold[report_rows]).mean())
        if not ok:
            rows.append({"feasible": False, "teacher_accuracy": teacher_acc})
            continue
        point = min(ok, key=lambda p: (p.cost, -p.threshold))
        scores, preds, _ = score_all(logits[report_rows].transpose(1, 0, 2), calibration.readout(logits.shape[2]))
        at = sweep(scores, preds, np.asarray(calibration.fractions()), gold[report_rows], np.array([point.threshold]))[0]
        rows.append({"feasible": True, "teacher_accuracy": teacher_acc, "cost": at.cost, "accuracy": at.accuracy,
                     "drop": teacher_acc - at.accuracy})
    feasible = [r for r in rows if r["feasible"]]
    drop = mean(r.get("drop") for r in rows)  # an infeasible split has no cost or drop: left out of the means
    return {"share_feasible": len(feasible) / len(rows), "teacher_accuracy": mean(r["teacher_accuracy"] for r in rows),
            "cost": mean(r.get("cost") for r in rows), "drop_points": None if drop is None else 100 * drop,
            "share_within_1pt": share_within((r.get("drop") for r in rows), EPSILON)}


def summarise(splits: list[dict]) -> dict:
    out = {"full_accuracy": mean(s["full_accuracy"] for s in splits)}
    for rule in ("reference", "gold", "guaranteed"):
        rows = [s[rule] for s in splits]
        out[rule] = {"cost": mean(r["cost"] for r in rows), "drop": mean(r["drop"] for r in rows),
                     "drop_std": spread(r["drop"] for r in rows),
                     "share_within_1pt": share_within((r["drop"] for r in rows), EPSILON),
                     "disagreement": mean(r["disagreement"] for r in rows)}
    out["oracle_agree_cost_at_drop_1pt"] = mean(s["oracle"]["oracle_agree"] for s in splits)
    out["oracle_correct_cost_at_drop_1pt"] = mean(s["oracle"]["oracle_correct"] for s in splits)
    out["oracle_agree_end_cost"] = mean(s["oracle_agree_end_cost"] for s in splits)
    out["policy_cost_at_drop_1pt_on_report_half"] = mean(s["policy_cost_at_drop_1pt_report"] for s in splits)
    out["area_to_oracle_agree"] = mean(s["areas"]["to_oracle_agree"] for s in splits)
    out["area_to_oracle_correct"] = mean(s["areas"]["to_oracle_correct"] for s in splits)
    stages = len(splits[0]["ece"])
    out["ece_before"] = [mean(s["ece"][k]["ece_before"] for s in splits) for k in range(stages)]
    out["ece_after"] = [mean(s["ece"][k]["ece_after"] for s in splits) for k in range(stages)]
    return out


def evaluate_schedule(predictor, data: TaskData, halvings: int, seed: int) -> tuple[dict, np.ndarray]:
    logits = np.stack(predictor.stage_logits(data.examples, progress="stage logits"), axis=1)  # [N, S, C]
    gold = np.array([ex["label"] for ex in data.examples])
    costs = predictor.calibration.costs
    fractions = costs.fractions("flops")
    splits = [split_result(logits, gold, costs, *split) for split in protocol.halvings(len(gold), halvings, seed)]
    return {"summary": summarise(splits), "exit_accuracy": [float((logits[:, k].argmax(-1) == gold).mean())
                                                            for k in range(logits.shape[1])],
            "stage_cost_fractions": fractions}, logits


def compare_policies(logits: np.ndarray, gold: np.ndarray, costs, lengths: np.ndarray, policies: list[str],
                     halvings: int, seed: int) -> dict:
    """Every exit score at the same protocol as the schedules (the same halvings: calibrate on one half, report
    the other): mean cost and drop at the max-drop-1-point threshold, and the guaranteed rule's."""
    out = {}
    for policy in policies:
        splits = [split_result(logits, gold, costs, *split, policy=policy, with_curves=False, lengths=lengths)
                  for split in protocol.halvings(len(gold), halvings, seed)]
        ref, guar = [s["reference"] for s in splits], [s["guaranteed"] for s in splits]
        out[policy] = {"cost_at_drop_1pt": mean(r["cost"] for r in ref), "drop_points": 100 * mean(r["drop"] for r in ref),
                       "share_within_1pt": share_within((r["drop"] for r in ref), EPSILON),
                       "guaranteed_cost": mean(r["cost"] for r in guar),
                       "guaranteed_disagreement": mean(r["disagreement"] for r in guar)}
        print("policy", policy, json.dumps(out[policy]), flush=True)
    return out


def guarantee(logits: np.ndarray, gold: np.ndarray, costs, splits: int, seed: int, policy: str = "max_prob",
              lengths: np.ndarray | None = None) -> dict:
    """The Learn-then-Test rule over many random splits. With ``policy="learned"`` the score models are fitted
    on each split's temperature rows only, so the threshold rows the guarantee rests on never shaped the score."""
    results = [split_result(logits, gold, costs, *split, policy=policy, rules=("guaranteed",), with_curves=False,
                            lengths=lengths)["guaranteed"] for split in protocol.halvings(len(gold), splits, seed + 1)]
    return {"policy": policy, "epsilon": EPSILON, "delta": DELTA, "splits": splits,
            "violation_rate": mean(float(r["disagreement"] > EPSILON) for r in results),
            "accuracy_drop_violation_rate": mean(float(r["drop"] > EPSILON) for r in results),
            "mean_cost": mean(r["cost"] for r in results), "mean_disagreement": mean(r["disagreement"] for r in results),
            "mean_drop": mean(r["drop"] for r in results),
            "note": "violation = disagreement with the full model on the report half above epsilon (what LTT "
                    "certifies); the report half is a finite sample, so its rate scatters around the true one."}


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out_json = run_paths(args.work, args.out, f"early_exit_{args.dataset}")
    trained = train_schedules(args, work)
    if args.train_only:
        return
    schedules, logits_of, costs_of, data = {}, {}, {}, None
    for name, (model_dir, seconds) in trained.items():
        predictor = load(model_dir)
        data = data or eval_data(args, predictor)
        first_calib = protocol.first_halving(len(data), args.seed).calibration
        calib = TaskData(data.task, data.labels, [data.examples[i] for i in first_calib], data.source)
        predictor.calibrate(calib, CalibrationSpec(rule="max_drop", value=EPSILON))
        predictor.save_calibration()
        result, logits_of[name] = evaluate_schedule(predictor, data, args.halvings, args.seed)
        costs_of[name] = predictor.calibration.costs
        schedules[name] = {**result, "train_seconds": seconds, "path": str(model_dir)}
        print(name, json.dumps(result["summary"]["reference"]), flush=True)
    gold = np.array([ex["label"] for ex in data.examples])
    if "two_stage" in logits_of:  # its last exit is the fine-tuned teacher, frozen: the teacher's answers
        teacher_pred = logits_of["two_stage"][:, -1].argmax(-1)
        for name in schedules:
            schedules[name]["vs_teacher"] = against_teacher(logits_of[name], gold, costs_of[name], teacher_pred,
                                                            args.halvings, args.seed)
    winner = min(schedules, key=lambda s: schedules[s]["summary"]["reference"]["cost"])
    predictor = load(trained[winner][0])
    guar = guarantee(logits_of[winner], gold, predictor.calibration.costs, args.guarantee_splits, args.seed)
    report_rows = protocol.first_halving(len(data), args.seed).report
    report = TaskData(data.task, data.labels, [data.examples[i] for i in report_rows], data.source)
    plots = out_json.parent / f"early_exit_{args.dataset}"
    detail = evaluate_adaptive(predictor, report, out_dir=plots, speed=False, title=f"{args.dataset}: {winner} schedule")
    lengths = row_lengths(predictor, data.examples)
    policies = compare_policies(logits_of[winner], gold, predictor.calibration.costs, lengths,
                                args.policies.split(","), args.halvings, args.seed)
    guar_learned = guarantee(logits_of[winner], gold, predictor.calibration.costs, args.guarantee_splits, args.seed,
                             policy="learned", lengths=lengths)
    timed_rows = report.examples[: args.speedup_rows]
    features = predictor.featurizer.encode(timed_rows, report.task)
    speed = measure_speedup(predictor, features, predictor.calibration.default.threshold, examples=timed_rows)
    manifest = read_manifest(trained[winner][0])
    win = schedules[winner]["summary"]
    result = {
        "benchmark": f"early_exit_{args.dataset}", **provenance(args.seed),
        "model": "all-MiniLM-L6-v2, 6 exits (after every layer), mean-pooled linear heads",
        "train_subset": args.train_limit or "all", "train_rows": manifest["training"]["train_examples"],
        "epochs": args.epochs, "train_minutes": schedules[winner]["train_seconds"] / 60.0,
        "train_minutes_per_schedule": {k: v["train_seconds"] / 60.0 for k, v in schedules.items()},
        "eval_data": data.source, "eval_rows": len(data),
        "halvings": args.halvings, "winner": winner, "speedup_rows": len(features),
        "full_accuracy": win["full_accuracy"],
        "cost_at_drop_1pt": win["reference"]["cost"],
        "drop_at_that_cost": win["reference"]["drop"],
        "oracle_cost_at_drop_1pt": win["oracle_agree_cost_at_drop_1pt"],
        "oracle_correct_cost_at_drop_1pt": win["oracle_correct_cost_at_drop_1pt"],
        "cost_within_1pt_of_teacher": {k: v["vs_teacher"]["cost"] for k, v in schedules.items() if "vs_teacher" in v},
        "speedup_realized_over_theoretical": {f"bs{bs}": s["realised_over_theoretical_with_tokenisation"]
                                              for bs, s in speed.items()},
        "speedup_realized_over_theoretical_model_only": {f"bs{bs}": s["realised_over_theoretical"]
                                                         for bs, s in speed.items()},
        "policies": policies,
        "speedup": speed, "speedup_threshold": predictor.calibration.default.threshold,
        "guarantee": guar, "guarantee_learned": guar_learned, "schedules": schedules, "winner_rule": "the schedule with the lowest mean cost at the "
        "max-drop-1-point threshold (calibration halves), reported on the other halves",
        "plots": {k: repo_relative(v) for k, v in detail["plots"].items()},
        "notes": "cost = FLOPs per example (torch.utils.flop_counter) of answering at an exit, over the plain "
                 "full model's; thresholds chosen on the calibration half (max drop 1 point against the full "
                 "model's predictions), reported on the other half, mean over halvings.",
    }
    write_result(out_json, result)


if __name__ == "__main__":
    main()
