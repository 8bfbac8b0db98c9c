"""Progressive ensemble benchmark (B-DISTIL, reconstructed) on AG News or SST-2, teacher MiniLM-L6 fine-tuned.

Compared at every prefix k of the B-DISTIL ensemble (the paper's Figure 2, cost as a fraction of the teacher):
  bdistil                 the ensemble from ``<dataset>_progressive`` (members read the previous one's hidden layer);
  bdistil_no_composition  the same recipe with ``method_args.composition=false``;
  resched                 the same architectures trained independently (standard KD, T=2, alpha=0.5), their
                          probabilities averaged with SAMME weights ln(acc/(1-acc)) + ln(K-1) fitted on the
                          calibration half;
  no_resched              one KD student with the prefix's cumulative cost: the bag of n-grams while the prefix
                          has no transformer layer, else the teacher's first L layers, L the prefix's layer count;
  early_exit              exits on the frozen teacher (DeeBERT two-stage), thresholds chosen on the calibration
                          half for a budget equal to the prefix's cost, accuracy and cost read on the report half.

Each evaluation row set is halved at random ``--halvings`` times; calibration-half choices are reported on the
other half, and every accuracy is the mean over the report halves (``summon.evaluation.protocol``). Costs:
FLOPs counted by torch over the teacher's; milliseconds per example at batch 32 with featurization included,
for the ensemble's prefixes and the teacher alike. Training resumes if interrupted (the runs live in
benchmarks/work/progressive_<dataset>).

Usage (from the repository root):
    python benchmarks/progressive.py --dataset ag_news --train-limit 6000 --eval-limit 2000
    python benchmarks/progressive.py --dataset sst2 --train-limit 8000
Writes benchmarks/results/progressive_<dataset>.json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _common import REPO, provenance, repo_relative, run_paths, setup_logging, train_seconds, write_result

from summon import load
from summon.adaptive.calibration import CalibrationSpec, fit_calibration
from summon.adaptive.scoring import score_all
from summon.adaptive.thresholds import sweep
from summon.data.loading import load_split
from summon.evaluation import protocol
from summon.evaluation.protocol import mean
from summon.measure.device import device_of
from summon.measure.metrics import softmax
from summon.measure.profile import ModelRunner
from summon.measure.stage_costs import measure_costs
from summon.methods.kd import KDConfig
from summon.models.build import ModelConfig
from summon.predictors.predictor import load_predictor
from summon.training.config import RunConfig
from summon.training.loop import train
from summon.training.recipe import load_run_config

METHODS = ("bdistil", "bdistil_no_composition", "resched", "no_resched", "early_exit")
TEACHER_LAYERS = 6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["sst2", "ag_news"], required=True)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training rows")
    p.add_argument("--eval-limit", type=int, default=None, help="random subset of N evaluation rows (default all)")
    p.add_argument("--halvings", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=None, help="run folders (default benchmarks/work/progressive_<dataset>)")
    p.add_argument("--out", default=None, help="default benchmarks/results/progressive_<dataset>.json")
    p.add_argument("--override", action="append", default=[], help="extra key=value for every training run")
    return p.parse_args()


# --- training -------------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    base = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", f"train.seed={args.seed}",
            "train.progress=false", "train.eval_every=1000000",  # evaluate once at the end: no selection on eval
            "data.eval.limit=1000", f"data.eval.shuffle_seed={args.seed}"]
    if args.train_limit:
        base += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    return base + args.override


def finished(run_dir: Path) -> Path | None:
    """The saved model of a run that already finished (its log says done), else None.

    A finished run is only loaded, not handed to the training loop again: runs finished by an older summon
    keep a checkpoint format that the loop now refuses to resume from, and they need nothing from it.
    """
    model, log = run_dir / "model", run_dir / "metrics.jsonl"
    if not (model / "manifest.json").is_file() or not log.is_file():
        return None
    done = any(json.loads(line).get("event") == "done" for line in log.read_text(encoding="utf-8").splitlines())
    return model if done else None


def timed(cfg: RunConfig) -> tuple[Path, float]:
    """Train (or resume, or only load a finished run); the saved model and the run's training seconds."""
    path = finished(Path(cfg.output_dir)) or train(cfg)
    return path, train_seconds(cfg.output_dir) if (Path(cfg.output_dir) / "metrics.jsonl").is_file() else None


