"""Sub-structured KD benchmark (Lin et al. 2022, *Efficient Sub-structured Knowledge Distillation*) on CoNLL-2003.

A CRF teacher is fine-tuned on the task (NER or chunking), then a CRF student is trained five ways from the
same initialisation, on the same batches (same seed), through the shipped recipes and the one training loop:
  substructure                 (1 - a) NLL + a MSE of sub-structure scores (the paper; a = 0.9);
  substructure_emissions_only  the same on emissions only (the released script's default);
  marginal_kl                  (1 - a) NLL + a KL of forward-backward marginals (structural KD baseline);
  topk                         NLL of the teacher's 3 best Viterbi paths, weighted 1, 0.1, 0.1;
  gold_only                    CRF NLL on gold tags (crf_finetune).
Two settings (--settings):
  ours          (default) conll2003_[chunking_]crf_teacher + conll2003_[chunking_]substructure_kd: a MiniLM-L6 +
                CRF-over-words teacher, the student its first 2 layers + a new CRF, padding masked in the KD
                averages, the teacher run online in every KD step (the recipe's teacher_outputs).
  reproduction  the "_paper" recipes, the released code's settings (Linwenye/Efficient-KD): a CRF over word
                pieces with an X label, a 3-layer student made of the first 3 layers of the *pretrained* encoder
                (not of the teacher) + a new CRF, max length 200, dropout 0.3, the code's learning rates and
                weight decays, 10% warm-up, KD averages over padding, seed 44. MiniLM-L6 stands in for the
                paper's 12-layer bert-base-cased (teacher and student encoder alike). The F1 runs read cached
                teacher outputs (computed once, before training: the epochs cost the student alone); each KD
                method is then trained again for --online-timing-epochs epoch(s) with the teacher online, as in
                the paper's timing, so the result holds both epoch times.
Each epoch's time splits into teacher forward (0 when cached), student forward (with the loss; the KD term
timed alone) and backward (with the optimizer step), read from the loop's per-epoch records in metrics.jsonl.
Reported: entity-level span F1 (seqeval), the code's token-level F1 and token accuracy on the test split,
epoch seconds and their parts, and each method's epoch time and KD-term time over marginal_kl's (the paper
claims about 0.5 for substructure). Models are evaluated once, at the end of training.

Usage (from the repository root; about 20 minutes per task on 2 free CPU cores for `ours`, estimated from a
few timed steps: the teacher step on 32 sentences takes ~2-4.5 s, a student step ~1-3.3 s):
    python benchmarks/structured_kd.py --task ner --train-limit 2000 --epochs 2
    python benchmarks/structured_kd.py --task chunking --train-limit 2000 --epochs 2
The reproduction (the paper's settings; teacher epochs default to --epochs, the paper trains 15):
    python benchmarks/structured_kd.py --task ner --settings reproduction --train-limit 5000 --epochs 3
    python benchmarks/structured_kd.py --task chunking --settings reproduction --train-limit 5000 --epochs 3
Smoke tests (tiny model, a few sentences; tiny-bert has 2 layers, so the reproduction's student keeps 1):
    python benchmarks/structured_kd.py --task ner --teacher-model tiny-bert --train-limit 32 --test-limit 16 \\
        --dev-limit 16 --epochs 1 --override train.batch_size=8 --work /tmp/skd --out /tmp/skd/result.json
    python benchmarks/structured_kd.py --task ner --settings reproduction --teacher-model tiny-bert \\
        --student-layers 1 --train-limit 24 --test-limit 12 --dev-limit 12 --epochs 1 \\
        --override train.batch_size=8 --override model.max_length=48 --work /tmp/skd_repro \\
        --out /tmp/skd_repro/result.json
Training resumes if interrupted. Writes benchmarks/results/structured_kd_<task>.json for the reproduction (the
file the issue names) and structured_kd_<task>_ours.json for our settings.
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
from summon.core.config import load_yaml
from summon.evaluation.runner import load_for
from summon.measure.task import score
from summon.models.inference import predict_logits
from summon.predictors.saved import read_manifest
from summon.training.loop import train
from summon.training.recipe import load_run_config

METHODS = ("substructure", "substructure_emissions_only", "marginal_kl", "topk", "gold_only")
PARTS = ("teacher_forward", "student_forward", "kd", "gold_nll", "backward")
RECIPES = {"ours": {"ner": ("conll2003_crf_teacher", "conll2003_substructure_kd"),
                    "chunking": ("conll2003_chunking_crf_teacher", "conll2003_chunking_substructure_kd")},
           "reproduction": {"ner": ("conll2003_crf_teacher_paper", "conll2003_substructure_kd_paper"),
                            "chunking": ("conll2003_chunking_crf_teacher_paper",
                                         "conll2003_chunking_substructure_kd_paper")}}
SEEDS = {"ours": 42, "reproduction": 44}  # the reproduction's: the released code's (and its recipes')
ONLINE_SUFFIX = "_online"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(RECIPES["ours"]), required=True)
    p.add_argument("--settings", choices=sorted(RECIPES), default="ours",
                   help="ours: our recipes (default); reproduction: the _paper recipes, the released code's settings")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train-limit", type=int, default=None, help="random subset of N training sentences")
    p.add_argument("--epochs", type=int, default=2, help="epochs for every student")
    p.add_argument("--teacher-epochs", type=int, default=None, help="epochs for the teacher (default: --epochs)")
    p.add_argument("--dev-limit", type=int, default=500, help="dev sentences for the end-of-training evaluation")
    p.add_argument("--test-limit", type=int, default=None, help="first N test sentences (default: all)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--teacher-model", default="minilm-l6", help="the teacher's encoder (model.name); in the "
                   "reproduction also the pretrained encoder the student's first layers come from")
    p.add_argument("--student-layers", type=int, default=None,
                   help="the student's first K encoder layers (default: the recipe's, 2 ours / 3 reproduction)")
    p.add_argument("--teacher-outputs", choices=("cached", "online"), default=None,
                   help="method_args.teacher_outputs of the KD students' F1 runs (default: cached for the "
                        "reproduction, the recipe's (online) for ours)")
    p.add_argument("--online-timing-epochs", type=int, default=1,
                   help="when the F1 runs read cached teacher outputs, train each KD method again for N epochs "
                        "with the teacher online, for its epoch time only (0: no such runs)")
    p.add_argument("--seed", type=int, default=None, help="default 42 (ours) or 44 (reproduction, the code's)")
    p.add_argument("--work", default=None,
                   help="run folders (default benchmarks/work/structured_kd_<task>_<settings>)")
    p.add_argument("--out", default=None, help="default benchmarks/results/structured_kd_<task>.json (reproduction) or "
                   "structured_kd_<task>_ours.json")
    p.add_argument("--override", action="append", default=[], help="extra key=value for every training run "
                   "(e.g. train.batch_size=8)")
    args = p.parse_args()
    if args.seed is None:
        args.seed = SEEDS[args.settings]
    if args.teacher_outputs is None and args.settings == "reproduction":
        args.teacher_outputs = "cached"
    if args.online_timing_epochs < 0:
        p.error("--online-timing-epochs must be >= 0")
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return args


def recipes(args: argparse.Namespace) -> tuple[str, str]:
    return RECIPES[args.settings][args.task]


# --- training -------------------------------------------------------------------------------------


def common_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    base = [f"data.data_dir={args.data_dir}", f"train.seed={args.seed}", f"train.epochs={args.epochs}",
            "train.progress=false", "train.eval_every=100000000", "cost.latency=false",  # evaluate once, at the end
            f"data.eval.limit={args.dev_limit}", f"cache_dir={work / 'cache'}"]
    if args.train_limit:
        base += [f"data.train.limit={args.train_limit}", f"data.train.shuffle_seed={args.seed}"]
    return base


def student_model_overrides(args: argparse.Namespace) -> list[str]:
    """The student's encoder: in the reproduction, the first layers of the pretrained model the teacher starts
    from (the paper: bert-base-cased for both); in ours, the recipe's (the teacher's own first layers)."""
    out = [f"model.name={args.teacher_model}"] if args.settings == "reproduction" else []
    return out + ([f"model.first={args.student_layers}"] if args.student_layers else [])


def student_overrides(method: str, teacher: Path, teacher_outputs: str | None) -> list[str]:
    if method == "gold_only":  # the same student, trained by crf_finetune; the KD recipe's method_args dropped
        return [f"teacher={teacher}", "method=crf_finetune", "method_args={}"]
    outputs = [f"method_args.teacher_outputs={teacher_outputs}"] if teacher_outputs else []
    return [f"teacher={teacher}", f"method_args.variant={method}", *outputs]


def train_student(args: argparse.Namespace, work: Path, method: str, run_dir: Path, *, teacher_outputs: str | None,
                  extra: tuple[str, ...] = ()) -> None:
    teacher = work / "teacher" / "model"
    overrides = [*common_overrides(args, work), *student_model_overrides(args), *args.override, *extra,
                 *student_overrides(method, teacher, teacher_outputs), f"output_dir={run_dir}"]
    train(load_run_config(recipes(args)[1], overrides))
    logging.getLogger(__name__).info("trained %s", run_dir.name)


def train_all(args: argparse.Namespace, work: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Train the teacher, then each student (the F1 runs), then, when those read cached teacher outputs, each
    KD student again for ``--online-timing-epochs`` with the teacher online (timing only). Returns the F1 run
    folders (teacher included) and the online timing run folders; each holds model/ and metrics.jsonl."""
    teacher_recipe, _ = recipes(args)
    runs = {"teacher": work / "teacher"}
    teacher_epochs = args.teacher_epochs or args.epochs
    train(load_run_config(teacher_recipe, [*common_overrides(args, work), *args.override,
                                           f"model.name={args.teacher_model}", f"train.epochs={teacher_epochs}",
                                           f"output_dir={runs['teacher']}"]))
    methods = args.methods.split(",")
    for method in methods:
        runs[method] = work / method
        train_student(args, work, method, runs[method], teacher_outputs=args.teacher_outputs)
    timing: dict[str, Path] = {}
    if args.online_timing_epochs:
        for method in methods:
            if method == "gold_only" or teacher_outputs_of(runs[method]) == "online":
                continue  # no teacher, or the F1 run already ran it online
            timing[method] = work / f"{method}{ONLINE_SUFFIX}"
            train_student(args, work, method, timing[method], teacher_outputs="online",
                          extra=(f"train.epochs={args.online_timing_epochs}",))
    return runs, timing


