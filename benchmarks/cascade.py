"""Cascade benchmark (When in Doubt, Summon the Titans) on SST-2 or AG News: student -> MiniLM-L6 teacher.

The teacher is a fine-tuned all-MiniLM-L6-v2 (MPNet-base would cost about 6.7x as much per example and
does not fit a CPU session's budget of fine-tuning plus teacher passes). Students: a bag of n-grams and the
teacher's first layer. Each student is trained three ways from the same initialisation, through the
shipped recipes and the one training loop:
  kd               standard KD on every input (alpha 0.5, T 2);
  easy_selective   easy-example KD, hard inputs pushed to uniform (budget 0.3);
  easy_defer       easy-example KD with a learned defer output (budget 0.3).
Further transformer students (``--students``): ``truncated_2``/``truncated_3``, the teacher's first 2 or 3
layers fine-tuned the same three ways. And the cascade that continues (``continue_1``..``continue_3``): the
student is the teacher's own first k layers, *frozen*, with a new head after layer k distilled from the
teacher's answer (the early-exit method with ``distill_last``, alpha 0.5, T 2, as ``kd`` above); a deferred row
does not start the teacher from scratch but runs its remaining layers on the student's hidden states, so the
deferred rows cost the teacher alone. This is an early-exit model with two exits (k and the teacher's own
head): the early exit and the cascade meet, and it runs on the same executor.
Cascades defer on the calibrated max probability (all students), the learned defer output (easy_defer),
a learned gate, or the learned score (``learned``). Thresholds are chosen on one random half of the evaluation
split (30% of it fits the temperatures, gates and learned scores, 70% tabulates thresholds) and reported on the
other half; means over halvings (``summon.evaluation.protocol``).

Usage (from the repository root, after the foundation / early-exit benchmarks trained the teachers):
    python benchmarks/cascade.py --dataset sst2 --train-limit 20000
    python benchmarks/cascade.py --dataset ag_news
    python benchmarks/cascade.py --dataset sst2 --teacher benchmarks/work/early_exit_sst2/teacher/model \
        --students ngram,truncated_1,truncated_2,continue_1,continue_2
Writes benchmarks/results/cascade_<dataset>.json and a plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import REPO, provenance, repo_relative, run_paths, setup_logging, train_seconds, write_result

from summon import load
from summon.adaptive.calibration import CalibrationSpec, fit_calibration
from summon.adaptive.cascade import CascadePredictor
from summon.adaptive.cascade_stages import LocalStage
from summon.adaptive.scoring import score_all
from summon.adaptive.staged import row_lengths
from summon.adaptive.thresholds import sweep
from summon.evaluation import protocol
from summon.evaluation.adaptive import _figure, _interleaved_medians, envelope, measure_speedup
from summon.evaluation.protocol import mean, share_within
from summon.evaluation.runner import load_for
from summon.predictors.saved import read_manifest
from summon.training.loop import train
from summon.training.recipe import load_run_config

BUDGETS = (0.1, 0.2, 0.3)  # cascade cost as a fraction of the teacher's
EQUAL_COST = 0.3
DROP = 0.005


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["sst2", "ag_news"], required=True)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--teacher", default=None, help="a trained teacher predictor (default: trained here)")
    p.add_argument("--early-exit", default=None, help="an exits model on the same teacher (two-stage), to compare")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--students", default="ngram,truncated_1", help="which students to train (comma-separated)")
    p.add_argument("--eval-limit", type=int, default=None, help="random subset of N evaluation rows (default all)")
    p.add_argument("--halvings", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--override", action="append", default=[], help="extra key=value for every training run")
    return p.parse_args()


# --- training -------------------------------------------------------------------------------------

STUDENT_MODELS = {
    "ngram": [],  # the recipe's bag of n-grams
    "truncated_1": ["model={kind: truncated, first: 1, pooling: mean, max_length: 96}", "train.lr=1.0e-4",
                    "train.batch_size=32", "train.epochs=1", "train.weight_decay=0.01", "train.warmup_ratio=0.06"],
}
for _k in (2, 3):
    STUDENT_MODELS[f"truncated_{_k}"] = [m.replace("first: 1", f"first: {_k}") for m in STUDENT_MODELS["truncated_1"]]
CONTINUING = {f"continue_{k}": k for k in (1, 2, 3)}  # the teacher's first k layers, frozen, + a distilled head
CONTINUE_TRAINING = "kd"  # the one training of a continuing student: KD from the teacher's answer, as "kd" below
TRAININGS = {
    "kd": ["method=kd", "method_args={temperature: 2.0, alpha: 0.5}"],
    "easy_selective": ["method_args.variant=selective"],
    "easy_defer": ["method_args.variant=defer", "model.defer_output=true"],
}


def base_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    out = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", f"train.seed={args.seed}",
           "train.progress=false", "train.eval_every=1000000"]
    if args.train_limit:
        out += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    return out + args.override


def train_all(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, dict[str, tuple[Path, float]]]]:
    base = base_overrides(args, work)
    teacher = Path(args.teacher) if args.teacher else None
    if teacher is None:
        train(load_run_config(f"{args.dataset}_finetune", [*base, f"output_dir={work / 'teacher'}"]))
        teacher = work / "teacher" / "model"
    students: dict[str, dict[str, tuple[Path, float]]] = {}
    for student in args.students.split(","):
        if student in CONTINUING:
            out = work / student / CONTINUE_TRAINING
            train(load_run_config(f"{args.dataset}_early_exit_two_stage",
                                  [*base, *continuing_overrides(teacher, CONTINUING[student]), f"output_dir={out}"]))
            students[student] = {CONTINUE_TRAINING: (out / "model", train_seconds(out))}
            continue
        if student not in STUDENT_MODELS:
            known = ", ".join([*STUDENT_MODELS, *CONTINUING])
            raise ValueError(f"--students: unknown student {student!r}; choose from {known}")
        model_args = STUDENT_MODELS[student]
        students[student] = {}
        for training, method_args in TRAININGS.items():
            out = work / student / training
            train(load_run_config(f"{args.dataset}_easy_kd", [*base, f"teacher={teacher}", f"output_dir={out}",
                                                              *model_args, *method_args]))
            students[student][training] = (out / "model", train_seconds(out))
    return teacher, students


def continuing_overrides(teacher: Path, k: int) -> list[str]:
    """Exits after layer k and the teacher's last layer on a frozen copy of the teacher; only exit k trains,
    learning from the last exit (the teacher's own answer) as the ``kd`` students learn from the teacher."""
    layers = read_manifest(teacher)["architecture"]["hf_config"]["num_hidden_layers"]
    if not 1 <= k < layers:
        raise ValueError(f"continue_{k}: the teacher has {layers} layers; k must be in 1..{layers - 1}")
    return [f"teacher={teacher}", f"model.exits=[{k}, {layers}]", "model.freeze=[backbone, heads.1]",
            "method_args={distill_last: 0.5, temperature: 2.0}"]


# --- evaluation -----------------------------------------------------------------------------------


def oracle_accuracy(student_ok: np.ndarray, teacher_ok: np.ndarray, rate: float) -> float:
    """Defer exactly the student's mistakes the teacher gets right, up to a deferral ``rate``."""
    gain = float(np.mean(~student_ok & teacher_ok))
    return float(student_ok.mean()) + min(rate, gain)


def evaluate_split(raws, gold, costs, rows, scorer: str, lengths: np.ndarray | None = None) -> dict:
    """summon's one calibration on this halving's calibration rows, reported on its report rows."""
    fit, thr, rep = rows
    k = raws[-1].shape[1]
    calibration = fit_calibration(raws, gold, costs, CalibrationSpec(policy=scorer, rule="max_drop", value=DROP),
                                  num_labels=k, rows=(fit, thr), lengths=lengths)
    table, fractions = calibration.table, calibration.fractions()
    sc_rep, pr_rep, _ = score_all([r[rep] for r in raws], calibration.readout(k),
                                  None if lengths is None else lengths[rep])
    full = float((pr_rep[:, -1] == gold[rep]).mean())

    def at(threshold: float):
        return sweep(sc_rep, pr_rep, np.asarray(fractions), gold[rep], np.array([threshold]))[0]

    drop_point = at(table.max_drop(DROP, "reference").threshold)
    out = {"teacher_accuracy": full, "student_accuracy": float((pr_rep[:, 0] == gold[rep]).mean()),
           "at_drop": {"cost": drop_point.cost, "accuracy": drop_point.accuracy, "drop": full - drop_point.accuracy}}
    student_ok, teacher_ok = pr_rep[:, 0] == gold[rep], pr_rep[:, 1] == gold[rep]
    rep_curve = envelope(sweep(sc_rep, pr_rep, np.asarray(fractions), gold[rep]))
    rates = np.linspace(0.0, 1.0, 41)
    out["curve"] = [[float(c), float(a)] for c, a in rep_curve]
    out["oracle_curve"] = [[float(fractions[0] + r * (fractions[1] - fractions[0])),
                            oracle_accuracy(student_ok, teacher_ok, float(r))] for r in rates]
    out["budgets"] = {}
    for b in BUDGETS:
        try:
            point = at(table.budget(b).threshold)
        except ValueError:
            continue
        rate = max(0.0, (b - fractions[0]) / (fractions[1] - fractions[0]))
        best_on_report = max((a for c, a in rep_curve if c <= b + 1e-12), default=None)
        out["budgets"][str(b)] = {"cost": point.cost, "accuracy": point.accuracy,
                                  "oracle_accuracy": oracle_accuracy(student_ok, teacher_ok, rate),
                                  "policy_envelope_accuracy": best_on_report}
    return out


def summarise(splits: list[dict]) -> dict:
    out = {"teacher_accuracy": mean(s["teacher_accuracy"] for s in splits),
           "student_accuracy": mean(s["student_accuracy"] for s in splits),
           "cost_at_drop_0_5pt": mean(s["at_drop"]["cost"] for s in splits),
           "drop_there": mean(s["at_drop"]["drop"] for s in splits),
           "share_within_0_5pt": share_within((s["at_drop"]["drop"] for s in splits), DROP), "budgets": {},
           "first_halving": {"curve": splits[0]["curve"], "oracle_curve": splits[0]["oracle_curve"]}}
    for b in BUDGETS:
        rows = [s["budgets"][str(b)] for s in splits if str(b) in s["budgets"]]
        if rows:
            acc, oracle = mean(r["accuracy"] for r in rows), mean(r["oracle_accuracy"] for r in rows)
            out["budgets"][str(b)] = {"cost": mean(r["cost"] for r in rows), "accuracy": acc,
                                      "oracle_accuracy": oracle, "oracle_gap": oracle - acc}
    return out


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out_json = run_paths(args.work, args.out, f"cascade_{args.dataset}")
    teacher_dir, students = train_all(args, work)
    teacher = load(teacher_dir)
    limit = [f"data.eval.limit={args.eval_limit}", f"data.eval.shuffle_seed={args.seed}"] if args.eval_limit else []
    cfg = load_run_config(f"{args.dataset}_easy_kd", [f"data.data_dir={args.data_dir}", *limit])
    data = load_for(teacher, cfg.data.eval, args.data_dir)
    gold = np.array([ex["label"] for ex in data.examples])
    teacher_stage = LocalStage("teacher", teacher, str(teacher_dir))
    teacher_raw = teacher_stage.logits(data.examples, 128)
    results, costs_of, continuing_check = {}, {}, {}
    for student, trainings in students.items():
        for training, (model_dir, seconds) in trainings.items():
            predictor = cascade_of(student, model_dir, teacher_stage, teacher)
            costs = predictor.measure_costs(data.examples, latency=False)
            fractions = costs.fractions("flops")
            if student in CONTINUING:  # its last exit is the teacher: same answers, checked here
                raws = predictor.stage_logits(data.examples, batch_size=128)
                continuing_check[student] = float(np.abs(raws[-1] - teacher_raw).max())
            else:
                raws = [predictor.stages[0].logits(data.examples, 256), teacher_raw]
            lengths = row_lengths(predictor, data.examples)
            scorers = ["max_prob", "gate", "learned"] + (["defer"] if training == "easy_defer" else [])
            for scorer in scorers:
                splits = [evaluate_split(raws, gold, costs, split, scorer, lengths)
                          for split in protocol.halvings(len(gold), args.halvings, args.seed)]
                results[f"{student}/{training}/{scorer}"] = {**summarise(splits), "train_seconds": seconds,
                                                             "stage_cost_fractions": fractions}
            costs_of[student] = fractions
            print(student, training, {k: v["cost_at_drop_0_5pt"] for k, v in results.items()
                                      if k.startswith(f"{student}/{training}")}, flush=True)
    result = summary_result(args, teacher_dir, data, results, costs_of)
    result["continuing_last_exit_max_abs_diff_vs_teacher"] = continuing_check
    result.update(training_record(students))
    if args.early_exit:
        result["early_exit_same_teacher"] = early_exit_at_budgets(Path(args.early_exit), data, gold, args)
    name = result["best_cascade"]
    student, training, scorer = name.split("/")
    chosen = cascade_of(student, students[student][training][0], teacher_stage, teacher)
    result["measured_time"], speed = measured_time(chosen, name, teacher_stage, data, gold, scorer, args)
    result["speedup_realized_over_theoretical"] = {
        f"bs{bs}": row["realised_over_theoretical_with_tokenisation"] for bs, row in speed.items()}
    result["speedup_realized_over_theoretical_model_only"] = {
        f"bs{bs}": row["realised_over_theoretical"] for bs, row in speed.items()}
    result["speedup"] = speed
    result["plot"] = repo_relative(plot_cascades(result, out_json.with_suffix(".png"), args.dataset))
    write_result(out_json, result)


def subset(data, rows: np.ndarray):
    return type(data)(data.task, data.labels, [data.examples[i] for i in rows], data.source)


def cascade_of(student: str, model_dir: Path, teacher_stage, teacher):
    """The staged predictor of a student: the continuing cascade is the student's own two-exit model (its
    last exit the teacher); any other student goes in front of the teacher as a separate stage."""
    if student in CONTINUING:
        return load(model_dir)
    return CascadePredictor([LocalStage(student, load(model_dir), str(model_dir)), teacher_stage],
                            teacher.task, teacher.labels)


def training_record(students: dict) -> dict:
    """Training rows, epochs and minutes of every student run (from each run's saved manifest)."""
    runs = {f"{s}/{t}": path for s, trainings in students.items() for t, (path, _) in trainings.items()}
    rows = {name: read_manifest(path)["training"]["train_examples"] for name, path in runs.items()}
    return {"train_rows": max(rows.values()), "train_rows_per_student": rows,
            "epochs": {name: read_manifest(path)["training"]["config"]["train"]["epochs"]
                       for name, path in runs.items()},
            "train_minutes": {name: seconds / 60.0 for s, trainings in students.items()
                              for t, (_, seconds) in trainings.items() for name in [f"{s}/{t}"]}}


def measured_time(cascade, name: str, teacher_stage, data, gold: np.ndarray, scorer: str,
                  args) -> tuple[dict, dict]:
    """Wall-clock cost of the chosen cascade: calibrated on the first halving's calibration half (max drop
    0.5 point against the teacher), run stage-major at batch 32 on the report half, timed alternately with
    the teacher alone on the same rows (median of 3; tokenisation included for both). Then the realised
    speed-up over the FLOPs-promised one at batch 1, 32 and 128 on the same rows (``measure_speedup``, with
    and without tokenisation; the reference is the last stage alone, i.e. the teacher)."""
    first = protocol.first_halving(len(gold), args.seed)
    rep = first.report
    cascade.calibrate(subset(data, first.calibration),
                      CalibrationSpec(policy=scorer, rule="max_drop", value=DROP, seed=args.seed), latency=True)
    report = subset(data, rep)
    threshold = cascade.threshold_for()
    run = cascade.run_examples(report.examples, threshold, batch_size=32)  # also the warm-up
    teacher_stage.logits(report.examples, 32)
    t_cascade, t_teacher = _interleaved_medians(
        lambda: cascade.run_examples(report.examples, threshold, batch_size=32),
        lambda: teacher_stage.logits(report.examples, 32), 3)
    costs = cascade.calibration.costs
    flops = np.asarray(costs.flops)
    ms = np.asarray(costs.fractions("ms")) if costs.ms else None
    answered = np.bincount(run.stage, minlength=2)
    speed = measure_speedup(cascade, cascade.inputs(report.examples), threshold, repeats=3,
                            examples=report.examples)
    return {"cascade": f"{name} (student -> teacher), scorer {scorer}", "rows": len(rep), "batch_size": 32,
            "deferral_rate": float(answered[1] / len(rep)),
            "accuracy": float((run.logits.argmax(1) == gold[rep]).mean()),
            "teacher_accuracy_same_rows": float((teacher_stage.logits(report.examples, 32).argmax(1)
                                                 == gold[rep]).mean()),
            "flops_fraction": float(np.mean(flops[run.stage]) / costs.flops_full),
            "stage_ms_fractions": None if ms is None else ms.tolist(),
            "cascade_seconds": t_cascade, "teacher_seconds": t_teacher,
            "time_fraction": t_cascade / t_teacher}, speed


def plot_cascades(result: dict, path: Path, dataset: str) -> Path:
    """Accuracy vs FLOPs (first halving's report half) for each student's KD and best easy-KD cascade, the
    oracle deferral curve of the chosen cascade, the teacher and students alone, and early exit."""
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    cascades = result["cascades"]
    for head in result["easy_kd_minus_standard_kd_at_equal_cost"].values():
        for key, style in ((head["kd"], "--"), (head["easy"], "-")):
            curve = np.asarray(cascades[key]["first_halving"]["curve"])
            ax.step(curve[:, 0], 100 * curve[:, 1], style, where="post", label=f"cascade {key}")
            ax.plot(curve[0, 0], 100 * cascades[key]["student_accuracy"], "o", ms=4, color="grey")
    for name, r in cascades.items():  # the continuing cascades (one training each), on the max-prob score
        if name.split("/")[0] in CONTINUING and name.endswith("/max_prob"):
            curve = np.asarray(r["first_halving"]["curve"])
            ax.step(curve[:, 0], 100 * curve[:, 1], "-.", where="post", label=f"continuing {name}")
    best = cascades[result["best_cascade"]]
    oracle = np.asarray(best["first_halving"]["oracle_curve"])
    ax.plot(oracle[:, 0], 100 * oracle[:, 1], ":", color="black", label=f"oracle deferral ({result['best_cascade']})")
    ax.plot([1.0], [100 * result["teacher_accuracy"]], "*", ms=12, color="black", label="teacher alone")
    early = result.get("early_exit_same_teacher")
    if early:
        pts = sorted((float(b), a) for b, a in early["accuracy_at_budget"].items() if a is not None)
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "s-", ms=5, label="early exit (same teacher)")
    ax.set_xscale("log")
    ax.set_xlabel("cost per example / teacher's (FLOPs, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{dataset}: cascades vs teacher, students, early exit (grey dots: student alone)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def early_exit_at_budgets(model_dir: Path, data, gold: np.ndarray, args) -> dict:
    """The early-exit predictor on the same halvings and budgets (its costs are fractions of its own full model)."""
    exits = load(model_dir)
    raws = exits.stage_logits(data.examples)
    costs = exits.measure_costs(data.examples, latency=False)
    fractions = costs.fractions("flops")
    rows_by_budget: dict[str, list[float]] = {str(b): [] for b in BUDGETS}
    for fit, thr, rep in protocol.halvings(len(gold), args.halvings, args.seed):
        calibration = fit_calibration(raws, gold, costs, CalibrationSpec(), num_labels=raws[0].shape[1], rows=(fit, thr))
        scores, preds, _ = score_all([r[rep] for r in raws], calibration.readout(raws[0].shape[1]))
        for b in BUDGETS:
            try:
                t = calibration.table.budget(b).threshold
            except ValueError:
                continue
            point = sweep(scores, preds, np.asarray(fractions), gold[rep], np.array([t]))[0]
            rows_by_budget[str(b)].append(point.accuracy)
    return {"path": str(model_dir), "accuracy_at_budget": {b: mean(v) for b, v in rows_by_budget.items()},
            "stage_cost_fractions": fractions}


def best(results: dict, student: str, trainings: tuple[str, ...], key) -> tuple[str, dict]:
    cands = {k: v for k, v in results.items() if k.split("/")[0] == student and k.split("/")[1] in trainings}
    name = max(cands, key=lambda k: key(cands[k]))
    return name, cands[name]


def policies(results: dict) -> dict:
    """Per deferral score: the cheapest cascade within 0.5 point of the teacher (held-out thresholds) and its cost."""
    out = {}
    for name, r in results.items():
        scorer = name.split("/")[2]
        if scorer not in out or r["cost_at_drop_0_5pt"] < out[scorer]["cost_at_drop_0_5pt"]:
            out[scorer] = {"cascade": name, "cost_at_drop_0_5pt": r["cost_at_drop_0_5pt"],
                           "drop_there_points": 100 * r["drop_there"]}
    return out


def summary_result(args, teacher_dir: Path, data, results: dict, costs_of: dict) -> dict:
    b = str(EQUAL_COST)
    head = {}
    for student in costs_of:
        if student in CONTINUING:  # trained one way only (KD): nothing to compare
            continue
        acc = lambda r: (r["budgets"].get(b) or {}).get("accuracy") or -1.0  # noqa: E731
        easy_name, easy = best(results, student, ("easy_selective", "easy_defer"), acc)
        kd_name, kd = best(results, student, ("kd",), acc)
        head[student] = {"easy": easy_name, "kd": kd_name,
                         "easy_kd_minus_standard_kd_at_equal_cost":
                             None if acc(easy) < 0 or acc(kd) < 0 else 100 * (acc(easy) - acc(kd))}
    cheapest = min(results, key=lambda k: results[k]["cost_at_drop_0_5pt"])
    chosen = results[cheapest]
    return {
        "benchmark": f"cascade_{args.dataset}", **provenance(args.seed),
        "teacher": f"all-MiniLM-L6-v2 fine-tuned ({teacher_dir}); MPNet-base not used: about 6.7x the cost per "
                   "example, which does not fit a 2-core CPU session with fine-tuning and teacher passes",
        "teacher_accuracy": chosen["teacher_accuracy"], "eval_data": data.source, "eval_rows": len(data),
        "train_subset": args.train_limit or "all", "halvings": args.halvings,
        "best_cascade": cheapest, "cost_at_drop_0_5pt": chosen["cost_at_drop_0_5pt"],
        "drop_at_that_cost_points": 100 * chosen["drop_there"],
        "equal_cost_budget": EQUAL_COST,
        "easy_kd_minus_standard_kd_at_equal_cost": head,
        "oracle_gap": {k: v["oracle_gap"] for k, v in chosen["budgets"].items()},
        "policies": policies(results),
        "student_cost_fractions": {s: c[0] for s, c in costs_of.items()},
        "cascades": results,
        "notes": "cost = FLOPs per example of every stage run (student always, teacher when deferred) over the "
                 "teacher alone; thresholds from the calibration half, reported on the other half.",
    }


if __name__ == "__main__":
    main()