def ensemble(cfg: RunConfig) -> tuple[Path, float]:
    """Train (or resume, or only load) a progressive ensemble; the saved ensemble and its candidates' seconds."""
    out = Path(cfg.output_dir)
    done = out / "model" / "manifest.json"
    return (done.parent if done.is_file() else train(cfg)), ensemble_seconds(out)


def ensemble_seconds(run_dir: Path) -> float:
    """Training seconds of every candidate run of an ensemble (FIND-WL's rejected candidates included)."""
    return sum(train_seconds(p.parent) for p in sorted(run_dir.glob("rounds/*/*/metrics.jsonl")))


def layers_of(model: ModelConfig) -> int:
    """Transformer layers a candidate runs (0 for the bag of n-grams)."""
    if model.kind == "ngram":
        return 0
    if model.kind == "truncated" and model.first:
        return int(model.first)
    raise ValueError(f"the benchmark sizes NO-RESCHED by truncated 'first' layers; candidate kind {model.kind}")


def kd_config(prog: RunConfig, model: ModelConfig, epochs: int | None, lr: float | None, out: Path) -> RunConfig:
    """A standard-KD student of ``model`` with the ensemble's data, teacher and optimisation."""
    train_cfg = dataclasses.replace(prog.train, epochs=epochs or prog.train.epochs, lr=lr or prog.train.lr)
    return dataclasses.replace(prog, method="kd", method_args=KDConfig(temperature=2.0, alpha=0.5), model=model,
                               train=train_cfg, output_dir=str(out))


def train_all(args: argparse.Namespace, work: Path) -> dict:
    base = base_overrides(args, work)
    ds = args.dataset
    teacher_path, teacher_s = timed(load_run_config(f"{ds}_finetune", [*base, f"output_dir={work / 'teacher'}"]))
    prog_over = [*base, f"teacher={teacher_path}"]
    prog = load_run_config(f"{ds}_progressive", [*prog_over, f"output_dir={work / 'bdistil'}"])
    runs = {"teacher": (teacher_path, teacher_s), "bdistil": ensemble(prog)}
    no_comp = load_run_config(f"{ds}_progressive", [*prog_over, "method_args.composition=false",
                                                    f"output_dir={work / 'bdistil_no_composition'}"])
    runs["bdistil_no_composition"] = ensemble(no_comp)
    # KD students: every candidate (RESCHED's members) and every cumulative size (NO-RESCHED)
    taken = [r["taken"] for r in json.loads((work / "bdistil" / "rounds.json").read_text()) if r["taken"]]
    by_name = {c.name: c for c in prog.method_args.candidates}
    cumulative = np.cumsum([layers_of(by_name[n].model) for n in taken]).tolist()
    wanted = {n: (by_name[n].model, by_name[n].epochs, by_name[n].lr) for n in taken}
    for layers in cumulative:
        if 0 < layers < TEACHER_LAYERS and f"truncated_{layers}" not in wanted:
            model = ModelConfig(kind="truncated", first=layers, pooling="mean",
                                max_length=by_name[taken[-1]].model.max_length)
            wanted[f"truncated_{layers}"] = (model, None, None)
    for name, (model, epochs, lr) in wanted.items():
        runs[f"kd_{name}"] = timed(kd_config(prog, model, epochs, lr, work / f"kd_{name}"))
    runs["early_exit"] = timed(load_run_config(f"{ds}_early_exit_two_stage",
                                               [*base, f"teacher={teacher_path}", f"output_dir={work / 'early_exit'}"]))
    return {"runs": runs, "taken": taken, "cumulative_layers": cumulative}


