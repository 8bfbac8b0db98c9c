"""Sub-structured KD benchmark (Lin et al. 2022, *Efficient Sub-structured Knowledge Distillation*) on CoNLL-2003.

A MiniLM-L6 + CRF teacher is fine-tuned on the task (NER or chunking), then a student made of the teacher's
first 2 layers + a new CRF is trained five ways from the same initialisation, on the same batches (same
seed), through the shipped recipes and the one training loop:
  substructure                 (1 - a) NLL + a MSE of sub-structure scores (the paper; a = 0.9);
  substructure_emissions_only  the same on emissions only (the released script's default);
  marginal_kl                  (1 - a) NLL + a KL of forward-backward marginals (structural KD baseline);
  topk                         NLL of the teacher's 3 best Viterbi paths, weighted 1, 0.1, 0.1;
  gold_only                    CRF NLL on gold tags (crf_finetune).
The teacher runs online in every KD step (frozen, no grad), as in the paper's code, so each epoch's time
splits into teacher forward, student forward (with the loss) and backward (with the optimizer step), read
from the loop's per-epoch records in metrics.jsonl. Reported: entity-level span F1 (seqeval) and token
accuracy on the test split, epoch seconds and their parts, and each method's epoch time over marginal_kl's
(the paper claims about 0.5 for substructure). Models are evaluated once, at the end of training.

Usage (from the repository root; about 20 minutes per task on 2 free CPU cores, estimated from a few
timed steps: the teacher step on 32 sentences takes ~2-4.5 s, a student step ~1-3.3 s):
    python benchmarks/structured_kd.py --task ner --train-limit 2000 --epochs 2
    python benchmarks/structured_kd.py --task chunking --train-limit 2000 --epochs 2
Smoke test (tiny model, a few sentences):
    python benchmarks/structured_kd.py --task ner --teacher-model tiny-bert --train-limit 32 --test-limit 16 \\
        --dev-limit 16 --epochs 1 --override train.batch_size=8 --work /tmp/skd --out /tmp/skd/result.json
Training resumes if interrupted. Writes benchmarks/results/structured_kd_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, provenance, run_paths, setup_logging, write_result

from summon import load
from summon.evaluate.runner import load_for
from summon.inference import predict_logits
from summon.measure.task import score
from summon.recipe import load_run_config
from summon.train.loop import train

METHODS = ("substructure", "substructure_emissions_only", "marginal_kl", "topk", "gold_only")
PARTS = ("teacher_forward", "student_forward", "kd", "gold_nll", "backward")
RECIPES = {"ner": ("conll2003_crf_teacher", "conll2003_substructure_kd"),
           "chunking": ("conll2003_chunking_crf_teacher", "conll2003_chunking_substructure_kd")}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(RECIPES), required=True)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training sentences")
    p.add_argument("--epochs", type=int, default=2, help="epochs for every student")
    p.add_argument("--teacher-epochs", type=int, default=None, help="epochs for the teacher (default: --epochs)")
    p.add_argument("--dev-limit", type=int, default=500, help="dev sentences for the end-of-training evaluation")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sentences (default: all)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--teacher-model", default="minilm-l6", help="the teacher's encoder (model.name)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=None, help="run folders (default benchmarks/work/structured_kd_<task>)")
    p.add_argument("--out", default=None, help="default benchmarks/results/structured_kd_<task>.json")
    p.add_argument("--override", action="append", default=[], help="extra key=value for every training run "
                   "(e.g. train.batch_size=8)")
    return p.parse_args()


# --- training -------------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    base = [f"data.data_dir={args.data_dir}", f"train.seed={args.seed}", f"train.epochs={args.epochs}",
            "train.progress=false", "train.eval_every=100000000", "cost.latency=false",  # evaluate once, at the end
            f"data.eval.limit={args.dev_limit}", f"cache_dir={work / 'cache'}"]
    if args.train_limit:
        base += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    return base + args.override


def student_overrides(method: str, teacher: Path) -> list[str]:
    if method == "gold_only":
        return [f"teacher={teacher}", "method=crf_finetune", "method_args={}"]
    return [f"teacher={teacher}", f"method_args.variant={method}"]


def train_all(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Train the teacher, then each student; returns run folders (each holds model/ and metrics.jsonl)."""
    teacher_recipe, student_recipe = RECIPES[args.task]
    base = base_overrides(args, work)
    runs = {"teacher": work / "teacher"}
    teacher_epochs = args.teacher_epochs or args.epochs
    train(load_run_config(teacher_recipe, [*base, f"model.name={args.teacher_model}", f"train.epochs={teacher_epochs}",
                                           f"output_dir={runs['teacher']}"]))
    for method in args.methods.split(","):
        if method not in METHODS:
            raise ValueError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")
        runs[method] = work / method
        overrides = [*base, *student_overrides(method, runs["teacher"] / "model"), f"output_dir={runs[method]}"]
        train(load_run_config(student_recipe, overrides))
        logging.getLogger(__name__).info("trained %s", method)
    return runs