# --- what the runs say ------------------------------------------------------------------------------


def training_record(run_dir: Path) -> dict[str, Any]:
    """The ``training`` section of the saved model's manifest (method, method_args, train_examples, config)."""
    return read_manifest(run_dir / "model")["training"]


def teacher_outputs_of(run_dir: Path) -> str | None:
    """``cached`` or ``online`` for a structured_kd run; None for one without a teacher in its steps."""
    record = training_record(run_dir)
    return record["method_args"].get("teacher_outputs") if record["method"] == "structured_kd" else None


def run_config(run_dir: Path) -> dict[str, Any]:
    return load_yaml(run_dir / "config.yaml")


def one_value(values: dict[str, Any], what: str) -> Any:
    """The value every run shares (None when there is no run); a dict by run when they differ."""
    distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
    if len(distinct) > 1:
        logging.getLogger(__name__).warning("the students' %s differ: %s", what, values)
        return values
    return next(iter(values.values()), None)


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
    cfg = load_run_config(recipes(args)[0], [f"data.data_dir={args.data_dir}", "data.eval.split=test", *limit])
    data = load_for(predictor, cfg.data.eval, args.data_dir)
    features = predictor.featurizer.encode(data.examples, data.task)
    rows = predict_logits(predictor.model, features, data.task, pad_id=predictor.featurizer.pad_id, batch_size=64)
    return score(data.task, data.labels, data.examples, rows)