# --- measuring ------------------------------------------------------------------------------------


def eval_data(args: argparse.Namespace):
    limit = [f"data.eval.limit={args.eval_limit}", f"data.eval.shuffle_seed={args.seed}"] if args.eval_limit else []
    cfg = load_run_config(f"{args.dataset}_progressive", [f"data.data_dir={args.data_dir}", *limit])
    return load_split(cfg.data.eval, data_dir=args.data_dir)


def plain_ms(predictor, examples: list[dict], repeats: int = 7) -> float:
    """Median milliseconds per example of ``predictor.logits`` (featurize, collate, forward) on one batch."""
    for _ in range(2):
        predictor.logits(examples, batch_size=len(examples))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.logits(examples, batch_size=len(examples))
        times.append((time.perf_counter() - start) * 1000.0 / len(examples))
    return statistics.median(times)


def plain_flops(predictor, examples: list[dict]) -> float:
    """FLOPs per example of the model on every example, in length-sorted batches of 64 (the one cost measurement)."""
    features = predictor.featurizer.encode(examples, predictor.task)
    runner = ModelRunner(predictor.model, predictor.featurizer.pad_id, device_of(predictor.model))
    return measure_costs(runner, features, latency=False, rows=len(features), batch_size=64).flops_full


def samme_weights(probs: list[np.ndarray], gold: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """SAMME weights ``ln(acc/(1−acc)) + ln(K−1)`` (at least 0) of independently trained members on ``rows``."""
    k = probs[0].shape[1]
    acc = np.array([np.clip((p[rows].argmax(1) == gold[rows]).mean(), 1e-3, 1 - 1e-3) for p in probs])
    return np.maximum(np.log(acc / (1 - acc)) + np.log(k - 1), 0.0) + 1e-9


def budget_accuracy(logits: np.ndarray, gold: np.ndarray, costs, budget: float, temp_rows, thr_rows, report_rows):
    """Early exit at a cost budget: thresholds from the calibration rows, accuracy and cost on the report rows."""
    spec = CalibrationSpec(rule="budget", value=budget)
    calibration = fit_calibration(logits, gold, costs, spec, num_labels=logits.shape[2], rows=(temp_rows, thr_rows))
    scores, preds, _ = score_all(logits[report_rows].transpose(1, 0, 2), calibration.readout(logits.shape[2]))
    at = sweep(scores, preds, np.asarray(calibration.fractions()), gold[report_rows],
               np.array([calibration.default.threshold]))[0]
    return at.accuracy, at.cost


def evaluate_all(args: argparse.Namespace, trained: dict) -> dict:
    data = eval_data(args)
    examples, gold = data.examples, np.array([ex["label"] for ex in data.examples])
    runs = trained["runs"]
    teacher = load_predictor(runs["teacher"][0])
    teacher_probs = softmax(np.stack(teacher.logits(examples, progress="teacher")).astype(np.float64))
    timing_rows = [examples[i % len(examples)] for i in range(32)]
    teacher_flops, teacher_ms = plain_flops(teacher, examples[:512]), plain_ms(teacher, timing_rows)
    ensembles = {name: load(runs[name][0], device="cpu") for name in ("bdistil", "bdistil_no_composition")}
    stage_probs = {name: softmax(np.stack(e.stage_logits(examples, progress=name), axis=1).astype(np.float64))
                   for name, e in ensembles.items()}
    costs = ensembles["bdistil"].measure_costs(examples, latency=True)
    kd_probs = {name: softmax(np.stack(load_predictor(runs[name][0]).logits(examples)).astype(np.float64))
                for name in runs if name.startswith("kd_")}
    kd_flops = {name: plain_flops(load_predictor(runs[name][0]), examples[:512]) for name in kd_probs}
    early = load(runs["early_exit"][0], device="cpu")
    ee_logits = np.stack(early.stage_logits(examples, progress="early exit"), axis=1)
    ee_costs = early.measure_costs(examples, latency=False)
    ee_costs = dataclasses.replace(ee_costs, flops_full=teacher_flops)  # fractions of the teacher, like the others
    taken, cumulative = trained["taken"], trained["cumulative_layers"]
    prefixes = len(stage_probs["bdistil"][0])
    fractions = [f / teacher_flops for f in costs.flops]
    per_split = []
    for halving in protocol.halvings(len(gold), args.halvings, args.seed):
        temp_rows, thr_rows, report = halving
        split = {"teacher": float((teacher_probs[report].argmax(1) == gold[report]).mean())}
        for name, probs in stage_probs.items():
            split[name] = [float((probs[report, k].argmax(1) == gold[report]).mean()) for k in range(prefixes)]
        members = [kd_probs[f"kd_{n}"] for n in taken]
        weights = samme_weights(members, gold, halving.calibration)
        split["resched"] = [float((sum(w * p[report] for w, p in zip(weights[:k + 1], members[:k + 1], strict=True))
                                   .argmax(1) == gold[report]).mean()) for k in range(prefixes)]
        split["no_resched"] = [float((no_resched_probs(kd_probs, teacher_probs, layers, taken)[report].argmax(1)
                                      == gold[report]).mean()) for layers in cumulative[:prefixes]]
        split["early_exit"] = [budget_accuracy(ee_logits, gold, ee_costs, f, temp_rows, thr_rows, report)
                               if f >= ee_costs.flops[0] / teacher_flops else (None, None) for f in fractions]
        per_split.append(split)
    return {"data": data, "gold": gold, "teacher_flops": teacher_flops, "teacher_ms": teacher_ms, "costs": costs,
            "fractions": fractions, "per_split": per_split, "kd_flops": kd_flops, "ensembles": ensembles,
            "taken": taken, "cumulative": cumulative}


def no_resched_probs(kd_probs: dict, teacher_probs: np.ndarray, layers: int, taken: list[str]) -> np.ndarray:
    if layers == 0:
        return kd_probs[f"kd_{taken[0]}"]
    if layers >= TEACHER_LAYERS:
        return teacher_probs
    return kd_probs[f"kd_truncated_{layers}"]


def no_resched_cost(ev: dict, layers: int) -> float:
    if layers == 0:
        return ev["kd_flops"][f"kd_{ev['taken'][0]}"] / ev["teacher_flops"]
    if layers >= TEACHER_LAYERS:
        return 1.0
    return ev["kd_flops"][f"kd_truncated_{layers}"] / ev["teacher_flops"]


# --- the result -----------------------------------------------------------------------------------


def summarise(ev: dict) -> dict:
    splits = ev["per_split"]
    prefixes = len(ev["fractions"])
    out = []
    for k in range(prefixes):
        acc = {m: mean(s[m][k] for s in splits) for m in METHODS if m != "early_exit"}
        ee = [s["early_exit"][k] for s in splits]
        acc["early_exit"] = mean(a for a, _ in ee)  # None below the first exit's cost: no budget reaches it
        ms = ev["costs"].ms[k]
        out.append({"k": k + 1, "member": ev["taken"][k], "cost_fraction": ev["fractions"][k],
                    "measured_ms_per_example": ms, "measured_fraction": ms / ev["teacher_ms"],
                    "latency_over_flops_promise": (ev["fractions"][k] / (ms / ev["teacher_ms"])),
                    "no_resched_cost_fraction": no_resched_cost(ev, ev["cumulative"][k]),
                    "early_exit_cost_fraction": mean(c for _, c in ee),
                    "accuracy": acc})
    return {"teacher_accuracy": mean(s["teacher"] for s in splits), "prefixes": out}


def monotone(prefixes: list[dict], method: str) -> bool | None:
    values = [p["accuracy"][method] for p in prefixes]
    if any(v is None for v in values):
        values = [v for v in values if v is not None]
    return all(b >= a for a, b in itertools.pairwise(values)) if values else None


def plot(result: dict, path: Path, title: str) -> None:
    prefixes = result["prefixes"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["cost_fraction"] for p in prefixes]
    for method, style in (("bdistil", "o-"), ("bdistil_no_composition", "s--"), ("resched", "^-.")):
        ax.plot(x, [100 * p["accuracy"][method] for p in prefixes], style, label=method)
    ax.plot([p["no_resched_cost_fraction"] for p in prefixes],
            [100 * p["accuracy"]["no_resched"] for p in prefixes], "d:", label="no_resched")
    ee = [p for p in prefixes if p["accuracy"]["early_exit"] is not None]
    if ee:
        ax.plot([p["early_exit_cost_fraction"] for p in ee], [100 * p["accuracy"]["early_exit"] for p in ee], "v-",
                label="early_exit (budget = prefix cost)")
    ax.axhline(100 * result["teacher_accuracy"], color="grey", lw=0.8, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example / teacher's (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rounds_of(predictor) -> list[dict]:
    return predictor.manifest["training"]["rounds"]


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out_json = run_paths(args.work, args.out, f"progressive_{args.dataset}")
    trained = train_all(args, work)
    ev = evaluate_all(args, trained)
    result = summarise(ev)
    prefixes = result["prefixes"]
    full = prefixes[-1]
    points = 100.0
    rounds = {name: rounds_of(p) for name, p in ev["ensembles"].items()}
    result = {
        "benchmark": f"progressive_{args.dataset}", **provenance(args.seed),
        "teacher": f"all-MiniLM-L6-v2 fine-tuned (recipe {args.dataset}_finetune)",
        "teacher_accuracy": result["teacher_accuracy"], "prefixes": prefixes,
        "monotone": {m: monotone(prefixes, m) for m in METHODS},
        "full_ensemble_cost_fraction": full["cost_fraction"],
        "full_ensemble_drop_points": (result["teacher_accuracy"] - full["accuracy"]["bdistil"]) * points,
        "min_margin_vs_resched": min((p["accuracy"]["bdistil"] - p["accuracy"]["resched"]) * points
                                     for p in prefixes),
        "max_gap_to_no_resched": max((p["accuracy"]["no_resched"] - p["accuracy"]["bdistil"]) * points
                                     for p in prefixes),
        "min_latency_over_flops_promise": min(p["latency_over_flops_promise"] for p in prefixes),
        "rounds": rounds["bdistil"], "rounds_no_composition": rounds["bdistil_no_composition"],
        "train_subset": args.train_limit or "all",
        "epochs": {c.name: c.epochs or 1 for c in load_run_config(f"{args.dataset}_progressive").method_args.candidates},
        "eval_data": ev["data"].source, "eval_rows": len(ev["gold"]), "halvings": args.halvings,
        "teacher_flops_per_example": ev["teacher_flops"], "teacher_ms_per_example": ev["teacher_ms"],
        "timing": {"batch_size": 32, "device": ev["costs"].device, "featurization": "included"},
        "train_seconds": {name: seconds for name, (_, seconds) in trained["runs"].items()},
        "notes": "accuracies are means over the report halves; differences (drop, margin, gap) in points. "
                 "latency_over_flops_promise = (prefix FLOPs / teacher FLOPs) / (prefix ms / teacher ms): "
                 "1 means the measured speed-up is what the FLOPs promise. B-DISTIL is a reconstruction "
                 "(shared/PAPERS.md section 2).",
    }
    png = out_json.with_suffix(".png")
    plot(result, png, f"{args.dataset}: progressive ensemble vs baselines")
    result["plot"] = repo_relative(png)
    write_result(out_json, result)


if __name__ == "__main__":
    main()
