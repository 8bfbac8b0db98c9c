"""Early exit for a tagger on CoNLL-2003 NER (issue 15, item 1): MiniLM-L6 with a token head after each of its
6 layers, trained jointly (``recipes/conll2003_ner_early_exit.yaml``, method ``early_exit``).

Protocol: the exits are trained on (a subset of) the training split. Temperatures and thresholds come from the
dev split only (``summon calibrate``'s pure function, :func:`fit_token_calibration`: 30 % of dev fits the per-exit
temperatures, the rest tabulates thresholds); everything reported is on the test split, which chose nothing.

For each sentence score (a per-word score reduced over the sentence: ``max_prob``/``margin``/``entropy`` per word;
``min``, ``mean`` or ``path`` over the words), the threshold is the cheapest one on dev whose span F1 is within
1 point of the last exit's span F1 on dev; its test span F1 and mean cost (cumulative FLOPs of the exit each
sentence left at, over the full model's) are reported as ``cost_at_drop_1pt`` (the main policy: ``max_prob/min``)
and per policy under ``policies``. The test curve of every threshold is plotted beside the oracle's.

Oracle (``oracle_cost_at_drop_1pt``): each test sentence at its earliest exit whose tags equal the last exit's
(zero drop), sentences moved there from exit 1 in order of the extra cost they need; the cheapest point of that
curve within 1 span-F1 point of the full model. No rule that reads one exit at a time can match its choices, so
it bounds what exit rules could reach.

Usage (from the repository root; training resumes if interrupted):
    python benchmarks/early_exit_conll2003.py --train-limit 5000 --epochs 2
Smoke test: --override model.name=tiny-bert --train-limit 64 --dev-limit 60 --test-limit 40 --work /tmp/eec
Writes benchmarks/results/early_exit_conll2003.json and early_exit_conll2003.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _common import REPO, provenance, repo_relative, run_paths, setup_logging, train_seconds, write_result

from summon import load
from summon.adaptive.calibration import CalibrationSpec, fit_token_calibration
from summon.adaptive.scoring import TokenReadout, token_view
from summon.adaptive.thresholds import candidate_thresholds, exit_stage
from summon.evaluation.runner import load_for
from summon.measure.metrics import span_f1
from summon.training.loop import train
from summon.training.recipe import load_run_config

RECIPE = "conll2003_ner_early_exit"
POLICIES = ("max_prob/min", "max_prob/mean", "max_prob/path", "margin/min", "entropy/min")
DROP = 1.0  # span-F1 points


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training sentences")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dev-limit", type=int, default=None, help="first N dev sentences for calibration (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sentences (default all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--override", action="append", default=[], help="extra key=value for the training run")
    return p.parse_args()


def train_tagger(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    over = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", f"train.seed={args.seed}",
            f"train.epochs={args.epochs}", "train.progress=false", "train.eval_every=1000000",
            "data.eval.limit=200", f"output_dir={work / 'early_exit'}"]
    if args.train_limit:
        over += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    cfg = load_run_config(RECIPE, [*over, *args.override])
    train(cfg)
    return Path(cfg.output_dir) / "model", train_seconds(cfg.output_dir)


def split(args: argparse.Namespace, predictor: Any, name: str, limit: int | None):
    over = [f"data.data_dir={args.data_dir}", f"data.eval.split={name}"]
    if limit:
        over.append(f"data.eval.limit={limit}")
    return load_for(predictor, load_run_config(RECIPE, over).data.eval, args.data_dir)


def f1_of(labels: list[str], gold: list[np.ndarray], tags: list[np.ndarray]) -> float:
    return 100.0 * span_f1([[labels[t] for t in g] for g in gold], [[labels[t] for t in r] for r in tags])["f1"]


def answers(view: dict[str, Any], stage: np.ndarray) -> list[np.ndarray]:
    return [view["tags"][k][i] for i, k in enumerate(stage)]


def curve(labels, gold, view, fractions, thresholds) -> list[dict[str, float]]:
    out = []
    for t in thresholds:
        stage = exit_stage(view["scores"], t)
        out.append({"threshold": float(t), "cost": float(fractions[stage].mean()),
                    "f1": f1_of(labels, gold, answers(view, stage)), "exit_counts": np.bincount(
                        stage, minlength=len(fractions)).tolist()})
    return out


def cheapest_within(points: list[dict[str, float]], full: float) -> dict[str, float] | None:
    ok = [p for p in points if p["f1"] >= full - DROP]
    return min(ok, key=lambda p: (p["cost"], -p["f1"])) if ok else None


def policy_result(labels, dev, test, raws_dev, raws_test, costs, policy: str, seed: int) -> dict[str, Any]:
    """Calibrate on dev (temperatures, then the dev threshold within 1 point), report that threshold on test."""
    word, reduce = policy.split("/")
    gold_dev = [np.asarray(ex["tags"], np.int64) for ex in dev.examples]
    gold_test = [np.asarray(ex["tags"], np.int64) for ex in test.examples]
    spec = CalibrationSpec(policy=word, token_reduce=reduce, rule="max_drop", value=0.01, seed=seed)
    calibration = fit_token_calibration(raws_dev, gold_dev, costs, spec, num_labels=len(labels), data="conll2003:dev")
    readout = TokenReadout(word, calibration.temperatures, len(labels), reduce)
    fractions = np.asarray(costs.fractions("flops"))
    view_dev = token_view(raws_dev, readout, gold_dev)
    dev_full = f1_of(labels, gold_dev, view_dev["tags"][-1])
    dev_points = curve(labels, gold_dev, view_dev, fractions, candidate_thresholds(view_dev["scores"], 120))
    chosen = cheapest_within(dev_points, dev_full)
    view_test = token_view(raws_test, readout, gold_test)
    test_full = f1_of(labels, gold_test, view_test["tags"][-1])
    at = curve(labels, gold_test, view_test, fractions, [chosen["threshold"]])[0]
    test_curve = curve(labels, gold_test, view_test, fractions, candidate_thresholds(view_test["scores"], 60))
    return {"temperatures": calibration.temperatures, "dev_full_f1": dev_full, "dev_threshold": chosen,
            "test": {"f1": at["f1"], "cost": at["cost"], "drop_points": test_full - at["f1"],
                     "exit_counts": at["exit_counts"]},
            "test_curve": test_curve, "calibration_report": calibration.report}


def oracle(labels, gold, view, fractions) -> dict[str, Any]:
    """Earliest exit agreeing with the last, sentences moved there from exit 1 by the extra cost they need."""
    preds = view["preds"]
    target = np.argmax(preds == preds[:, -1:], axis=1)
    order = np.argsort(fractions[target] - fractions[0], kind="stable")
    stage = np.zeros(len(target), np.int64)
    points = []
    marks = np.unique(np.linspace(0, len(order), 41).round().astype(int))
    done = 0
    for m in marks:
        stage[order[done:m]] = target[order[done:m]]
        done = m
        points.append({"cost": float(fractions[stage].mean()), "f1": f1_of(labels, gold, answers(view, stage))})
    return {"curve": points, "end": points[-1]}


def plot(result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, res in result["policies"].items():
        pts = sorted(res["test_curve"], key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in pts], [p["f1"] for p in pts], label=name, lw=1.2)
    o = result["oracle"]["curve"]
    ax.plot([p["cost"] for p in o], [p["f1"] for p in o], "k--", label="oracle (earliest agreeing)")
    ax.axhline(result["full_f1"] - DROP, color="grey", lw=0.8, ls=":", label="full F1 - 1 point")
    main = result["policies"]["max_prob/min"]
    ax.plot([main["cost_at_drop_1pt"]], [main["f1"]], "ro", label="dev-chosen threshold (max_prob/min)")
    ax.set_xlabel("cost (FLOPs fraction of the full tagger)")
    ax.set_ylabel("span F1 on CoNLL-2003 test")
    ax.set_ylim(max(0.0, result["full_f1"] - 15), result["full_f1"] + 2)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Early-exit NER tagger: F1 against cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out = run_paths(args.work, args.out, "early_exit_conll2003")
    model_dir, seconds = train_tagger(args, work)
    predictor = load(model_dir, device="cpu")
    dev = split(args, predictor, "dev", args.dev_limit)
    test = split(args, predictor, "test", args.test_limit)
    labels = predictor.labels
    started = time.perf_counter()
    raws_dev = predictor.stage_logits(dev.examples, progress="dev exits")
    raws_test = predictor.stage_logits(test.examples, progress="test exits")
    costs = predictor.measure_costs(dev.examples, latency=False)
    policies = {p: policy_result(labels, dev, test, raws_dev, raws_test, costs, p, args.seed) for p in POLICIES}
    readout = TokenReadout("max_prob", policies["max_prob/min"]["temperatures"], len(labels), "min")
    gold_test = [np.asarray(ex["tags"], np.int64) for ex in test.examples]
    view = token_view(raws_test, readout, gold_test)
    fractions = np.asarray(costs.fractions("flops"))
    full = f1_of(labels, gold_test, view["tags"][-1])
    orc = oracle(labels, gold_test, view, fractions)
    orc_point = cheapest_within(orc["curve"], full)
    main_policy = policies["max_prob/min"]["test"]
    result = {
        **provenance(args.seed), "dataset": "conll2003", "task": "ner",
        "model": "all-MiniLM-L6-v2, a token head after each of its 6 layers (method early_exit, uniform exit weights)",
        "train_subset": args.train_limit or "all", "epochs": args.epochs, "train_minutes": seconds / 60.0,
        "calibration_split": f"dev ({len(dev.examples)} sentences)", "report_split": f"test ({len(test.examples)} sentences)",
        "full_f1": full, "exit_f1": [f1_of(labels, gold_test, view["tags"][k]) for k in range(len(raws_test))],
        "exit_cost": fractions.tolist(),
        "cost_at_drop_1pt": main_policy["cost"], "f1_at_drop_1pt": main_policy["f1"],
        "drop_points_at_chosen": main_policy["drop_points"],
        "oracle_cost_at_drop_1pt": None if orc_point is None else orc_point["cost"],
        "oracle_agree_end": orc["end"],
        "policies": {name: {"cost_at_drop_1pt": res["test"]["cost"], "f1": res["test"]["f1"],
                            "drop_points": res["test"]["drop_points"], "dev_threshold": res["dev_threshold"],
                            "exit_counts": res["test"]["exit_counts"], "temperatures": res["temperatures"],
                            "test_curve": res["test_curve"]} for name, res in policies.items()},
        "oracle": orc, "target": "within 1 span-F1 point of the last exit at <= 0.6 of its FLOPs",
        "target_met": bool(main_policy["drop_points"] <= DROP and main_policy["cost"] <= 0.6),
        "evaluation_seconds": time.perf_counter() - started, "model_dir": repo_relative(model_dir)}
    result["plot"] = repo_relative(out.with_suffix(".png"))
    plot(result, out.with_suffix(".png"))
    write_result(out, result)
    print(f"full F1 {full:.2f}; max_prob/min at the dev threshold: F1 {main_policy['f1']:.2f} "
          f"(drop {main_policy['drop_points']:.2f} pt) at cost {main_policy['cost']:.3f}; oracle "
          f"{result['oracle_cost_at_drop_1pt']}")


if __name__ == "__main__":
    main()
