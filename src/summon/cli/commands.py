"""The ``summon`` commands that load models: train, eval, calibrate, quantize, predict, cascade, serve,
serve-logits, export, quickstart. :mod:`summon.cli.main` builds the parser without importing this module, so ``summon --help``,
``--version`` and ``summon recipes`` start in a fraction of a second; a command's first run imports what it needs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import summon
from summon.adaptive.calibration import Calibration, CalibrationSpec
from summon.adaptive.knob import Knob
from summon.api import QUANTIZED
from summon.cli.inputs import check_inputs, read_inputs
from summon.cli.main import CONTROLLER
from summon.cli.quickstart import run_quickstart
from summon.core.config import to_dict
from summon.core.files import check_destination, check_report_folder
from summon.core.options import flags, given
from summon.models.quantize import dynamic_linears, quantized_device
from summon.predictors.huggingface import load_plain
from summon.predictors.saved import read_json_manifest
from summon.predictors.st_export import ST_FORMAT, export, export_format
from summon.search.auto import run_auto
from summon.search.config import AutoConfig
from summon.serve.app import FullModel, create_server_app, run_server
from summon.serve.control import ControlConfig
from summon.serve.engine import Engine, EngineConfig
from summon.serve.logits_server import serve
from summon.serve.options import ServeOptions, served_engine_config
from summon.serve.ray_app import (
    RayServeOptions,
    ray_deployments,
    run_ray_server,
    serve_config,
    write_serve_config,
)
from summon.training.loop import train
from summon.training.recipe import load_run_config

PREDICT_WINDOW = 1024  # rows read, predicted and written together by summon predict


def knob_from_args(args: argparse.Namespace) -> Knob:
    """The :class:`Knob` the flags describe (validated: ranges, at most one, --delta only with --guaranteed)."""
    if args.delta is not None and args.guaranteed is None:
        raise ValueError(f"--delta {args.delta} is the failure probability of --guaranteed; give --guaranteed E "
                         "with it (or drop --delta)")
    return Knob.of(budget=args.budget, max_drop=args.max_drop, threshold=getattr(args, "threshold", None),
                   guaranteed=args.guaranteed, delta=args.delta, unit=args.unit)


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.report_to:
        overrides.append(f"train.report_to={json.dumps(args.report_to)}")
    cfg = load_run_config(args.recipe, overrides)
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    # train() writes config.yaml once its resume checks pass: a refused resume leaves the old one as it was
    model_dir = train(cfg)
    _print_summary(model_dir)
    return 0


def _print_summary(model_dir: Path) -> None:
    """What ``summon train`` saved, from its manifest: a plain or early-exit predictor's eval metrics and cost, or a
    progressive ensemble's accuracy after each prefix (the manifest just written is read as it is: the ensemble
    format is not the plain predictor's, and loading checks it, not this summary)."""
    manifest = read_json_manifest(model_dir) or {}
    metrics = (manifest.get("metrics") or {}).get("eval") or {}
    costs = manifest.get("costs") or {}
    shown = ", ".join(_metric(k, v) for k, v in metrics.items() if k != "n" and _shown(v))
    print(f"saved predictor: {model_dir}")
    if shown:
        print(f"eval ({manifest['metrics'].get('eval_data')}): {shown}")
    if costs.get("params") and costs.get("flops_per_example"):
        print(f"cost: {costs['params'] / 1e6:.2f}M params, {costs['flops_per_example']:.4g} FLOPs/example")


def _shown(value: Any) -> bool:
    return isinstance(value, float) or (isinstance(value, list) and bool(value)
                                         and all(isinstance(x, float) for x in value))