def ratios(seconds: dict[str, float | None], baseline: str = "marginal_kl") -> dict[str, float]:
    base = seconds.get(baseline)
    return {m: s / base for m, s in seconds.items() if s is not None and m != "teacher"} if base else {}


def summarise(args: argparse.Namespace, runs: dict[str, Path], timing: dict[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {key: {} for key in ("f1", "token_f1", "token_accuracy", "epoch_seconds",
                                               "epoch_seconds_parts", "epoch_seconds_by_epoch", "test_metrics")}
    for name, run_dir in runs.items():
        metrics = test_metrics(args, run_dir / "model")
        out["f1"][name], out["token_accuracy"][name] = metrics["f1"], metrics["token_accuracy"]
        out["token_f1"][name] = metrics.get("token_f1")
        out["test_metrics"][name] = metrics
        total, parts, epochs = timing_summary(run_dir)
        out["epoch_seconds"][name], out["epoch_seconds_parts"][name] = total, parts
        out["epoch_seconds_by_epoch"][name] = epochs
        print(name, json.dumps({"f1": metrics["f1"], "epoch_seconds": round(total, 1)}), flush=True)
    students = {m: d for m, d in runs.items() if m != "teacher"}
    kd_runs = {m: d for m, d in students.items() if m != "gold_only"}
    out["kd_term_seconds"] = {m: out["epoch_seconds_parts"][m]["kd"] for m in students}
    out["kd_term_ratio_vs_marginal"] = {m: r for m, r in ratios(out["kd_term_seconds"]).items() if r}

    # epoch times by where the teacher's outputs came from: each F1 run in its own column, gold_only (no
    # teacher) in both, and the online timing run of each KD method whose F1 run read cached outputs
    outputs = {m: teacher_outputs_of(d) for m, d in students.items()}
    by_outputs: dict[str, dict[str, float]] = {"cached": {}, "online": {}}
    kd_by_outputs: dict[str, dict[str, float]] = {"cached": {}, "online": {}}
    parts_online: dict[str, dict[str, float]] = {}
    out["epoch_seconds_by_epoch_online"] = {}
    for m in students:
        for column in ([outputs[m]] if outputs[m] else ["cached", "online"]):
            by_outputs[column][m] = out["epoch_seconds"][m]
            kd_by_outputs[column][m] = out["kd_term_seconds"][m]
        if outputs[m] != "cached":
            parts_online[m] = out["epoch_seconds_parts"][m]
        elif m in timing:
            total, parts, epochs = timing_summary(timing[m])
            by_outputs["online"][m], kd_by_outputs["online"][m], parts_online[m] = total, parts["kd"], parts
            out["epoch_seconds_by_epoch_online"][m] = epochs
            print(f"{m}{ONLINE_SUFFIX}", json.dumps({"epoch_seconds": round(total, 1)}), flush=True)
    out["epoch_seconds_online"] = by_outputs["online"]
    out["epoch_seconds_parts_online"] = parts_online
    out["kd_term_seconds_online"] = kd_by_outputs["online"]
    if args.settings == "reproduction":
        out["epoch_seconds_cached"] = by_outputs["cached"]
        out["epoch_time_ratio_vs_marginal"] = {column: ratios(s) for column, s in by_outputs.items()}
    else:  # today's flat form: the F1 runs' epoch times, as they ran
        out["epoch_time_ratio_vs_marginal"] = ratios(out["epoch_seconds"])

    records = {m: training_record(d) for m, d in students.items()}
    out["train_sentences"] = one_value({m: r["train_examples"] for m, r in records.items()}, "training sentences")
    out["teacher_outputs"] = one_value({m: outputs[m] for m in kd_runs}, "teacher_outputs")
    out["lr_schedule"] = one_value({m: run_config(d)["train"]["lr_schedule"] for m, d in students.items()},
                                   "train.lr_schedule")
    out["student_layers"] = one_value({m: run_config(d)["model"].get("first") for m, d in students.items()},
                                      "model.first")
    out["teacher_train_sentences"] = training_record(runs["teacher"])["train_examples"]
    out["online_timing_runs"] = {m: {"epochs": len(epoch_times(d)), "folder": d.name} for m, d in timing.items()}
    return out


def descriptions(args: argparse.Namespace, layers: Any) -> dict[str, str]:
    teacher_recipe, student_recipe = recipes(args)
    first = f"first {layers} layer{'' if layers == 1 else 's'}"
    if args.settings == "reproduction":
        return {"teacher": f"{args.teacher_model} + CRF over word pieces with an X label, the released code's "
                           f"settings ({teacher_recipe}); {args.teacher_model} stands in for the paper's 12-layer "
                           "bert-base-cased",
                "student": f"{first} of the pretrained {args.teacher_model} (not of the teacher) + a new word-piece "
                           f"CRF ({student_recipe}); the paper's student: the first 3 layers of bert-base-cased"}
    return {"teacher": f"{args.teacher_model} + CRF over words ({teacher_recipe})",
            "student": f"teacher's {first} + new CRF ({student_recipe})"}


def main() -> None:
    args = parse_args()
    setup_logging()
    suffix = "" if args.settings == "reproduction" else "_ours"
    work, out_json = run_paths(args.work or str(REPO / "benchmarks" / "work" / f"structured_kd_{args.task}_{args.settings}"),
                               args.out, f"structured_kd_{args.task}{suffix}")
    runs, timing = train_all(args, work)
    summary = summarise(args, runs, timing)
    result = {
        "benchmark": f"structured_kd_{args.task}{suffix}", **provenance(args.seed),
        "task": args.task, "settings": args.settings, **descriptions(args, summary["student_layers"]),
        "train_subset": args.train_limit or "all", "train_sentences": summary.pop("train_sentences"),
        "epochs": args.epochs, "teacher_epochs": args.teacher_epochs or args.epochs,
        "online_timing_epochs": args.online_timing_epochs if timing else 0,
        "teacher_outputs": summary.pop("teacher_outputs"), "lr_schedule": summary.pop("lr_schedule"),
        "dev_limit": args.dev_limit, "test_subset": args.test_limit or "all", "overrides": args.override,
        **summary,
        "notes": "f1 = entity-level span F1 (seqeval, CoNLL style) on the test split; token_f1 = the released "
                 "code's token-level F1 (non-O word tags; the paper's own F1, see shared/PAPERS.md section 3); "
                 "token_accuracy per word. epoch_seconds = mean over epochs of the loop's training time (steps, "
                 "backward and optimizer; evaluation excluded) of the F1 runs, whose teacher outputs were "
                 "teacher_outputs (cached: computed once before training, not counted in any epoch); parts: "
                 "teacher forward (KD only, 0 when cached), student forward with the loss, the KD term alone, "
                 "the gold NLL, backward with the optimizer step. epoch_seconds_online: the same with the "
                 "teacher online in every step, from the F1 runs when they ran it online, else from the "
                 "online timing runs (online_timing_epochs epochs each, same seed and data); gold_only has no "
                 "teacher, so one time serves both. " + (
                     "Padding counts in the KD averages (mask_padding: false), as in the released code."
                     if args.settings == "reproduction" else
                     "Padding is masked in the KD averages (the released code averages over it)."),
    }
    write_result(out_json, result)


if __name__ == "__main__":
    main()
