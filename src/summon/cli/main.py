"""The ``summon`` command line: train, eval, calibrate, quantize, predict, cascade, serve, serve-logits, recipes,
quickstart, export.

User mistakes print one clear ``summon: error: ...`` message and exit with status 2 (a path that is in the way,
not a folder, a folder, or closed to this user, too: named, whatever raised it); anything unexpected
prints one line and exits 1; ``--debug`` (or ``SUMMON_DEBUG=1``) shows the traceback instead. Every command that runs a model takes ``--device``;
``predict``, ``eval`` and ``calibrate`` take the same knob flags (:mod:`summon.cli.knob`). A sub-command's
options and positionals may come in any order, and every ``--help`` shows the defaults.

The options of ``calibrate``/``quantize`` (``CalibrationSpec``) and of ``serve`` (``EngineConfig``,
``ControlConfig``, ``ServeOptions``) are not typed here: :mod:`summon.core.options` derives them from those
dataclasses, and a command reads back exactly the flags given (:func:`~summon.core.options.given`). The
dataclasses whose modules import torch add their flags when their command is parsed (:meth:`_SubParser.options_of`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from summon.adaptive.cascade_stages import StageUnavailable
from summon.cli.export import add_export_parser
from summon.cli.inputs import FORMATS
from summon.cli.knob import add_knob_arguments
from summon.core.options import above, add_options, at_least
from summon.core.version import __version__
from summon.serve.control import ControlConfig
from summon.serve.options import ServeOptions
from summon.serve.queue import EngineConfig

EXIT_USAGE = 2
HEAVY = "summon.cli.commands"  # the commands that load models, imported when one of them runs
LIGHT = "summon.cli.recipes"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("summon").setLevel(logging.INFO)
    for noisy in ("accelerate", "transformers", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- commands -------------------------------------------------------------------------------------


















# --- parser ---------------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option that has a default worth showing (not None, not a bare flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


_FORMATTER = _Formatter
CONTROLLER = "controller"  # the prefix of the flags of ControlConfig: --controller-window, ...
_KNOB_FLAGS = ("--budget", "--max-drop", "--threshold", "--guaranteed")


class _Parser(argparse.ArgumentParser):
    """argparse with a plainer message for two knob flags at once, and "did you mean" for a mistyped choice
    (a command, ``--policy``, ``--format``)."""

    def error(self, message: str):
        if "not allowed with argument" in message and any(flag in message for flag in _KNOB_FLAGS):
            message += (f"; the knob flags {', '.join(_KNOB_FLAGS)} are mutually exclusive: give at most one "
                        "(--delta goes with --guaranteed; --unit only sets the cost unit)")
        super().error(message + _did_you_mean(message))


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")


def _did_you_mean(message: str) -> str:
    """``". Did you mean 'train'?"`` for argparse's invalid-choice message when a choice is close, else ``""``."""
    found = _INVALID_CHOICE.search(message)
    if not found:
        return ""
    choices = re.findall(r"'([^']*)'", found["choices"])
    close = difflib.get_close_matches(found["given"], choices, n=1, cutoff=0.6)
    return f". Did you mean {close[0]!r}?" if close else ""


class _SubParser(_Parser):
    """A sub-command whose options and positionals may come in any order
    (``summon train RECIPE a=1 --data-dir D b=2``, ``summon predict MODEL --budget 0.4 "text"``)."""

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _FORMATTER)  # defaults shown on every sub-command's --help
        super().__init__(*args, **kwargs)
        self._later: list[tuple[Any, str, str, str]] = []

    def options_of(self, group: Any, owner: str, *, prefix: str = "") -> None:
        """Flags derived from the dataclass ``owner`` (``"module:Class"``, :func:`summon.core.options.add_options`)
        into ``group``, added when this command is parsed or its help shown: the class's module may import torch,
        which ``summon --help`` and the other commands' parsing must not wait for."""
        module, name = owner.split(":")
        self._later.append((group, module, name, prefix))

    def complete(self) -> _SubParser:
        """Add the flags :meth:`options_of` put off (importing their modules now); returns the parser."""
        while self._later:
            group, module, name, prefix = self._later.pop(0)
            add_options(group, getattr(importlib.import_module(module), name), prefix=prefix)
        return self

    def format_help(self) -> str:
        self.complete()
        return super().format_help()

    def parse_known_args(self, args=None, namespace=None):
        self.complete()
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


