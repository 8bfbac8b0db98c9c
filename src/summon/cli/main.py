"""The ``summon`` command line: train, eval, calibrate, predict, cascade, serve-logits, recipes, quickstart,
export.

User mistakes print one clear ``summon: error: ...`` message and exit with status 2; set
``SUMMON_DEBUG=1`` to see the traceback instead. Every command that runs a model takes ``--device``;
``predict``, ``eval`` and ``calibrate`` take the same knob flags (:mod:`summon.cli.knob`). A sub-command's
options and positionals may come in any order, and every ``--help`` shows the defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import summon
from summon import recipe
from summon.adaptive.calibration import Calibration
from summon.adaptive.knob import Knob
from summon.adaptive.staged import StagedPredictor
from summon.cli.export import add_export_parser
from summon.cli.inputs import FORMATS, check_inputs, read_inputs
from summon.cli.knob import add_knob_arguments, knob_from_args
from summon.cli.quickstart import run_quickstart
from summon.config import dump_yaml, to_dict
from summon.recipe import load_run_config
from summon.saved import read_manifest
from summon.serve.logits_server import serve
from summon.train.loop import train

EXIT_USAGE = 2
PREDICT_WINDOW = 1024  # rows read, predicted and written together by summon predict


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
    print(f"  {result['kind']} ({result['scorer']}, device {result.get('device') or 'cpu'}): full model accuracy "
          f"{result['full_accuracy']:.4f}; at threshold {float(chosen['threshold']):.4g}: accuracy "
          f"{chosen['accuracy']:.4f}, cost {chosen['cost']:.3f}, stages {chosen['exit_counts']}")
    drop = result["cost_at_drop_1pt"]
    print(f"  cost within 1 point of the full model: policy {drop['policy']}, oracle (earliest agreeing) "
          f"{drop['oracle_agree']}, oracle (earliest correct) {drop['oracle_correct']}")
    for bs, s in result.get("speedup", {}).items():
        print(f"  batch {bs}: speed-up {s['realised']:.2f}x measured vs {s['theoretical']:.2f}x from FLOPs "
              f"({s['realised_over_theoretical']:.2f})")


def cmd_calibrate(args: argparse.Namespace) -> int:
    knob = knob_from_args(args)  # validated before the model loads
    predictor = summon.load(args.predictor, device=args.device)
    calibration = summon.calibrate(predictor, args.data, budget=knob.budget, max_drop=knob.max_drop,
                                   guaranteed=knob.guaranteed, delta=knob.delta, against=args.against,
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
    check_inputs(args.texts, args.file, args.format)  # before loading a model: fail fast
    knob = knob_from_args(args)
    predictor = summon.load(args.predictor, device=args.device)
    inputs = read_inputs(args.texts, args.file, task=predictor.task, fmt=args.format)
    rows = (pred.to_dict() for pred in predict_stream(predictor, inputs, knob=knob, batch_size=args.batch_size))
    first = next(rows, None)  # the first window is read and predicted before --out is created
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        write_jsonl(itertools.chain([first] if first is not None else [], rows), out)
    finally:
        if args.out:
            out.close()
    return 0


def predict_stream(predictor: Any, inputs: Iterable[Any], *, knob: Knob | None = None, batch_size: int = 64,
                   window: int = PREDICT_WINDOW) -> Iterator[Any]:
    """Predictions for a stream of inputs, ``window`` rows at a time: at most one window is held, so an input
    larger than memory streams through. Staged predictors take the knob; a plain predictor refuses it."""
    knob = knob or Knob()
    if isinstance(predictor, StagedPredictor):
        return predictor.iter_predict(inputs, knob=knob, batch_size=batch_size, window=window)
    if not knob.empty or knob.unit is not None:
        given = knob.describe() if not knob.empty else f"unit {knob.unit}"
        raise ValueError(f"{predictor.path or 'this predictor'} is not a staged predictor, so it has no knob "
                         f"(got {given}); give the knob to an early-exit model or a cascade, or drop it")
    return _plain_stream(predictor, inputs, batch_size, window)


def _plain_stream(predictor: Any, inputs: Iterable[Any], batch_size: int, window: int) -> Iterator[Any]:
    iterator = iter(inputs)
    while chunk := list(itertools.islice(iterator, window)):
        yield from predictor.predict(chunk, batch_size=batch_size)


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO, flush_every: int = PREDICT_WINDOW) -> int:
    """Write one JSON object per line, flushing every ``flush_every`` rows so a pipe sees results as they come."""
    count = 0
    for count, row in enumerate(rows, start=1):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if count % flush_every == 0:
            out.flush()
    out.flush()
    return count


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "ls":
        rows = [(name, recipe.describe(path)) for name, path in recipe.shipped().items()]
        print("\n".join(format_columns(rows, shutil.get_terminal_size().columns - 1)))
    elif args.action == "show":
        print(recipe.find(_need(args.name, "show")).read_text(encoding="utf-8"), end="")
    else:
        target = recipe.copy_recipe(_need(args.name, "cp"), args.dest or ".")
        print(f"copied to {target}; run it with: summon train {target}")
    return 0


def format_columns(rows: Sequence[tuple[str, str]], width: int, *, min_text: int = 30) -> list[str]:
    """Names in a column and their text wrapped beside them, no line wider than ``width``; when the
    terminal is too narrow for two columns, each text goes under its name, indented."""
    if not rows:
        return []
    name_width = max(len(name) for name, _ in rows) + 2
    lines = []
    if width - name_width >= min_text:
        for name, text in rows:
            wrapped = textwrap.wrap(text, width - name_width, break_on_hyphens=False) or [""]
            lines.append(f"{name:<{name_width}}{wrapped[0]}".rstrip())
            lines.extend(" " * name_width + line for line in wrapped[1:])
    else:
        for name, text in rows:
            lines.append(name)
            lines.extend(textwrap.wrap(text, max(width, 8), initial_indent="    ", subsequent_indent="    ",
                                       break_on_hyphens=False))
    return lines


def _need(value: str | None, action: str) -> str:
    if not value:
        raise ValueError(f"`summon recipes {action}` needs a recipe name; see `summon recipes ls`")
    return value


def cmd_quickstart(args: argparse.Namespace) -> int:
    run_quickstart(Path(args.out), max_seconds=args.max_seconds)
    return 0


# --- parser ---------------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option that has a default worth showing (not None, not a bare flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


_FORMATTER = _Formatter
_KNOB_FLAGS = ("--budget", "--max-drop", "--threshold", "--guaranteed")


class _Parser(argparse.ArgumentParser):
    """argparse with a plainer message for two knob flags at once."""

    def error(self, message: str):
        if "not allowed with argument" in message and any(flag in message for flag in _KNOB_FLAGS):
            message += (f"; the knob flags {', '.join(_KNOB_FLAGS)} are mutually exclusive: give at most one "
                        "(--delta goes with --guaranteed; --unit only sets the cost unit)")
        super().error(message)


class _SubParser(_Parser):
    """A sub-command whose options and positionals may come in any order
    (``summon train RECIPE a=1 --data-dir D b=2``, ``summon predict MODEL --budget 0.4 "text"``)."""

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _FORMATTER)  # defaults shown on every sub-command's --help
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back in: plain parsing from there
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


DATA_HELP = "split to use: sst2:dev, a .jsonl/.csv/.tsv file, or hub:ID[@CONFIG]:SPLIT (a split must be named)"


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--limit", type=int, help=f"{what} the first N rows only (default: all)")


def _parser_train(sub) -> None:
    p = sub.add_parser("train", help="train from a recipe: summon train RECIPE.yaml [key=value ...]",
                       description="Train from a recipe. Options and key=value overrides may come in any order: "
                       "summon train sst2_finetune train.lr=3e-5 --data-dir DATA model.first=2",
                       formatter_class=_FORMATTER)
    p.add_argument("recipe", help="a recipe file, or the name of a shipped recipe (summon recipes ls)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="dotted overrides, e.g. train.lr=3e-5 model.first=2 (applied in order)")
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
                       "cost)", formatter_class=_FORMATTER,
                       description="Predict labels and write one JSON object per input (label, probabilities; "
                       "for staged predictors also the stage that answered and its cost), streaming: a file or "
                       "pipe larger than memory is read, predicted and written one window of rows at a time.")
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("texts", nargs="*", default=[], help="texts to classify (or use --file); pair tasks: TEXT<TAB>TEXT_PAIR")
    p.add_argument("--file", help="inputs: .jsonl ('text', 'text_pair' or 'tokens'), .csv/.tsv (a 'text' column), "
                   ".txt (one per line), any of them .gz, or - for standard input (lines of text)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="format of --file (auto: from the extension; standard input: txt)")
    p.add_argument("--out", help="write JSON lines to this file (default: standard output)")
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
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on (0: any free port)")
    p.add_argument("--name", default="teacher", help="the stage name the server reports in /v1/info")
    _add_device(p)
    p.set_defaults(func=cmd_serve_logits)

    p = sub.add_parser("recipes", help="list, show or copy the shipped recipes", formatter_class=_FORMATTER)
    p.add_argument("action", choices=["ls", "show", "cp"],
                   help="ls: list them with what they do; show NAME: print one; cp NAME [DEST]: copy one to edit")
    p.add_argument("name", nargs="?", help="recipe name (show, cp)")
    p.add_argument("dest", nargs="?", help="cp: file or folder to copy to (default: the current folder)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("quickstart", help="offline end-to-end demo: fine-tune, distil, evaluate, report",
                       formatter_class=_FORMATTER)
    p.add_argument("--out", default="summon_quickstart", help="output folder")
    p.add_argument("--max-seconds", type=float, default=6.0, help="latency time budget per model")
    p.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="summon", description="Distil, exit early and cascade expensive models.",
                     formatter_class=_FORMATTER)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (accelerate, transformers)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_SubParser)
    for add in (_parser_train, _parser_eval, _parser_calibrate, _parser_predict, _parser_other, add_export_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse has printed
        return done.code if isinstance(done.code, int) else EXIT_USAGE
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
