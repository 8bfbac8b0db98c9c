"""int8 stages (issue 14, item 4): fp32 full, int8 full, fp32 early exit and int8 early exit side by side.

The full model is the SST-2 teacher (plain predictor, every layer); the early-exit model is the two-stage
exits trained on that frozen teacher (both from ``benchmarks/progressive.py --dataset sst2``, or trained here
by ``serve_load.train_missing`` when missing). SST-2 dev is split at random into halves (seed): the early-exit
models (fp32, and int8 re-calibrated after quantising — thresholds never carried over) are calibrated on the
first half at ``max_drop`` (agreement with their own full depth), everything is measured on the second.

Throughput: rows per second of ``predict(texts, batch_size=32)`` over the whole report half, tokenisation
included, the median of ``--repeats`` passes after one warm pass, on torch's default CPU threads.

Usage: python benchmarks/int8.py [--max-drop 0.01]
Writes benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import serve_load
import torch
from _common import provenance, repo_relative, run_paths, setup_logging, write_result

import summon
from summon.data.spec import TaskData
from summon.predictors.saved import read_manifest


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    work = serve_load.WORK / "progressive_sst2"
    p.add_argument("--teacher", default=str(work / "teacher" / "model"))
    p.add_argument("--early-exit", default=str(work / "early_exit" / "model"))
    p.add_argument("--data-dir", default=str(serve_load.REPO.parent / "shared" / "data"))
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None)
    return p.parse_args()


def throughput(predictor, texts: list[str], repeats: int, **knob) -> float:
    predictor.predict(texts, batch_size=32, **knob)  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(texts, batch_size=32, **knob)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def measure(predictor, texts: list[str], gold: np.ndarray, labels: list[str], repeats: int, **knob) -> dict:
    predictions = predictor.predict(texts, batch_size=32, **knob)
    accuracy = float(np.mean([labels.index(p.label) == g for p, g in zip(predictions, gold, strict=True)]))
    costs = [p.cost for p in predictions if p.cost is not None]
    return {"accuracy": 100 * accuracy, "rows_per_second_bs32": throughput(predictor, texts, repeats, **knob),
            "cost_fraction": float(np.mean(costs)) if costs else 1.0}


def main() -> None:
    args = parse_args()
    setup_logging()
    _, out_json = run_paths(None, args.out, "int8")
    serve_load.train_missing(argparse.Namespace(teacher=args.teacher, early_exit=args.early_exit, student=None,
                                                data_dir=args.data_dir, seed=args.seed, train_limit=4000),
                             need=("teacher", "early_exit"))
    calib, report = serve_load.sst2_halves(args.data_dir, args.seed)
    texts = [ex["text"] for ex in report.examples]
    gold = np.array([ex["label"] for ex in report.examples])
    teacher = summon.load(args.teacher, device="cpu")
    labels = list(teacher.labels)
    exits = summon.load(args.early_exit, device="cpu")  # calibrated in memory only (save=False)
    data = TaskData(calib.task, labels, calib.examples, calib.source)
    summon.calibrate(exits, data, max_drop=args.max_drop, latency=True, save=False)
    int8_exits = summon.quantize(exits, calibrate_on=data, max_drop=args.max_drop)
    configs = {
        "fp32_full": measure(teacher, texts, gold, labels, args.repeats),
        "int8_full": measure(summon.quantize(teacher), texts, gold, labels, args.repeats),
        "fp32_early_exit": measure(exits, texts, gold, labels, args.repeats, max_drop=args.max_drop),
        "int8_early_exit": measure(int8_exits, texts, gold, labels, args.repeats, max_drop=args.max_drop),
    }
    for name, row in configs.items():
        print(name, row, flush=True)
    full, best = configs["fp32_full"], configs["int8_early_exit"]
    result = {
        "benchmark": "int8", **provenance(args.seed), "configs": configs,
        "int8_early_exit_over_fp32_full_throughput": best["rows_per_second_bs32"] / full["rows_per_second_bs32"],
        "int8_early_exit_drop_points": full["accuracy"] - best["accuracy"],
        "int8_full_over_fp32_full_throughput": configs["int8_full"]["rows_per_second_bs32"] / full["rows_per_second_bs32"],
        "fp32_early_exit_over_fp32_full_throughput":
            configs["fp32_early_exit"]["rows_per_second_bs32"] / full["rows_per_second_bs32"],
        "targets": {"int8_early_exit_3.5x_fp32_full_within_1pt":
                    best["rows_per_second_bs32"] >= 3.5 * full["rows_per_second_bs32"]
                    and full["accuracy"] - best["accuracy"] <= 1.0},
        "settings": {"knob": {"max_drop": args.max_drop, "against": "reference"}, "batch_size": 32,
                     "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
                     "teacher": repo_relative(args.teacher), "early_exit": repo_relative(args.early_exit),
                     "calibration": calib.source, "report": report.source,
                     "models": {"teacher": training_of(args.teacher), "early_exit": training_of(args.early_exit)}},
        "notes": "accuracy in percent on the report half; cost_fraction: mean FLOPs fraction of the full model "
                 "(1.0 for the plain full models); throughput includes tokenisation.",
    }
    write_result(out_json, result)


def training_of(model_dir: str) -> dict:
    """What a saved model was trained on, from its manifest."""
    training = read_manifest(Path(model_dir)).get("training", {})
    config = training.get("config", {})
    return {"train_data": training.get("train_data"), "train_rows": training.get("train_examples"),
            "epochs": config.get("train", {}).get("epochs")}


if __name__ == "__main__":
    main()