def _add_data(p: argparse.ArgumentParser, what: str, *, required: bool = True, text: str = DATA_HELP,
              aliases: Sequence[str] = ()) -> None:
    p.add_argument("--data", *aliases, dest="data", required=required, help=text)
    p.add_argument("--data-dir", help="local data catalog folder (default $SUMMON_DATA_DIR)")
    p.add_argument("--limit", type=at_least(1), help=f"{what} the first N rows only (default: all)")


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
    p.add_argument("--report-to", metavar="TRACKER[,TRACKER]", default=None,
                   type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
                   help="also log the training metrics to these accelerate trackers, comma-separated (tensorboard, "
                   "mlflow, wandb, ...; tensorboard and mlflow write offline under OUTPUT_DIR/trackers): "
                   "train.report_to")
    p.set_defaults(run=(HEAVY, "cmd_train"))


def _parser_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate saved predictors on a split, with cost, and write a report",
                       formatter_class=_FORMATTER)
    p.add_argument("predictors", nargs="+", help="predictor directories (the first is the cost reference)")
    _add_data(p, "evaluate")
    p.add_argument("--out", help="folder for report.json, report.md and report.png (and plots per staged model)")
    p.add_argument("--no-latency", action="store_true", help="count FLOPs but skip timing")
    p.add_argument("--max-seconds", type=at_least(0.0), default=10.0, help="time budget for latency per model")
    p.add_argument("--speedup", action="store_true", help="staged predictors: measure wall-clock speed-up")
    add_knob_arguments(p)
    _add_device(p)
    p.set_defaults(run=(HEAVY, "cmd_eval"))


def _parser_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit temperatures, costs and thresholds of a staged predictor on held-out "
                       "data", formatter_class=_FORMATTER)
    p.add_argument("predictor", help="an early-exit model or a cascade directory (updated in place; the previous "
                   "calibration is kept under adaptive_previous)")
    _add_data(p, "use")
    _add_calibration_options(p)
    _add_device(p)
    p.set_defaults(run=(HEAVY, "cmd_calibrate"))


def _parser_auto(sub) -> None:
    p = sub.add_parser("auto", help="from a teacher, data and a target to the cheapest predictor that keeps its "
                       "promise, across every method", formatter_class=_FORMATTER,
                       description="Build candidates from every method that fits the teacher's task (early exit on "
                       "the frozen teacher, the continuing cascade, n-gram and truncated students by KD alone and as "
                       "cascade first stages, int8 copies, the teacher itself), cheapest to train first, within --time; "
                       "measure every candidate's accuracy-vs-cost curve on the same selection rows of --heldout; "
                       "choose the cheapest point at the target and certify its drop from the teacher on "
                       "certification rows nothing else saw. Writes OUT/predictor (servable as it is) and "
                       "OUT/report/report.{md,png,json}. Running the same command again continues an interrupted "
                       "run. Exit code 0 when a predictor was chosen, 1 when none met the target.")
    p.add_argument("teacher", nargs="?", metavar="TEACHER", help="the teacher: a summon predictor folder, a Hugging "
                   "Face classifier folder or hf:ID")
    p.add_argument("--dry-run", action="store_true", help="list the candidates, the plan and each one's estimated "
                   "time on this machine; train and write nothing")
    p.options_of(p.add_argument_group("search (the fields of summon.search.config.AutoConfig)"),
                 "summon.search.config:AutoConfig")
    p.set_defaults(run=(HEAVY, "cmd_auto"))