def _metric(name: str, value: float | list[float]) -> str:
    return f"{name} {value:.4f}" if isinstance(value, float) else f"{name} [{', '.join(f'{x:.4f}' for x in value)}]"


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``summon eval``: every predictor on ``--data``, printed, and with ``--out`` a report written there (a
    folder: checked before any model loads); returns 0."""
    if args.out:
        check_report_folder(args.out, option="--out", sources={**{p: f"the predictor {p}" for p in args.predictors},
                                                               args.data: "the evaluation data"})
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
    if "exit_f1" in result:  # a tagger: accuracy below is whole-sentence accuracy (every tag right)
        print(f"  span F1 per exit: {', '.join(f'{f:.4f}' for f in result['exit_f1'])}; 'accuracy' below is the share "
              "of sentences tagged entirely right")
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
    keywords = calibration_keywords(args)  # validated before the model loads
    predictor = summon.load(args.predictor, device=args.device)
    calibration = summon.calibrate(predictor, args.data, latency=not args.no_latency, data_dir=args.data_dir,
                                   limit=args.limit, **keywords)
    _print_calibration(calibration, args.table_rows)
    return 0


KNOB_FLAGS = {"--budget": "budget", "--max-drop": "max_drop", "--guaranteed": "guaranteed", "--delta": "delta",
              "--unit": "unit"}  # None unless given


def calibration_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``summon.calibrate``/``summon.quantize`` that the flags give: the knob (validated), the
    cost unit, ``--against`` and every :class:`CalibrationSpec` flag given (the spec's defaults fill the rest)."""
    knob = knob_from_args(args)
    out = {"budget": knob.budget, "max_drop": knob.max_drop, "guaranteed": knob.guaranteed, "unit": args.unit,
           "against": getattr(args, "against", None), **given(args, CalibrationSpec)}
    if args.delta is not None:
        out["delta"] = args.delta
    return out


def calibration_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that set how a predictor is calibrated (exactly those on the command line)."""
    spec = flags(CalibrationSpec)
    found = [flag for flag, dest in KNOB_FLAGS.items() if getattr(args, dest) is not None]
    found += [spec[name][0] for name in given(args, CalibrationSpec)]
    found += ["--against"] * ("against" in args) + ["--no-latency"] * args.no_latency
    return found + [flag for flag, dest in (("--data-dir", "data_dir"), ("--limit", "limit"))
                    if getattr(args, dest) is not None]


def cmd_quantize(args: argparse.Namespace) -> int:
    """Run ``summon quantize``: an int8 copy of ``args.model``, calibrated on ``--data`` when given, written to
    ``args.out`` (:func:`summon.quantize`), a new or empty folder apart from the model's (checked first); returns 0."""
    keywords = calibration_keywords(args)  # every flag is checked before the model loads
    given_flags = calibration_flags(args)
    if args.data is None and given_flags:
        them = "it" if len(given_flags) == 1 else "them"
        raise ValueError(f"{', '.join(given_flags)} {'sets' if len(given_flags) == 1 else 'set'} how the int8 copy is "
                         f"calibrated; give --data SPLIT (held-out rows) with {them}, or drop {them}")
    quantized_device(args.device, "--device")
    check_destination(args.out, what="the int8 predictor", option="OUT", sources={args.model: QUANTIZED})
    int8 = summon.quantize(args.model, dtype=args.dtype, calibrate_on=args.data, out=args.out,
                           latency=not args.no_latency, data_dir=args.data_dir, limit=args.limit, **keywords)
    layers = sum(dynamic_linears(model) for model in _models(int8))
    print(f"quantized {args.model} ({int8.kind}): {layers} linear layers dynamic int8 "
          f"({int8.quantization.dtype}, engine {int8.quantization.engine}); runs on the CPU")
    if int8.calibration is not None:
        _print_calibration(int8.calibration, args.table_rows)
    elif int8.num_stages > 1:  # a one-stage predictor has nothing to calibrate
        print(f"uncalibrated: the fp32 calibration is not carried over; run `summon calibrate {args.out} --data SPLIT` "
              "before giving it a knob (without one every input runs to the last stage)")
    print(f"int8 predictor written to {args.out} (its fp32 weights, quantized again when it loads)")
    return 0


