"""Where the adaptive executor's time goes outside the layers, and how much of the FLOPs promise it keeps (issue 14,
item 3).

Model: the SST-2 early-exit model of ``benchmarks/progressive.py`` (MiniLM-L6, exits after layers 1-6 trained on a
frozen fine-tuned copy, 4,000 training rows; trained here when missing, as ``serve_load.py`` does). It is
calibrated on SST-2 dev; the timed rows are ``--rows`` IMDB test reviews (held-out movie reviews, truncated to the
model's 64 sub-tokens), in file order.

Per batch size (1, 32, 128), medians of alternating runs of the full model (every layer, the last head only) and
the adaptive executor:
  * at threshold +inf (no row leaves: the executor's pure overhead over the plain model), also with every batch
    unpacked and regrouped after every stage as before whole batches went on (``regroup_always``);
  * at ``--budget`` (the calibrated threshold for it): the realised speed-up against the length-weighted FLOPs
    promise and the length-blind one, with the featurized inputs (``model_only``) and from the texts with
    tokenisation included.
A cProfile of the adaptive run at the budget (batch 32) lists the top functions by own time.

Usage (from the repository root):
    python benchmarks/executor_overhead.py
Writes benchmarks/results/executor_overhead.json (``--out``); run it on two commits' worktrees to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gzip
import io
import json
import pstats
import time
from pathlib import Path

import numpy as np
from _common import REPO, provenance, repo_relative, run_paths, setup_logging, write_result

from summon import load
from summon.adaptive.calibration import CalibrationSpec
from summon.adaptive.early_exit import ExitRunner
from summon.data.spec import TaskData
from summon.evaluation.adaptive import _interleaved_medians, measure_speedup
from summon.evaluation.runner import load_for
from summon.training.recipe import load_run_config

WORK = REPO / "benchmarks" / "work"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--early-exit", default=str(WORK / "progressive_sst2" / "early_exit" / "model"))
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-sizes", default="1,32,128")
    p.add_argument("--bs1-rows", type=int, default=500, help="rows timed at batch size 1 (it is slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=4000)
    p.add_argument("--out", default=None)
    return p.parse_args()


def rows_of(path: Path, n: int, key: str = "text") -> list[dict]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append({"text": json.loads(line)[key]})
            if len(out) == n:
                break
    return out


def dev_data(data_dir: str, predictor) -> TaskData:
    cfg = load_run_config("sst2_early_exit", [f"data.data_dir={data_dir}"])
    return load_for(predictor, cfg.data.eval, data_dir)


@contextlib.contextmanager
def regrouping_always():
    """The executor as it was before whole batches went on as they are: without ``ExitRunner.follow`` every batch
    is unpacked and regrouped after every stage (the A/B switch of this benchmark, not an option of summon)."""
    follow = ExitRunner.follow
    del ExitRunner.follow
    try:
        yield
    finally:
        ExitRunner.follow = follow


def profile_top(fn, top: int = 15) -> list[dict]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "own_seconds": v[2], "own_share": v[2] / total,
             "calls": v[1]} for k, v in rows]


def main() -> None:
    args = parse_args()
    setup_logging()
    _, out = run_paths(None, args.out, "executor_overhead")
    if not (Path(args.early_exit) / "manifest.json").is_file():
        import serve_load
        serve_load.train_missing(argparse.Namespace(data_dir=args.data_dir, seed=42, train_limit=args.train_limit,
                                                    teacher=str(WORK / "progressive_sst2" / "teacher" / "model"),
                                                    early_exit=args.early_exit, student=""), need=("early_exit",))
    predictor = load(args.early_exit, device="cpu")
    predictor.calibrate(dev_data(args.data_dir, predictor), CalibrationSpec(rule="budget", value=args.budget))
    threshold = predictor.threshold_for(budget=args.budget)
    examples = rows_of(Path(args.data_dir) / "imdb" / "test.jsonl.gz", args.rows)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    result = {**provenance(args.seed), "model": repo_relative(args.early_exit), "rows": len(examples),
              "rows_source": "imdb test, first rows in file order", "budget": args.budget, "threshold": threshold,
              "overhead_at_inf": {}, "speedup": {}}
    for bs in sizes:
        rows = examples[: args.bs1_rows] if bs == 1 else examples
        items = predictor.inputs(rows)
        predictor.run(items, np.inf, batch_size=bs)
        t_inf, t_full = _interleaved_medians(lambda bs=bs, items=items: predictor.run(items, np.inf, batch_size=bs),
                                             lambda bs=bs, items=items: predictor.run_full(items, batch_size=bs),
                                             args.repeats)
        with regrouping_always():
            t_regroup, t_full2 = _interleaved_medians(
                lambda bs=bs, items=items: predictor.run(items, np.inf, batch_size=bs),
                lambda bs=bs, items=items: predictor.run_full(items, batch_size=bs), args.repeats)
        result["overhead_at_inf"][f"bs{bs}"] = {
            "rows": len(rows), "full_seconds": t_full, "adaptive_seconds": t_inf, "adaptive_over_full": t_inf / t_full,
            "regroup_always_seconds": t_regroup, "regroup_always_over_full": t_regroup / t_full2}
        speed = measure_speedup(predictor, items, threshold, (bs,), repeats=args.repeats, examples=rows)[str(bs)]
        result["speedup"][f"bs{bs}"] = {"rows": len(rows), **speed}
        print(f"bs{bs}: at inf {t_inf / t_full:.3f} of full; at budget {args.budget}: realised {speed['realised']:.2f}x "
              f"vs promised {speed['theoretical']:.2f}x ({speed['realised_over_theoretical']:.3f}); with tokenisation "
              f"{speed['realised_over_theoretical_with_tokenisation']:.3f}", flush=True)
    result["speedup_realized_over_theoretical"] = {
        k: v["realised_over_theoretical_with_tokenisation"] for k, v in result["speedup"].items()}
    result["speedup_realized_over_theoretical_model_only"] = {
        k: v["realised_over_theoretical"] for k, v in result["speedup"].items()}
    items = predictor.inputs(examples)
    started = time.perf_counter()
    result["profile_bs32"] = profile_top(lambda: predictor.run(items, threshold, batch_size=32))
    result["profile_seconds"] = time.perf_counter() - started
    tok_started = time.perf_counter()
    predictor.inputs(examples)
    result["tokenisation_seconds"] = time.perf_counter() - tok_started
    write_result(out, result)


if __name__ == "__main__":
    main()