def _add_calibration_options(p: _SubParser) -> None:
    """The options of ``summon calibrate`` besides the data (``summon quantize`` takes them too): a flag for every
    field of :class:`~summon.adaptive.calibration.CalibrationSpec` (derived from it, so a new field is a new flag),
    the knob flags that give its rule, value, delta and cost unit, and ``--against``."""
    spec = p.add_argument_group("calibration (the fields of summon.adaptive.calibration.CalibrationSpec)")
    p.options_of(spec, "summon.adaptive.calibration:CalibrationSpec")
    add_knob_arguments(p, threshold=False)
    p.add_argument("--against", choices=["reference", "gold"], default=argparse.SUPPRESS,
                   help="--max-drop: measure the drop against the full model's answers or the gold labels "
                   "(default: reference)")
    p.add_argument("--no-latency", action="store_true", help="skip measuring per-stage milliseconds")
    p.add_argument("--table-rows", type=at_least(0), default=24, help="rows of the threshold table to print (0: all)")


def _parser_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="an int8 copy of a predictor (dynamic int8 linear layers, CPU), re-calibrated "
                       "on held-out data", formatter_class=_FORMATTER,
                       description="Write an int8 copy of a predictor: every linear layer of its models dynamic int8 "
                       "(torch.ao.nn.quantized.dynamic.Linear), for plain predictors, early exit, cascades (local "
                       "stages; a remote one is left as it is served) and progressive ensembles. The fp32 weights "
                       "are saved as they are, with a 'quantization' manifest section that loading applies again "
                       "(on the CPU only). The fp32 calibration is never carried over: with --data the copy is "
                       "calibrated on it (the options of summon calibrate); without, it is saved uncalibrated.")
    p.add_argument("model", help="a predictor directory (plain, early exit, cascade or progressive ensemble)")
    p.add_argument("out", help="directory to write the int8 predictor to (a new one: MODEL stays fp32)")
    p.add_argument("--dtype", default="int8", choices=["int8"], help="weight type of the linear layers")
    _add_data(p, "calibrate on", required=False, aliases=["--calibrate-data"],
              text=f"held-out split to calibrate the int8 copy on (predictors with two stages or more): {DATA_HELP}; "
              "without it the "
              "copy is saved uncalibrated")
    _add_calibration_options(p)
    p.add_argument("--device", default="auto", help="auto or cpu: dynamic int8 runs on the CPU only")
    p.set_defaults(run=(HEAVY, "cmd_quantize"))


