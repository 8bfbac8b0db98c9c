"""Multi-teacher distillation with per-example teacher selection (issue 13): every weighting against every
single-teacher KD student and the labels-only student, on SST-2 or MRPC (``../shared/data``).

Teachers (a pool diverse on purpose, each trained here on the training subset, one cached pass each):
  minilm6       all-MiniLM-L6-v2 fine-tuned;
  mpnet_frozen  all-mpnet-base-v2 with its encoder frozen and a linear head trained on its mean-pooled states;
  minilm3       MiniLM's first 3 layers, fine-tuned;
  ngram         a bag of word uni- and bi-grams trained on the labels.
Students: ``minilm2`` (the first 2 layers of the pretrained MiniLM-L6, the same start for every weighting,
whichever teachers distil into it) and ``ngram`` (a fresh bag of n-grams). Per student and seed: ``labels`` (finetune), ``kd_<teacher>`` (the plain ``kd`` method, one per
teacher), and ``multi_teacher_kd`` with ``uniform``, ``confidence`` and ``reinforced`` weighting.

Accuracy is the student's on the whole dev split after its last epoch (no selection on dev: one evaluation
at the end). Epoch seconds: the training loop's own per-epoch wall clock (``metrics.jsonl``), the cached
teachers' pass excluded (it is paid once per teacher and data set).

Usage (from the repository root):
    python benchmarks/multi_teacher.py --dataset sst2 --train-limit 4000
    python benchmarks/multi_teacher.py --dataset mrpc
Resumable twice over: finished runs in benchmarks/work/multi_teacher_<dataset>/ are only loaded, and each
finished run's record is written to the results file at once, so a fresh machine (no ``benchmarks/work``)
retrains the teachers (same seeds) and skips every student already recorded there, provided the
teachers' weights hash to what the records say. Writes benchmarks/results/multi_teacher_<dataset>.json
(``complete: false`` until every run is in) and a plot of the policy's weights against teacher agreement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _common import provenance, repo_relative, run_paths, setup_logging, write_result

from summon.data.loading import load_split
from summon.data.spec import DatasetSpec
from summon.models.build import ModelConfig
from summon.predictors.predictor import load_predictor
from summon.training.config import RunConfig
from summon.training.loop import train
from summon.training.recipe import load_run_config
from summon.training.teacher_cache import teacher_logits

WEIGHTINGS = ("uniform", "confidence", "reinforced")
TEACHERS = ("minilm6", "mpnet_frozen", "minilm3", "ngram")
STUDENTS = ("minilm2", "ngram")
DATA = {"sst2": {"max_length": 64, "teacher_epochs": 2, "student_epochs": 2},
        "mrpc": {"max_length": 128, "teacher_epochs": 3, "student_epochs": 3}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATA), required=True)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training rows (default all)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--students", default=",".join(STUDENTS))
    p.add_argument("--weightings", default=",".join(("labels", *(f"kd_{t}" for t in TEACHERS), *WEIGHTINGS)))
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# --- configurations -------------------------------------------------------------------------------


def base_config(args: argparse.Namespace, work: Path) -> RunConfig:
    ds = args.dataset
    over = [f"data.data_dir={args.data_dir}", f"cache_dir={work / 'cache'}", "train.progress=false",
            "train.eval_every=1000000", f"data.train.name={ds}", f"data.eval.name={ds}"]
    if args.train_limit:
        over += [f"data.train.limit={args.train_limit}", "data.train.shuffle_seed=42"]
    return load_run_config("sst2_finetune", over)


def teacher_config(base: RunConfig, name: str, args: argparse.Namespace, work: Path) -> RunConfig:
    length, epochs = DATA[args.dataset]["max_length"], DATA[args.dataset]["teacher_epochs"]
    train_cfg = dataclasses.replace(base.train, epochs=epochs, seed=42)
    if name == "minilm6":
        model, lr = ModelConfig(kind="pretrained", name="minilm-l6", pooling="mean", max_length=length), 5e-5
    elif name == "minilm3":
        model, lr = ModelConfig(kind="truncated", name="minilm-l6", first=3, pooling="mean", max_length=length), 1e-4
    elif name == "mpnet_frozen":
        model = ModelConfig(kind="pretrained", name="mpnet-base", pooling="mean", max_length=length,
                            freeze=["backbone"])
        lr = 2e-3
    elif name == "ngram":
        model, lr = ngram_model(), 5e-3
        train_cfg = dataclasses.replace(train_cfg, batch_size=64, weight_decay=0.0, warmup_ratio=0.0)
    else:
        raise ValueError(f"unknown teacher {name!r}")
    return dataclasses.replace(base, method="finetune", method_args={}, model=model,
                               train=dataclasses.replace(train_cfg, lr=lr), output_dir=str(work / "teachers" / name))


def ngram_model() -> ModelConfig:
    return ModelConfig(kind="ngram", num_buckets=262144, embed_dim=64, ngram_max=2, dropout=0.0)


def student_config(base: RunConfig, student: str, weighting: str, seed: int, teachers: dict[str, Path],
                   args: argparse.Namespace, work: Path) -> RunConfig:
    length, epochs = DATA[args.dataset]["max_length"], DATA[args.dataset]["student_epochs"]
    if student == "minilm2":
        model = ModelConfig(kind="truncated", name="minilm-l6", first=2, pooling="mean", max_length=length)
        train_cfg = dataclasses.replace(base.train, epochs=epochs, lr=1e-4, seed=seed)
    else:
        model = ngram_model()
        train_cfg = dataclasses.replace(base.train, epochs=epochs, lr=5e-3, batch_size=64, weight_decay=0.0,
                                        warmup_ratio=0.0, seed=seed)
    out = str(work / "students" / student / weighting / f"seed{seed}")
    cfg = dataclasses.replace(base, model=model, train=train_cfg, output_dir=out, teacher=None)
    if weighting == "labels":
        cfg = dataclasses.replace(cfg, method="finetune", method_args={})
    elif weighting.startswith("kd_"):
        cfg = dataclasses.replace(cfg, method="kd", method_args={"temperature": 2.0, "alpha": 0.5},
                                  teacher=str(teachers[weighting[3:]]))
    else:  # the policy starts after a quarter of the batches (warm-up with every teacher at 1/K)
        steps = math.ceil(train_rows(args) / train_cfg.batch_size) * train_cfg.epochs
        cfg = dataclasses.replace(cfg, method="multi_teacher_kd", teachers=[str(teachers[t]) for t in TEACHERS],
                                  method_args={"weighting": weighting, "temperature": 2.0, "alpha": 0.5,
                                               "warmup_steps": steps // 4})
    return cfg


def train_rows(args: argparse.Namespace) -> int:
    full = len(load_split(DatasetSpec(name=args.dataset, split="train"), data_dir=args.data_dir))
    return min(full, args.train_limit) if args.train_limit else full


# --- records ----------------------------------------------------------------------------------------


def log_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def finished(run_dir: Path) -> bool:
    return (run_dir / "model" / "manifest.json").is_file() and any(r.get("event") == "done" for r in log_records(run_dir))


def run_record(run_dir: Path) -> dict[str, Any]:
    """Accuracy (the last evaluation), FLOPs and per-epoch seconds of a finished run."""
    records = log_records(run_dir)
    evals = [r["eval"] for r in records if "eval" in r]
    done = next(r for r in records if r.get("event") == "done")
    epochs = [r["seconds"] for r in records if r.get("event") == "epoch" and not r.get("partial")]
    parts = {k: statistics.mean(e.get(k, 0.0) for e in epochs) for k in sorted({k for e in epochs for k in e})}
    return {"accuracy": evals[-1]["accuracy"], "n_eval": evals[-1].get("n"),
            "flops_per_example": done["costs"]["flops_per_example"], "params": done["costs"]["params"],
            "epoch_seconds": parts.get("train"), "epoch_seconds_parts": parts}


def trained(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.output_dir)
    return run_dir / "model" if finished(run_dir) else train(cfg)


def fingerprint(model_dir: Path) -> str:
    return load_predictor(model_dir).fingerprint


# --- the policy's weights ------------------------------------------------------------------------


def weight_rows(run_dir: Path) -> list[dict]:
    """The last epoch's per-example weights of a multi-teacher run (``teacher_weights/epoch_<e>.jsonl``)."""
    files = sorted((run_dir / "teacher_weights").glob("epoch_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(teacher_rows: list[list[np.ndarray]], gold: np.ndarray) -> np.ndarray:
    """Per training row, how many teachers answer the gold label (0..K): the row's difficulty."""
    right = np.stack([np.stack(rows).argmax(1) == gold for rows in teacher_rows])  # [K, N]
    return right.sum(0)


def weights_by_agreement(rows: list[dict], agree: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean weight per teacher at each agreement level (how many teachers are right)."""
    out: dict[str, dict[str, float]] = {}
    for level in range(len(TEACHERS) + 1):
        picked = [r["weights"] for r in rows if agree[r["row"]] == level]
        if picked:
            mean = np.mean(np.asarray(picked, dtype=np.float64), axis=0)
            out[str(level)] = {t: float(w) for t, w in zip(TEACHERS, mean, strict=True)} | {"rows": len(picked)}
    return out


def plot_weights(by_student: dict[str, dict], path: Path, title: str) -> None:
    students = [s for s in by_student if by_student[s]]
    if not students:
        return
    fig, axes = plt.subplots(1, len(students), figsize=(5.5 * len(students), 4), squeeze=False)
    for ax, student in zip(axes[0], students, strict=True):
        levels = sorted(by_student[student], key=int)
        for teacher in TEACHERS:
            ax.plot([int(x) for x in levels], [by_student[student][x][teacher] for x in levels], "o-", label=teacher)
        ax.set_xlabel(f"teachers right on the row (of {len(TEACHERS)})")
        ax.set_ylabel("mean policy weight")
        ax.set_title(f"{title}: student {student}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the result -----------------------------------------------------------------------------------------


def mean_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Each timed part (train, backward, reward, ...) averaged over the runs that recorded it."""
    keys = sorted({k for p in parts for k in p})
    return {k: statistics.mean(p[k] for p in parts if k in p) for k in keys}


def summary(records: dict[str, dict], students: list[str], weightings: list[str], seeds: list[int]) -> dict[str, Any]:
    table: dict[str, dict] = {}
    for student in students:
        table[student] = {}
        for weighting in weightings:
            runs = [records.get(f"{student}/{weighting}/seed{s}") for s in seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            acc = [100 * r["accuracy"] for r in runs]
            secs = [r["epoch_seconds"] for r in runs if r.get("epoch_seconds") is not None]
            table[student][weighting] = {
                "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "seeds": [int(k.rsplit("seed", 1)[1]) for k in records if k.startswith(f"{student}/{weighting}/")],
                "epoch_seconds": statistics.mean(secs) if secs else None,
                "epoch_seconds_parts": mean_parts([r.get("epoch_seconds_parts") or {} for r in runs])}
    margins = {"reinforced_minus_uniform": {}, "reinforced_minus_best_single": {}, "best_single": {}}
    for student, rows in table.items():
        singles = {w: v["accuracy_mean"] for w, v in rows.items() if w.startswith("kd_")}
        if "reinforced" in rows and "uniform" in rows:
            margins["reinforced_minus_uniform"][student] = rows["reinforced"]["accuracy_mean"] - rows["uniform"]["accuracy_mean"]
        if "reinforced" in rows and singles:
            best = max(singles, key=singles.get)
            margins["best_single"][student] = best
            margins["reinforced_minus_best_single"][student] = rows["reinforced"]["accuracy_mean"] - singles[best]
    return {"students": table, **margins}


def main() -> None:
    args = parse_args()
    setup_logging()
    work, out_json = run_paths(args.work, args.out, f"multi_teacher_{args.dataset}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    students = [s for s in args.students.split(",") if s]
    weightings = [w for w in args.weightings.split(",") if w]
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    base = base_config(args, work)
    teacher_dirs, teacher_info = {}, {}
    for name in TEACHERS:
        cfg = teacher_config(base, name, args, work)
        teacher_dirs[name] = trained(cfg)
        teacher_info[name] = {"name": name, **run_record(Path(cfg.output_dir)),
                              "fingerprint": fingerprint(teacher_dirs[name])}
    same_teachers = all(previous.get("teachers", {}).get(t, {}).get("fingerprint") == teacher_info[t]["fingerprint"]
                        for t in TEACHERS)
    records: dict[str, dict] = dict(previous.get("runs", {})) if same_teachers else {}

    def write(complete: bool, extra: dict | None = None) -> None:
        epochs = {"teachers": DATA[args.dataset]["teacher_epochs"], "students": DATA[args.dataset]["student_epochs"]}
        write_result(out_json, {"benchmark": "multi_teacher", **provenance(42), "dataset": args.dataset,
                                "train_subset": args.train_limit or "all", "epochs": epochs, "complete": complete,
                                "teachers": teacher_info, "runs": records,
                                **summary(records, students, weightings, seeds), **(extra or {})})

    for seed in seeds:
        for student in students:
            for weighting in weightings:
                key = f"{student}/{weighting}/seed{seed}"
                cfg = student_config(base, student, weighting, seed, teacher_dirs, args, work)
                if key in records and not finished(Path(cfg.output_dir)):
                    continue  # recorded by a run on another machine: kept as it was
                trained(cfg)  # a finished run is only loaded: its record is read again from its log
                records[key] = run_record(Path(cfg.output_dir))
                if weighting in WEIGHTINGS:
                    rows = weight_rows(Path(cfg.output_dir))
                    if rows:
                        records[key]["mean_weight_per_teacher"] = {
                            t: float(np.mean([r["weights"][k] for r in rows])) for k, t in enumerate(TEACHERS)}
                print(key, json.dumps(records[key]), flush=True)
                write(False)
    # how the policy's weights move with difficulty (the last seed's reinforced runs)
    train_data = load_split(base.data.train, data_dir=base.data.data_dir)
    gold = np.array([ex["label"] for ex in train_data.examples])
    teacher_rows = [teacher_logits(load_predictor(teacher_dirs[t]), train_data, cache_dir=base.cache_dir) for t in TEACHERS]
    agree = agreement(teacher_rows, gold)
    by_student = {s: weights_by_agreement(weight_rows(work / "students" / s / "reinforced" / f"seed{seeds[-1]}"), agree)
                  for s in students if "reinforced" in weightings}
    plot = out_json.with_suffix(".png")
    plot_weights(by_student, plot, args.dataset)
    write(True, {"weights_by_agreement": by_student, "mean_weight_per_teacher": mean_weights(records, students, seeds),
                 "plot": repo_relative(plot)})


def mean_weights(records: dict[str, dict], students: list[str], seeds: list[int]) -> dict[str, dict[str, float]]:
    """Per student, each teacher's policy weight averaged over rows and seeds (reinforced runs)."""
    out = {}
    for student in students:
        runs = [records.get(f"{student}/reinforced/seed{s}", {}).get("mean_weight_per_teacher") for s in seeds]
        runs = [r for r in runs if r]
        if runs:
            out[student] = {t: statistics.mean(r[t] for r in runs) for t in TEACHERS}
    return out


if __name__ == "__main__":
    main()
