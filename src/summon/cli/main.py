"""The ``summon`` command line: train, eval, calibrate, predict, cascade, serve-logits, recipes, quickstart.

User mistakes print one clear ``summon: error: ...`` message and exit with status 2; set
``SUMMON_DEBUG=1`` to see the traceback instead. Every command that runs a model takes ``--device``;
``predict``, ``eval`` and ``calibrate`` take the same knob flags (:mod:`summon.cli.knob`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import summon
from summon import recipe
from summon.adaptive.calibration import Calibration
from summon.adaptive.staged import StagedPredictor
from summon.cli.inputs import read_inputs
from summon.cli.knob import add_knob_arguments, knob_from_args
from summon.cli.quickstart import run_quickstart
from summon.config import dump_yaml, to_dict
from summon.recipe import load_run_config
from summon.saved import read_manifest
from summon.serve.logits_server import serve
from summon.train.loop import train

EXIT_USAGE = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("summon").setLevel(logging.INFO)
    for noisy in ("accelerate", "transformers", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- commands -------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_run_config(args.recipe, overrides)
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(to_dict(cfg), out / "config.yaml")
    model_dir = train(cfg)
    _print_summary(model_dir)
    return 0


def _print_summary(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    metrics = manifest.get("metrics", {}).get("eval") or {}
    costs = manifest.get("costs", {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n" and isinstance(v, float))
    print(f"saved predictor: {model_dir}")
    if shown:
        print(f"eval ({manifest['metrics'].get('eval_data')}): {shown}")
    if costs:
        print(f"cost: {costs['params'] / 1e6:.2f}M params, {costs['flops_per_example']:.4g} FLOPs/example")


def cmd_eval(args: argparse.Namespace) -> int:
    entries = summon.evaluate(args.predictors, args.data, out=args.out, knob=knob_from_args(args),
                              latency=not args.no_latency, speedup=args.speedup, data_dir=args.data_dir,
                              limit=args.limit, max_seconds=args.max_seconds, device=args.device, progress=True)
    for entry in entries:
        print(json.dumps({"name": entry["name"], "data": entry["data"], **entry["metrics"],
                          "flops_per_example": entry["cost"]["flops_per_example"]}))
        if "adaptive" in entry:
            _print_adaptive(entry["adaptive"])
    if args.out:
        print(f"report: {Path(args.out) / 'report.md'}, {Path(args.out) / 'report.json'}, "
              f"{Path(args.out) / 'report.png'}")
    return 0


def _print_adaptive(result: dict) -> None:
    chosen = result["chosen"]
    print(f"  {result['kind']} ({result['policy']}, device {result.get('device') or 'cpu'}): full model accuracy "
          f"{result['full_accuracy']:.4f}; at threshold {float(chosen['threshold']):.4g}: accuracy "
          f"{chosen['accuracy']:.4f}, cost {chosen['cost']:.3f}, stages {chosen['exit_counts']}")
    drop = result["cost_at_drop_1pt"]
    print(f"  cost within 1 point of the full model: policy {drop['policy']}, oracle (earliest agreeing) "
          f"{drop['oracle_agree']}, oracle (earliest correct) {drop['oracle_correct']}")
    for bs, s in result.get("speedup", {}).items():
        print(f"  batch {bs}: speed-up {s['realised']:.2f}x measured vs {s['theoretical']:.2f}x from FLOPs "
              f"({s['realised_over_theoretical']:.2f})")


def cmd_calibrate(args: argparse.Namespace) -> int:
    predictor = summon.load(args.predictor, device=args.device)
    calibration = summon.calibrate(predictor, args.data, budget=args.budget, max_drop=args.max_drop,
                                   guaranteed=args.guaranteed, delta=args.delta, against=args.against,
                                   policy=args.policy, unit=args.unit or "flops",
                                   temperature_fraction=args.temperature_fraction, seed=args.seed,
                                   latency=not args.no_latency, data_dir=args.data_dir, limit=args.limit)
    _print_calibration(calibration, args.table_rows)
    return 0


def _print_calibration(c: Calibration, table_rows: int) -> None:
    print(f"calibrated on {c.data}: temperatures from {c.rows['temperature']} rows, "
          f"thresholds from {c.rows['thresholds']} rows; costs measured on {c.costs.device or 'cpu'}")
    print(f"{'stage':>5s} {'T':>7s} {'ECE before':>11s} {'ECE after':>10s} {'NLL before':>11s} {'NLL after':>10s}")
    for row in c.report:
        print(f"{row['stage'] + 1:5d} {row['temperature']:7.3f} {row['ece_before']:11.4f} {row['ece_after']:10.4f} "
              f"{row['nll_before']:11.4f} {row['nll_after']:10.4f}")
    chosen = next((p for p in c.table.points if p.threshold == c.default.threshold), None)
    print(f"\n{c.table.format(chosen, max_rows=table_rows or len(c.table.points))}")
    d = c.default
    print(f"\ndefault operating point ({d.rule} {d.value}): threshold {d.threshold:.6g}, cost {d.point.cost:.3f} of "
          f"the full model ({c.cost_unit}), accuracy {d.point.accuracy:.4f}, disagreement with the full model "
          f"{d.point.disagreement:.4f}")


def cmd_cascade(args: argparse.Namespace) -> int:
    cascade = summon.cascade(args.stages, out=args.out, timeout=args.timeout, device=args.device)
    print(f"cascade of {cascade.num_stages} stages written to {args.out}; next: summon calibrate {args.out} "
          "--data SPLIT")
    return 0


def cmd_serve_logits(args: argparse.Namespace) -> int:
    serve(summon.load(args.predictor, device=args.device), host=args.host, port=args.port, name=args.name)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    predictor = summon.load(args.predictor, device=args.device)
    knob = knob_from_args(args)
    inputs = read_inputs(args.texts, args.file, task=predictor.task)
    if isinstance(predictor, StagedPredictor):
        predictions = predictor.iter_predict(inputs, knob=knob, batch_size=args.batch_size)
    else:
        if not knob.empty:
            raise ValueError(f"{args.predictor} is not a staged predictor: it has no knob "
                             f"({knob.describe()}); give the knob to an early-exit model or a cascade")
        predictions = _plain_stream(predictor, inputs, args.batch_size)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for pred in predictions:
            out.write(json.dumps(pred.to_dict(), ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    return 0


def _plain_stream(predictor, inputs, batch_size: int, window: int = 1024):
    chunk: list = []
    for item in inputs:
        chunk.append(item)
        if len(chunk) >= window:
            yield from predictor.predict(chunk, batch_size=batch_size)
            chunk = []
    if chunk:
        yield from predictor.predict(chunk, batch_size=batch_size)


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "ls":
        for name, path in recipe.shipped().items():
            print(f"{name:28s} {recipe.describe(path)}")
    elif args.action == "show":
        print(recipe.find(_need(args.name, "show")).read_text(encoding="utf-8"), end="")
    else:
        target = recipe.copy_recipe(_need(args.name, "cp"), args.dest or ".")
        print(f"copied to {target}; run it with: summon train {target}")
    return 0


def _need(value: str | None, action: str) -> str:
    if not value:
        raise ValueError(f"`summon recipes {action}` needs a recipe name; see `summon recipes ls`")
    return value


def cmd_quickstart(args: argparse.Namespace) -> int:
    run_quickstart(Path(args.out), max_seconds=args.max_seconds)
    return 0


# --- parser ---------------------------------------------------------------------------------------

_FORMATTER = argparse.ArgumentDefaultsHelpFormatter
DATA_HELP = "split to use: sst2:dev, a .jsonl/.csv/.tsv file, or hub:ID[@CONFIG]:SPLIT (a split must be named)"


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--limit", type=int, help=f"{what} the first N rows only")


def _parser_train(sub) -> None:
    p = sub.add_parser("train", help="train from a recipe: summon train RECIPE.yaml [key=value ...]",
                       formatter_class=_FORMATTER)
    p.add_argument("recipe", help="a recipe file, or the name of a shipped recipe (summon recipes ls)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-5 model.first=2")
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--dry-run", action="store_true", help="print the validated config and stop")
    p.set_defaults(func=cmd_train)


def _parser_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate saved predictors on a split, with cost, and write a report",
                       formatter_class=_FORMATTER)
    p.add_argument("predictors", nargs="+", help="predictor directories (the first is the cost reference)")
    _add_data(p, "evaluate")
    p.add_argument("--out", help="folder for report.json, report.md and report.png (and plots per staged model)")
    p.add_argument("--no-latency", action="store_true", help="count FLOPs but skip timing")
    p.add_argument("--max-seconds", type=float, default=10.0, help="time budget for latency per model")
    p.add_argument("--speedup", action="store_true", help="staged predictors: measure wall-clock speed-up")
    add_knob_arguments(p)
    _add_device(p)
    p.set_defaults(func=cmd_eval)


def _parser_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit temperatures, costs and thresholds of a staged predictor on held-out "
                       "data", formatter_class=_FORMATTER)
    p.add_argument("predictor", help="an early-exit model or a cascade directory (updated in place; the previous "
                   "calibration is kept under adaptive_previous)")
    _add_data(p, "use")
    p.add_argument("--policy", default="max_prob",
                   choices=["max_prob", "margin", "entropy", "patience", "defer", "gate"],
                   help="confidence score; defer needs a learned defer output (cascade students)")
    add_knob_arguments(p, threshold=False)
    p.add_argument("--against", choices=["reference", "gold"], default="reference",
                   help="--max-drop: measure the drop against the full model's answers or the gold labels")
    p.add_argument("--temperature-fraction", type=float, default=0.3, help="share of rows that fit temperatures")
    p.add_argument("--no-latency", action="store_true", help="skip measuring per-stage milliseconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the temperature/threshold row split")
    p.add_argument("--table-rows", type=int, default=24, help="rows of the threshold table to print (0: all)")
    _add_device(p)
    p.set_defaults(func=cmd_calibrate)


def _parser_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict labels; one JSON object per input (label, probabilities, stage, "
                       "cost)", formatter_class=_FORMATTER)
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("texts", nargs="*", help="texts to classify (or use --file)")
    p.add_argument("--file", help="inputs: .jsonl ('text', 'text_pair' or 'tokens'), .csv/.tsv (a 'text' column), "
                   ".txt (one per line), or - for standard input (lines of text)")
    p.add_argument("--out", help="write JSON lines here instead of standard output")
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    add_knob_arguments(p)
    _add_device(p)
    p.set_defaults(func=cmd_predict)


def _parser_other(sub) -> None:
    p = sub.add_parser("cascade", help="build a cascade from saved predictors and logits-server URLs, cheapest first",
                       formatter_class=_FORMATTER)
    p.add_argument("stages", nargs="+", help="predictor directories or http://host:port of `summon serve-logits`")
    p.add_argument("--out", required=True, help="cascade directory to write (then run summon calibrate on it)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a remote stage")
    _add_device(p)
    p.set_defaults(func=cmd_cascade)

    p = sub.add_parser("serve-logits", help="serve a predictor's logits over HTTP (a remote cascade stage)",
                       formatter_class=_FORMATTER)
    p.add_argument("predictor")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", default="teacher")
    _add_device(p)
    p.set_defaults(func=cmd_serve_logits)

    p = sub.add_parser("recipes", help="list, show or copy the shipped recipes", formatter_class=_FORMATTER)
    p.add_argument("action", choices=["ls", "show", "cp"])
    p.add_argument("name", nargs="?")
    p.add_argument("dest", nargs="?")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("quickstart", help="offline end-to-end demo: fine-tune, distil, evaluate, report",
                       formatter_class=_FORMATTER)
    p.add_argument("--out", default="summon_quickstart", help="output folder")
    p.add_argument("--max-seconds", type=float, default=6.0, help="latency time budget per model")
    p.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="summon", description="Distil, exit early and cascade expensive models.",
                                     formatter_class=_FORMATTER)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (accelerate, transformers)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    for add in (_parser_train, _parser_eval, _parser_calibrate, _parser_predict, _parser_other):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(summon.__version__)
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("SUMMON_DEBUG"):
            raise
        print(f"summon: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("summon: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