def _parser_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict labels; one JSON object per input (label, probabilities, stage, "
                       "cost)", formatter_class=_FORMATTER,
                       description="Predict labels and write one JSON object per input (label, probabilities, "
                       "the stage that answered and its cost), streaming: a file or "
                       "pipe larger than memory is read, predicted and written one window of rows at a time.")
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("texts", nargs="*", default=[], help="texts to classify (or use --file); pair tasks: TEXT<TAB>TEXT_PAIR")
    p.add_argument("--file", help="inputs: .jsonl ('text', 'text_pair' or 'tokens'), .csv/.tsv (a 'text' column), "
                   ".txt (one per line), any of them .gz, or - for standard input (lines of text)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="format of --file (auto: from the extension; standard input: txt)")
    p.add_argument("--out", help="write JSON lines to this file (default: standard output)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="rows per batch")
    p.add_argument("--deadline-ms", type=above(0.0), default=None, metavar="MS",
                   help="cap each window of rows (up to 1,024 read together) at this many milliseconds: "
                   "no row goes past the last stage whose measured latency fits (needs a calibration with latency)")
    add_knob_arguments(p)
    _add_device(p)
    p.set_defaults(run=(HEAVY, "cmd_predict"))


def _parser_other(sub) -> None:
    p = sub.add_parser("cascade", help="build a cascade from saved predictors and logits-server URLs, cheapest first",
                       formatter_class=_FORMATTER)
    p.add_argument("stages", nargs="+", help="predictor directories or http://host:port of `summon serve-logits`")
    p.add_argument("--out", required=True, help="cascade directory to write (then run summon calibrate on it)")
    p.add_argument("--timeout", type=above(0.0), default=10.0, help="seconds to wait for a remote stage")
    _add_device(p)
    p.set_defaults(run=(HEAVY, "cmd_cascade"))

    p = sub.add_parser("serve-logits", help="serve a predictor's logits over HTTP (a remote cascade stage)",
                       formatter_class=_FORMATTER)
    p.add_argument("predictor", help="a predictor directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=at_least(0, 65535), default=8080, help="TCP port to listen on (0: any free port)")
    p.add_argument("--name", default="teacher", help="the stage name the server reports in /v1/info")
    p.add_argument("--max-body-bytes", type=at_least(1), default=16 * 1024 * 1024,
                   help="largest request body; a larger one is answered 413")
    p.add_argument("--max-rows", type=at_least(1), default=1024, help="most inputs per request; more are answered 413")
    _add_device(p)
    p.set_defaults(run=(HEAVY, "cmd_serve_logits"))

    _parser_serve(sub)

    p = sub.add_parser("recipes", help="list, show or copy the shipped recipes", formatter_class=_FORMATTER)
    p.add_argument("action", choices=["ls", "show", "cp"],
                   help="ls: list them with what they do; show NAME: print one; cp NAME [DEST]: copy one to edit")
    p.add_argument("name", nargs="?", help="recipe name (show, cp)")
    p.add_argument("dest", nargs="?", help="cp: file or folder to copy to (default: the current folder)")
    p.set_defaults(run=(LIGHT, "cmd_recipes"))

    p = sub.add_parser("quickstart", help="offline end-to-end demo: fine-tune, distil, evaluate, report",
                       formatter_class=_FORMATTER)
    p.add_argument("--out", default="summon_quickstart", help="output folder")
    p.add_argument("--max-seconds", type=at_least(0.0), default=6.0, help="latency time budget per model")
    p.set_defaults(run=(HEAVY, "cmd_quickstart"))


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _model_spec(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=MODEL`` or ``MODEL`` (named after its folder) -> ``(name, model)``."""
    name, sep, model = text.partition("=")
    if sep and _MODEL_NAME.match(name) and model:
        return name, model
    if sep and "/" not in name and "\\" not in name:
        raise argparse.ArgumentTypeError(f"{text!r}: in NAME=MODEL the name takes letters, digits, '.', '_' and '-' "
                                         "(starting with a letter or digit), and MODEL must not be empty")
    tail = re.split(r"[/\\:]", text.rstrip("/\\"))[-1]
    derived = re.sub(r"[^A-Za-z0-9._-]", "-", tail).lstrip("._-")
    if not derived:
        raise argparse.ArgumentTypeError(f"cannot name the model {text!r} after its folder; give NAME={text}")
    return derived, text


def _parser_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve predictors over HTTP: /v1/predict with a per-request knob, cross-request "
                       "batching, /metrics, a demo page", formatter_class=_FORMATTER,
                       description="Serve one or more predictors (staged ones take a knob per request) with one "
                       "engine: bounded queues, batches formed across requests, explicit overload (503/429 with "
                       "Retry-After). Routes: POST /v1/predict, GET /v1/models, /v1/info, /health, /ready, /metrics, "
                       "/docs, the demo page at /, and summon-logits/1 under /models/NAME. On SIGTERM: /ready answers "
                       "503, new requests are refused, queued ones finish within --drain-seconds, then it exits.")
    p.add_argument("models", nargs="+", type=_model_spec, metavar="[NAME=]MODEL",
                   help="predictor directories, NAME=DIR to name one (default: the folder's name); the first is the "
                   "default model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=at_least(0, 65535), default=8080, help="TCP port to listen on (0: any free port)")
    engine = p.add_argument_group("engine (the fields of summon.serve.queue.EngineConfig)")
    add_options(engine, EngineConfig)
    add_options(p.add_argument_group("budget controllers (the fields of summon.serve.control.ControlConfig)"),
                ControlConfig, prefix=CONTROLLER)
    add_options(p.add_argument_group("HTTP app (the fields of summon.serve.options.ServeOptions)"), ServeOptions)
    _add_device(p)
    _add_ray_arguments(p)
    p.set_defaults(run=(HEAVY, "cmd_serve"))


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    ray = p.add_argument_group("Ray Serve (--ray; pip install 'summon[ray]')",
                               "The same app in a Ray Serve deployment, one engine per replica, on Ray's HTTP proxy "
                               "at --host:--port (joins the cluster at $RAY_ADDRESS, else starts a local one). A "
                               "cascade's teacher runs as a deployment of its own, scaled apart from the students.")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of one uvicorn process")
    ray.add_argument("--replicas", type=at_least(1), default=1,
                     help="replicas of the models' deployment (with --max-replicas: the fewest)")
    ray.add_argument("--max-replicas", type=at_least(1), help="autoscale the models' deployment between --replicas "
                     "and this many replicas")
    ray.add_argument("--max-ongoing-requests", type=at_least(1), help="requests one replica holds at once "
                     "(default: 2 x --max-batch-rows, so batches can fill)")
    ray.add_argument("--max-queued-requests", type=at_least(-1), help="requests Ray queues per proxy before "
                     "answering --overload-status with Retry-After (default: 2 x --max-ongoing-requests; -1: no bound)")
    ray.add_argument("--teacher-replicas", type=at_least(1), default=1,
                     help="replicas of each cascade teacher's deployment (with --teacher-max-replicas: the fewest)")
    ray.add_argument("--teacher-max-replicas", type=at_least(1), help="autoscale each teacher's deployment up to this")
    ray.add_argument("--teacher-timeout", type=above(0.0), default=10.0, help="seconds before a teacher's rows are "
                     "answered by the student (marked degraded)")
    ray.add_argument("--replica-cpus", type=at_least(0.0), default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--replica-gpus", type=at_least(0.0), default=0.0, help="GPUs Ray reserves per replica")
    ray.add_argument("--write-config", metavar="FILE", help="write a Ray Serve config file for these models and "
                     "options (run it with: serve run FILE, or serve deploy FILE on a cluster) and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="summon", description="Distil, exit early and cascade expensive models.",
                     formatter_class=_FORMATTER)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (accelerate, transformers)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or SUMMON_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", parser_class=_SubParser)
    for add in (_parser_train, _parser_eval, _parser_calibrate, _parser_quantize, _parser_predict, _parser_auto,
                _parser_other, add_export_parser):
        add(sub)
    return parser


def command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function of the chosen sub-command, imported now: building the parser (``--help``, ``--version``)
    imports no model code, and ``summon recipes`` none either. Not an import to dodge a cycle: the commands
    module sits above this one and imports everything below it."""
    module, name = args.run
    return getattr(importlib.import_module(module), name)


# A path that is there and in the way, missing its folder, or closed to this user: the user's to fix, never a bug.
PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_PATH_ADVICE = {
    FileExistsError: "something is already there; choose another path, or move it away yourself first",
    NotADirectoryError: "a part of the path is a file, not a folder; choose another path",
    IsADirectoryError: "it is a folder where a file is meant; give a file's path",
    PermissionError: "this user may not read or write it; fix its permissions, or choose another path",
}


def path_problem(err: OSError) -> str:
    """``PATH: what is wrong (errno text); what to do`` for an error about a path."""
    advice = next((text for kind, text in _PATH_ADVICE.items() if isinstance(err, kind)), "check the path")
    return f"{err.filename}: {err.strerror or type(err).__name__}; {advice}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse has printed
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    if args.version:
        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    debug = args.debug or bool(os.environ.get("SUMMON_DEBUG"))
    try:
        return command(args)(args)
    except (ValueError, FileNotFoundError, StageUnavailable) as err:
        if debug:
            raise
        print(f"summon: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("summon: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except PATH_ERRORS as err:  # a path the user gave that cannot be used as it is: name it (a summon check missed it)
        if debug or not err.filename:
            raise
        print(f"summon: error: {path_problem(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # a bug or an environment problem: one line, the traceback on request
        if debug:
            raise
        print(f"summon: unexpected error: {type(err).__name__}: {err}. Rerun with --debug (or SUMMON_DEBUG=1) "
              "for the traceback, and report it if it looks like a bug in summon", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