# --- timing and evaluation --------------------------------------------------------------------------


def epoch_times(run_dir: Path) -> list[dict[str, float]]:
    """Seconds per complete epoch from the loop's records (the last record of each epoch, if resumed)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "epoch" and not record.get("partial"):
            by_epoch[record["epoch"]] = record["seconds"]
    return [by_epoch[e] for e in sorted(by_epoch)]


def timing_summary(run_dir: Path) -> tuple[float, dict[str, float], list[dict[str, float]]]:
    """Mean epoch seconds, its mean parts, and the per-epoch records."""
    epochs = epoch_times(run_dir)
    if not epochs:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no complete epoch recorded; was the run cut short?")
    total = float(np.mean([e["train"] for e in epochs]))
    parts = {p: float(np.mean([e.get(p, 0.0) for e in epochs])) for p in PARTS}
    return total, parts, epochs


def test_metrics(args: argparse.Namespace, model_dir: Path) -> dict[str, float]:
    predictor = load(model_dir)
    limit = [f"data.eval.limit={args.test_limit}"] if args.test_limit else []
    cfg = load_run_config(RECIPES[args.task][0], [f"data.data_dir={args.data_dir}", "data.eval.split=test", *limit])
    data = load_for(predictor, cfg.data.eval, args.data_dir)
    features = predictor.featurizer.encode(data.examples, data.task)
    rows = predict_logits(predictor.model, features, data.task, pad_id=predictor.featurizer.pad_id, batch_size=64)
    return score(data.task, data.labels, data.examples, rows)


def summarise(args: argparse.Namespace, runs: dict[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {key: {} for key in ("f1", "token_accuracy", "epoch_seconds", "epoch_seconds_parts",
                                               "epoch_seconds_by_epoch", "test_metrics")}
    for name, run_dir in runs.items():
        metrics = test_metrics(args, run_dir / "model")
        out["f1"][name], out["token_accuracy"][name] = metrics["f1"], metrics["token_accuracy"]
        out["test_metrics"][name] = metrics
        total, parts, epochs = timing_summary(run_dir)
        out["epoch_seconds"][name], out["epoch_seconds_parts"][name] = total, parts
        out["epoch_seconds_by_epoch"][name] = epochs
        print(name, json.dumps({"f1": metrics["f1"], "epoch_seconds": round(total, 1)}), flush=True)
    marginal = out["epoch_seconds"].get("marginal_kl")
    out["epoch_time_ratio_vs_marginal"] = ({m: s / marginal for m, s in out["epoch_seconds"].items()
                                            if m != "teacher"} if marginal else {})
    kd_marginal = out["epoch_seconds_parts"].get("marginal_kl", {}).get("kd")
    out["kd_term_seconds"] = {m: parts.get("kd") for m, parts in out["epoch_seconds_parts"].items() if m != "teacher"}
    out["kd_term_ratio_vs_marginal"] = ({m: v / kd_marginal for m, v in out["kd_term_seconds"].items() if v}
                                        if kd_marginal else {})
    return out


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out_json = run_paths(args.work, args.out, f"structured_kd_{args.task}")
    runs = train_all(args, work)
    teacher_recipe, student_recipe = RECIPES[args.task]
    result = {
        "benchmark": f"structured_kd_{args.task}", **provenance(args.seed),
        "task": args.task, "teacher": f"{args.teacher_model} + CRF over words ({teacher_recipe})",
        "student": f"teacher's first 2 layers + new CRF ({student_recipe})",
        "train_subset": args.train_limit or "all", "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs or args.epochs, "dev_limit": args.dev_limit,
        "test_subset": args.test_limit or "all", "overrides": args.override,
        **summarise(args, runs),
        "notes": "f1 = entity-level span F1 (seqeval, CoNLL style) on the test split; token_accuracy per word. "
                 "epoch_seconds = mean over epochs of the loop's training time (steps, backward and optimizer; "
                 "evaluation excluded); parts: teacher forward (KD only), student forward with the loss, "
                 "backward with the optimizer step. Padding is masked in the KD averages (the released code "
                 "averages over it). The paper's own F1 is token-level (see shared/PAPERS.md section 3).",
    }
    write_result(out_json, result)


if __name__ == "__main__":
    main()