def _models(predictor: Any) -> list[Any]:
    """The torch models of a predictor: its model, a cascade's local stages' or an ensemble's members'."""
    if hasattr(predictor, "model"):
        return [predictor.model]
    holders = getattr(predictor, "stages", None) or getattr(predictor, "members", [])
    return [h.predictor.model for h in holders if hasattr(h, "predictor")]


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
    """Run ``summon serve-logits``: one predictor's reference model behind ``summon-logits/1`` (a remote cascade
    stage; a staged predictor answers at full depth); returns 0 when stopped."""
    predictor = summon.load(args.predictor, device=args.device)
    serve(FullModel(predictor), host=args.host, port=args.port, name=args.name, max_body_bytes=args.max_body_bytes,
          max_rows=args.max_rows)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``summon serve``: load every model, serve them with one engine until SIGTERM, drain, and end the process
    with exit code 0 (``os._exit``: within the drain window, see below)."""
    names = [name for name, _ in args.models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two models are named {', '.join(map(repr, repeated))}; name them apart with NAME=MODEL")
    if args.ray:
        return serve_ray(args)
    ray_only = [flag for flag, given in RAY_FLAGS.items() if given(args)]
    if ray_only:
        raise ValueError(f"{', '.join(ray_only)} {'goes' if len(ray_only) == 1 else 'go'} with --ray (Ray Serve); add "
                         "--ray or drop it")
    app_options = given(args, ServeOptions)
    config = served_engine_config(ServeOptions(**app_options), **engine_flags(args))  # checked before loading
    models = {name: summon.load(path, device=args.device) for name, path in args.models}
    app = create_server_app(Engine(models, **config.flat()), **app_options)
    print(f"summon: serving {', '.join(names)} on http://{args.host}:{args.port}/ (demo /, docs /docs, metrics "
          "/metrics); Ctrl-C or SIGTERM drains and stops", file=sys.stderr, flush=True)
    run_server(app, host=args.host, port=args.port)
    print("summon: drained and stopped", file=sys.stderr, flush=True)
    # Everything is answered and nothing summon writes is pending: end the process now. Python's own finalization
    # takes about a second with torch loaded (past the drain window), and aborts in torch's C++ runtime when a
    # batch was still inside the model as the window closed.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


RAY_FLAGS = {"--write-config": lambda a: a.write_config is not None, "--replicas": lambda a: a.replicas != 1,
             "--max-replicas": lambda a: a.max_replicas is not None,
             "--max-ongoing-requests": lambda a: a.max_ongoing_requests is not None,
             "--max-queued-requests": lambda a: a.max_queued_requests is not None,
             "--teacher-replicas": lambda a: a.teacher_replicas != 1,
             "--teacher-max-replicas": lambda a: a.teacher_max_replicas is not None,
             "--teacher-timeout": lambda a: a.teacher_timeout != 10.0, "--replica-cpus": lambda a: a.replica_cpus != 1.0,
             "--replica-gpus": lambda a: a.replica_gpus != 0.0}


def engine_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's options the flags of ``summon serve`` give (exactly those on the command line), flat as
    :meth:`EngineConfig.of` takes them: :class:`EngineConfig`'s fields and :class:`ControlConfig`'s."""
    return {**given(args, EngineConfig), **given(args, ControlConfig, prefix=CONTROLLER)}


def ray_options(args: argparse.Namespace) -> RayServeOptions:
    """The :class:`RayServeOptions` of ``summon serve --ray``'s flags."""
    resources = {"num_cpus": args.replica_cpus, **({"num_gpus": args.replica_gpus} if args.replica_gpus else {})}
    teacher = _scaling(args.teacher_replicas, args.teacher_max_replicas, "--teacher-replicas", "--teacher-max-replicas")
    return RayServeOptions.of(
        **engine_flags(args), **given(args, ServeOptions), device=args.device,
        **_scaling(args.replicas, args.max_replicas, "--replicas", "--max-replicas"),
        max_ongoing_requests=args.max_ongoing_requests, max_queued_requests=args.max_queued_requests,
        ray_actor_options=resources,
        teacher_replicas=teacher["num_replicas"], teacher_autoscaling_config=teacher.get("autoscaling_config"),
        teacher_ray_actor_options=dict(resources), teacher_timeout_s=args.teacher_timeout)


def _scaling(replicas: int, most: int | None, low: str, high: str) -> dict[str, Any]:
    """``num_replicas``, or an autoscaling config between ``replicas`` and ``most``."""
    if most is None:
        return {"num_replicas": replicas}
    if most < replicas:
        raise ValueError(f"{high} {most} is below {low} {replicas}; give {high} at least {replicas}")
    return {"num_replicas": None, "autoscaling_config": {"min_replicas": replicas, "max_replicas": most}}


