"""Foundation benchmark on SST-2: fine-tune MiniLM-L6, then distil two cheap students.

Students: (a) the teacher's first two layers, (b) a bag of word uni+bi-grams. Each is trained twice from
the same initialisation: with KD on cached teacher logits, and on gold labels alone. Every run goes
through the shipped recipes and ``summon.training.loop.train``, exactly like ``summon train``.

Usage (from the repository root):
    python benchmarks/foundation_sst2.py --data-dir ../shared/data
Runs resume: re-running the same command continues interrupted training from its checkpoints.
Writes benchmarks/results/foundation_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, provenance, setup_logging, write_result

from summon import load
from summon.data.loading import load_split
from summon.predictors.saved import read_manifest
from summon.training.loop import train
from summon.training.recipe import load_run_config
from summon.training.teacher_cache import teacher_logits

STUDENTS = {"truncated_2_layers": "sst2_kd_truncated", "bag_of_ngrams": "sst2_kd_ngram"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "sst2"), help="run folders and caches")
    p.add_argument("--train-limit", type=int, default=None, help="use a random subset of N training rows")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "foundation_sst2.json"))
    return p.parse_args()


def common_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    out = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", f"train.seed={args.seed}",
           "train.progress=false"]
    if args.train_limit:
        out += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    return out


def timed_train(recipe: str, overrides: list[str]) -> tuple[Path, float, dict]:
    cfg = load_run_config(recipe, overrides)
    start = time.perf_counter()
    model_dir = train(cfg)
    return model_dir, time.perf_counter() - start, cfg


def summary(model_dir: Path) -> dict:
    manifest = read_manifest(model_dir)
    return {"dev_accuracy": manifest["metrics"]["eval"]["accuracy"], "metrics": manifest["metrics"]["eval"],
            "flops_per_example": manifest["costs"]["flops_per_example"], "params": manifest["costs"]["params"],
            "latency": manifest["costs"].get("latency"), "path": str(model_dir)}


def main() -> None:
    args = parse_args()
    setup_logging()
    work = Path(args.work)
    base = common_overrides(args, work)
    teacher_dir, teacher_seconds, teacher_cfg = timed_train(
        "sst2_finetune", [*base, f"output_dir={work / 'teacher'}", f"train.epochs={args.teacher_epochs}"])
    teacher = {**summary(teacher_dir), "train_seconds": teacher_seconds}
    start = time.perf_counter()  # fills the cache the KD runs read; timed on its own
    train_data = load_split(teacher_cfg.data.train, data_dir=args.data_dir)
    teacher_logits(load(teacher_dir), train_data, cache_dir=work / "cache", batch_size=128)
    logits_seconds = time.perf_counter() - start
    students, epochs = [], {"teacher": args.teacher_epochs}
    for name, recipe in STUDENTS.items():
        runs = {}
        for mode, extra in (("kd", []), ("labels_only", ["method=finetune", "method_args={}"])):
            overrides = [*base, *extra, f"teacher={teacher_dir}", f"output_dir={work / name / mode}",
                         "train.eval_every=1000000"]  # evaluate once, at the end: no model selection on dev
            model_dir, seconds, cfg = timed_train(recipe, overrides)
            runs[mode] = {**summary(model_dir), "train_seconds": seconds}
            epochs[name] = cfg.train.epochs
        kd, lab = runs["kd"], runs["labels_only"]
        students.append({"name": name, "kd_dev_accuracy": kd["dev_accuracy"],
                         "labels_only_dev_accuracy": lab["dev_accuracy"],
                         "kd_minus_labels_only": kd["dev_accuracy"] - lab["dev_accuracy"],
                         "cost_fraction": kd["flops_per_example"] / teacher["flops_per_example"],
                         "kd": kd, "labels_only": lab})
    result = {"benchmark": "foundation_sst2", **provenance(args.seed),
              "train_subset": args.train_limit or len(train_data), "train_rows_total": 67349,
              "eval_split": "sst2 dev (872 sentences), evaluated once at the end of training",
              "epochs": epochs, "teacher": teacher, "teacher_logits_seconds": logits_seconds, "students": students,
              "notes": "cost_fraction = FLOPs per dev example (torch.utils.flop_counter, dynamic padding) over the "
                       "teacher's; latency is median forward time on this machine, tokenisation excluded."}
    write_result(Path(args.out), result)
    print(json.dumps({"teacher": teacher["dev_accuracy"],
                      "students": [{k: s[k] for k in ("name", "kd_dev_accuracy", "labels_only_dev_accuracy",
                                                      "cost_fraction")} for s in students]}, indent=2))


if __name__ == "__main__":
    main()
