"""The ``summon`` command line: train, eval, predict, recipes, quickstart.

User mistakes print one clear ``summon: error: ...`` message and exit with status 2; set
``SUMMON_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("summon").setLevel(logging.INFO)
    for noisy in ("accelerate", "transformers", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- commands -------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from summon.config import dump_yaml, to_dict
    from summon.recipe import load_run_config
    from summon.train.loop import train

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
    from summon.predictor import read_manifest

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
    from summon.adaptive.cascade import CascadePredictor
    from summon.evaluate.report import write_report
    from summon.evaluate.runner import evaluate_cascade, evaluate_predictor, load_for, spec_for
    from summon.predictor import load

    entries = []
    for path in args.predictors:
        predictor = load(path)
        data = load_for(predictor, spec_for(predictor, args.data, args.limit), args.data_dir)
        name = Path(path).parent.name if Path(path).name == "model" else Path(path).name
        if isinstance(predictor, CascadePredictor):
            entry = evaluate_cascade(predictor, data, name=name)
        else:
            entry = evaluate_predictor(predictor, data, name=name, latency=not args.no_latency,
                                       max_seconds=args.max_seconds, progress=True)
        entries.append(entry)
        print(json.dumps({"name": entry["name"], "data": entry["data"], **entry["metrics"],
                          "flops_per_example": entry["cost"]["flops_per_example"]}))
        if getattr(predictor, "adaptive", None) and not isinstance(predictor, CascadePredictor):
            out = Path(args.out) / entry["name"] if args.out else None
            entry["adaptive"] = _eval_adaptive(predictor, data, out, args)
    if args.out:
        paths = write_report(entries, args.out, title=f"summon eval on {args.data}", reference=entries[0]["name"])
        print(f"report: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from summon.adaptive.cascade import CascadePredictor, calibrate_cascade
    from summon.adaptive.predictor import AdaptivePredictor, calibrate
    from summon.adaptive.thresholds import ThresholdTable
    from summon.evaluate.runner import load_for, spec_for
    from summon.predictor import load, update_manifest

    predictor = load(args.predictor)
    if not isinstance(predictor, AdaptivePredictor | CascadePredictor):
        raise ValueError(f"{args.predictor} has no stages to calibrate: train it with model.exits (e.g. 'all'), "
                         "or build a cascade with `summon cascade`")
    data = load_for(predictor, spec_for(predictor, args.data, args.limit), args.data_dir)
    options = {"cost_unit": args.unit, "rule": args.rule, "value": args.value, "delta": args.delta,
               "temperature_fraction": args.temperature_fraction, "latency": not args.no_latency, "seed": args.seed}
    if isinstance(predictor, CascadePredictor):
        section = calibrate_cascade(predictor, data, scorer=args.policy, **options)
        predictor.save(args.predictor)
    else:
        if args.policy in ("defer", "gate"):
            raise ValueError(f"policy '{args.policy}' is for cascades; exits use max_prob, margin, entropy, patience")
        section = calibrate(predictor, data, policy=args.policy, **options)
        update_manifest(args.predictor, adaptive=section)
    print(f"calibrated on {data.source}: temperatures from {section['rows']['temperature']} rows, "
          f"thresholds from {section['rows']['thresholds']} rows")
    print(f"{'exit':>4s} {'T':>7s} {'ECE before':>11s} {'ECE after':>10s} {'NLL before':>11s} {'NLL after':>10s}")
    for row in section["calibration"]:
        print(f"{row['stage'] + 1:4d} {row['temperature']:7.3f} {row['ece_before']:11.4f} {row['ece_after']:10.4f} "
              f"{row['nll_before']:11.4f} {row['nll_after']:10.4f}")
    table = ThresholdTable.from_dict(section["table"])
    chosen = next((p for p in table.points if p.threshold == float(section["default"]["threshold"])), None)
    print(f"\n{table.format(chosen, max_rows=args.table_rows or len(table.points))}")
    d = section["default"]
    print(f"\ndefault operating point ({d['rule']} {d['value']}): threshold {float(d['threshold']):.6g}, "
          f"cost {d['cost']:.3f} of the full model ({section['cost_unit']}), accuracy {d['accuracy']:.4f}, "
          f"disagreement with the full model {d['disagreement']:.4f}")
    return 0


def _eval_adaptive(predictor, data, out: Path | None, args: argparse.Namespace) -> dict:
    from summon.evaluate.adaptive import evaluate_adaptive

    result = evaluate_adaptive(predictor, data, out_dir=out, speed=args.speedup, title=f"{data.source}")
    chosen = result["chosen"]
    print(f"  full model accuracy {result['full_accuracy']:.4f}; at the calibrated threshold "
          f"{float(chosen['threshold']):.4g}: accuracy {chosen['accuracy']:.4f}, cost {chosen['cost']:.3f}, "
          f"exits {chosen['exit_counts']}")
    drop = result["cost_at_drop_1pt"]
    print(f"  cost within 1 point of the full model: policy {drop['policy']}, oracle (earliest agreeing) "
          f"{drop['oracle_agree']}, oracle (earliest correct) {drop['oracle_correct']}")
    for bs, s in result.get("speedup", {}).items():
        print(f"  batch {bs}: speed-up {s['realised']:.2f}x measured vs {s['theoretical']:.2f}x from FLOPs "
              f"({s['realised_over_theoretical']:.2f})")
    if out is not None:
        (out / "adaptive.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return {k: result[k] for k in ("full_accuracy", "chosen", "cost_at_drop_1pt")}


def cmd_cascade(args: argparse.Namespace) -> int:
    from summon.adaptive.cascade import build_cascade

    cascade = build_cascade(args.stages, timeout=args.timeout)
    out = cascade.save(args.out)
    print(f"cascade of {cascade.num_stages} stages written to {out}; next: summon calibrate {out} --data SPLIT")
    return 0


def cmd_serve_logits(args: argparse.Namespace) -> int:
    from summon.predictor import load
    from summon.serve.logits_server import serve

    serve(load(args.predictor), host=args.host, port=args.port, name=args.name)
    return 0


def _read_inputs(args: argparse.Namespace) -> list:
    inputs: list = list(args.texts)
    if args.file:
        path = Path(args.file)
        if path.suffix in (".jsonl", ".json"):
            from summon.data.readers import read_jsonl, read_text

            for line, row in read_jsonl(path, read_text(path)):
                if "text_pair" in row:
                    inputs.append((row["text"], row["text_pair"]))
                elif "text" in row or "tokens" in row:
                    inputs.append(row.get("text", row.get("tokens")))
                else:
                    raise ValueError(f"{path}:{line}: needs a 'text' (or 'tokens') key")
        else:
            from summon.data.readers import read_text

            inputs += [line for line in read_text(path).splitlines() if line.strip()]
    if not inputs:
        raise ValueError("nothing to predict: give texts as arguments or --file FILE (.txt, one per line, or .jsonl)")
    return inputs


def cmd_predict(args: argparse.Namespace) -> int:
    from summon.predictor import load

    predictor = load(args.predictor)
    inputs = _read_inputs(args)
    for pred in predictor.predict(inputs, batch_size=args.batch_size):
        print(json.dumps(pred.to_dict(), ensure_ascii=False))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from summon import recipe

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
    from summon.cli.quickstart import run_quickstart

    run_quickstart(Path(args.out), max_seconds=args.max_seconds)
    return 0


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="summon", description="Distil, exit early and cascade expensive models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (accelerate, transformers)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train from a recipe: summon train RECIPE.yaml [key=value ...]")
    p.add_argument("recipe", help="a recipe file, or the name of a shipped recipe (summon recipes ls)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-5 model.first=2")
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--dry-run", action="store_true", help="print the validated config and stop")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate saved predictors on a split, with cost, and write a report")
    p.add_argument("predictors", nargs="+", help="predictor directories (the first is the cost reference)")
    p.add_argument("--data", required=True, help="sst2:dev, a .jsonl/.csv/.tsv file, or hub:ID[@CONFIG][:SPLIT]")
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--limit", type=int, help="evaluate the first N rows only")
    p.add_argument("--out", help="folder for report.json, report.md and report.png")
    p.add_argument("--no-latency", action="store_true", help="count FLOPs but skip timing")
    p.add_argument("--max-seconds", type=float, default=10.0, help="time budget for latency per model")
    p.add_argument("--speedup", action="store_true", help="staged predictors: measure wall-clock speed-up")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cascade", help="build a cascade from saved predictors and logits-server URLs, cheapest first")
    p.add_argument("stages", nargs="+", help="predictor directories or http://host:port of `summon serve-logits`")
    p.add_argument("--out", required=True, help="cascade directory to write (then run summon calibrate on it)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a remote stage")
    p.set_defaults(func=cmd_cascade)

    p = sub.add_parser("serve-logits", help="serve a predictor's logits over HTTP (a remote cascade stage)")
    p.add_argument("predictor")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", default="teacher")
    p.set_defaults(func=cmd_serve_logits)

    p = sub.add_parser("calibrate", help="fit exit temperatures and thresholds of a staged predictor on held-out data")
    p.add_argument("predictor", help="a predictor directory with exits (updated in place)")
    p.add_argument("--data", required=True, help="held-out split: sst2:dev, a file, or hub:ID[@CONFIG][:SPLIT]")
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--limit", type=int, help="use the first N rows only")
    p.add_argument("--policy", default="max_prob",
                   choices=["max_prob", "margin", "entropy", "patience", "defer", "gate"],
                   help="confidence score; cascades also take defer (a learned defer output) and gate")
    p.add_argument("--unit", default="flops", choices=["flops", "ms"], help="cost measured in FLOPs or milliseconds")
    p.add_argument("--rule", default="max_drop", choices=["budget", "max_drop", "max_drop_gold", "guaranteed"],
                   help="how the default threshold is chosen")
    p.add_argument("--value", type=float, default=0.01, help="the budget (cost fraction) or the drop (0.01 = 1 point)")
    p.add_argument("--delta", type=float, default=0.1, help="guaranteed rule: failure probability")
    p.add_argument("--temperature-fraction", type=float, default=0.3, help="share of rows that fit temperatures")
    p.add_argument("--no-latency", action="store_true", help="skip measuring per-stage milliseconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table-rows", type=int, default=24, help="rows of the threshold table to print (0: all)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("predict", help="predict labels for texts; prints one JSON object per input")
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help=".txt (one input per line) or .jsonl with 'text' (and 'text_pair') keys")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recipes", help="list, show or copy the shipped recipes")
    p.add_argument("action", choices=["ls", "show", "cp"])
    p.add_argument("name", nargs="?")
    p.add_argument("dest", nargs="?")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("quickstart", help="offline end-to-end demo: fine-tune, distil, evaluate, report")
    p.add_argument("--out", default="summon_quickstart", help="output folder (default ./summon_quickstart)")
    p.add_argument("--max-seconds", type=float, default=6.0, help="latency time budget per model")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import summon

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