def serve_ray(args: argparse.Namespace) -> int:
    """``summon serve --ray``: write a Ray Serve config (``--write-config``), or deploy the models with
    ``serve.run`` on Ray's proxy at ``--host:--port`` until SIGTERM or Ctrl-C, then shut Serve down."""
    models, options = dict(args.models), ray_options(args)
    if args.write_config:
        out = write_serve_config(args.write_config, serve_config(models, options, host=args.host, port=args.port))
        print(f"wrote {out}; run it with: serve run {out}  (on a cluster: serve deploy {out})")
        return 0
    deployments = ray_deployments(models, options=options)
    teachers = f"; teachers apart: {', '.join(deployments.teachers)}" if deployments.teachers else ""
    run_ray_server(deployments.app, host=args.host, port=args.port, options=options.app, ready=lambda url: print(
        f"summon: serving {', '.join(models)} on Ray Serve at {url} ({deployments.options.ongoing()} ongoing requests "
        f"per replica{teachers}); Ctrl-C or SIGTERM shuts it down", file=sys.stderr, flush=True))
    print("summon: Ray Serve shut down", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    check_inputs(args.texts, args.file, args.format)  # before loading a model: fail fast
    knob = knob_from_args(args)
    predictor = summon.load(args.predictor, device=args.device)
    inputs = read_inputs(args.texts, args.file, task=predictor.task, fmt=args.format)
    rows = (pred.to_dict() for pred in predict_stream(predictor, inputs, knob=knob, batch_size=args.batch_size,
                                                      deadline_ms=args.deadline_ms))
    first = next(rows, None)  # the first window is read and predicted before --out is created
    if first is None:
        print(f"summon: no inputs in {'standard input' if args.file == '-' else args.file}; nothing to predict",
              file=sys.stderr)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        write_jsonl(itertools.chain([first] if first is not None else [], rows), out)
    finally:
        if args.out:
            out.close()
    return 0


def predict_stream(predictor: Any, inputs: Iterable[Any], *, knob: Knob | None = None, batch_size: int = 64,
                   window: int = PREDICT_WINDOW, deadline_ms: float | None = None) -> Iterator[Any]:
    """Predictions for a stream of inputs, ``window`` rows at a time: at most one window is held, so an input
    larger than memory streams through; ``deadline_ms`` caps each window. A one-stage predictor refuses a knob
    (:mod:`summon.adaptive.knob`)."""
    return predictor.iter_predict(inputs, knob=knob or Knob(), batch_size=batch_size, window=window,
                                  deadline_ms=deadline_ms)


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO, flush_every: int = PREDICT_WINDOW) -> int:
    """Write one JSON object per line, flushing every ``flush_every`` rows so a pipe sees results as they come."""
    count = 0
    for count, row in enumerate(rows, start=1):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if count % flush_every == 0:
            out.flush()
    out.flush()
    return count


def cmd_quickstart(args: argparse.Namespace) -> int:
    run_quickstart(Path(args.out), max_seconds=args.max_seconds)
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    """Run ``summon auto``: the plan with ``--dry-run``, else the search; 0 when a predictor was chosen, 1 when no
    candidate met the target (the report says what each reached)."""
    config = AutoConfig(teacher=args.teacher, **given(args, AutoConfig))
    result = run_auto(config, dry_run=args.dry_run, say=lambda line: print(line, file=sys.stderr, flush=True))
    if args.dry_run:
        print(f"summon auto --dry-run: {result['train_rows']} training rows, held-out rows "
              f"{result['heldout_rows']}; the teacher runs {result['teacher_ms_per_example_bs32']:.3f} ms per "
              f"example at batch 32 here; budget {result['time_budget_minutes']:g} min")
        for c in result["candidates"]:
            needs = f" (needs {', '.join(c['needs'])})" if c["needs"] else ""
            print(f"  {c['name']:<24} {c['method']:<16} ~{c['estimated_minutes']:>7.2f} min  floor cost "
                  f"{c['floor_cost']:.3f}{needs}")
        return 0
    chosen = result["chosen"]
    report = result["report"]["markdown"]
    if chosen is None:
        print(f"summon auto: no candidate met the target ({result['why']}); see {report}")
        return 1
    print(f"summon auto: chose {chosen['name']} at {chosen['cost_at_target']:.4f} of the teacher's FLOPs, drop "
          f"certified <= {chosen['certified_drop_points']:.2f} points (delta {config.delta:g}); saved to "
          f"{chosen['path']}; report {report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``summon export``: load ``args.model`` on the CPU and write it to ``args.out`` (a new or empty folder,
    :func:`~summon.core.files.check_destination`); returns 0.

    Raises:
        ValueError: If the model cannot be loaded or has no equivalent in ``args.format``, or ``args.out`` is not a
            new or empty folder apart from the model's.
    """
    check_destination(args.out, what="the export", option="OUT",
                      sources={args.model: "the predictor being exported"})  # before the model loads
    predictor = load_plain(args.model, device="cpu")
    chosen = export_format(predictor, args.format)
    out = export(predictor, args.out, format=chosen, option="OUT")
    if chosen == ST_FORMAT:
        print(f"wrote a sentence-transformers model to {out}; SentenceTransformer('{out}').encode(texts) returns "
              "the logits")
    else:
        print(f"wrote a Hugging Face model to {out}; load it with "
              f"transformers.AutoModelFor...Classification.from_pretrained('{out}')")
    return 0
