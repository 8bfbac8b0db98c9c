"""The serving engine: bounded queues, batches formed across requests, and the staged executor with one
threshold per row — plain Python and threads, apart from any transport (the HTTP app and Ray sit on top).

::

    engine = Engine({"sst2": summon.load("runs/exits")}, max_batch_rows=64, max_wait_ms=5)
    engine.start()
    future = engine.submit("sst2", ["a gem", "a mess"], knob=Knob(budget=0.4), deadline_ms=200)
    result = future.result()            # a Result: one Prediction per row, the operating point, timings
    engine.stop(drain_seconds=10)

**Lanes.** Each model has its own lane: a queue of two priorities bounded by ``max_queue_rows`` rows, and one
batcher thread. The batcher takes requests in order — high priority first, a low-priority request counting
as high once it has waited ``age_ms`` (so it cannot starve), first come first served within a level — into
one batch of at most ``max_batch_rows`` rows and ``max_batch_tokens`` tokens (a single larger request runs
alone), waiting at most
``max_wait_ms`` after the oldest queued request for more rows, and never past the earliest deadline in the
queue less the batch's expected run time.

**Tokens.** A request is featurized once, when it is admitted (on the caller's thread, not the batcher's),
where the served model tokenises its input itself: a plain model or early exit (word pieces, as the model
sees them, special tokens included). The batcher counts those tokens against ``max_batch_tokens`` and the
batch-tokens histogram. A cascade or a progressive ensemble hands raw text to each stage, which tokenises it
its own way; its rows count whitespace-separated words instead.

**One forward pass for many knobs.** A staged predictor runs the whole batch in one call of
``run_examples`` with thresholds ``[rows, stages]``: each request's threshold on its rows, and ``-inf`` from
the stage its deadline caps it at (:meth:`~summon.adaptive.staged.StagedBase.deadline_stage`, for the
batch's rows in the time it has left). The executor regroups the rows that go on, from every request, into
full batches for the next stage; the answers are then split per request. Every row's answer equals
predicting its request alone at the same threshold. A plain predictor runs one ``predict`` call per batch
and takes no knob.

**Overload is answered, never absorbed.** :meth:`Engine.submit` refuses at once, raising:

===========================  =================================================================  ==============
exception                    when                                                               HTTP (suggested)
===========================  =================================================================  ==============
:class:`UnknownModel`        no model by that name (ValueError)                                 404
:class:`InfeasibleKnob`      a knob no operating point meets, or any knob for a plain predictor  422
                             (ValueError; ``cheapest`` holds the cheapest feasible budget)
:class:`TooLarge`            more rows than ``max_request_rows`` (or the queue holds), or an     413
                             input longer than ``max_input_chars`` (ValueError)
:class:`QueueFull`           the queue has no room for the rows (``retry_after_s``)              503 (or 429) with Retry-After
:class:`DeadlineUnmeetable`  the queued work ahead plus the rows' measured cost cannot finish    503
                             within ``deadline_ms``
:class:`Draining`            :meth:`Engine.stop` has begun                                       503
ValueError / TypeError       an input the predictor cannot take (names its index)               422
===========================  =================================================================  ==============

An accepted request's future can still fail with :class:`DeadlineUnmeetable` (its deadline passed while it
waited), :class:`Draining` (still queued when the drain window closed) or the model's own error.

**Degrade mode** (``degrade=True``): while a queue is past half full, each request's operating point is
lowered toward the cheapest one before anything is refused — at fill ``f`` its nominal cost ``c`` becomes
``c - (2f - 1)(c - cheapest)`` — and its :class:`Result` says ``degraded`` with the lowered budget as ``knob``.

**Budgets that hold** (``controller=True``): every budget knob served gets a
:class:`~summon.serve.control.BudgetController` that moves its threshold when the realised cost of its rows
exceeds the budget; :meth:`Engine.thresholds_in_force` says what is used.

**Counters** for the transport's metrics: :meth:`Engine.stats` (a :class:`~summon.serve.stats.ModelStats` per
model). :meth:`Engine.info` describes each model and its operating-point table (JSON-able).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from summon.adaptive.calibration import Calibration
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.adaptive.executor import Execution
from summon.adaptive.knob import KNOBS, Knob
from summon.adaptive.staged import StagedBase
from summon.adaptive.thresholds import ThresholdTable
from summon.predictor import Prediction, Predictor, as_batch, canonical_inputs
from summon.registry import suggest
from summon.serve.control import BudgetController, ControlConfig, ControlState
from summon.serve.stats import ModelStats

logger = logging.getLogger(__name__)

PRIORITIES = ("high", "low")
WARMUP_INPUTS = {"classification": "warm up", "pair_classification": ("warm up", "warm up"),
                 "token_classification": ["warm", "up"]}


# --- errors -------------------------------------------------------------------------------------------------


class EngineError(Exception):
    """A request the engine refused or could not finish; ``reason`` is its rejection reason in the stats."""

    reason = ""


class UnknownModel(ValueError):
    """No model by the name asked for."""


class InfeasibleKnob(EngineError, ValueError):
    """A knob no operating point can meet (or any knob for a plain predictor); ``cheapest`` is the cheapest
    feasible budget, when the model has a calibration."""

    reason = "infeasible_knob"

    def __init__(self, message: str, cheapest: float | None = None):
        super().__init__(message)
        self.cheapest = cheapest


class TooLarge(EngineError, ValueError):
    """A request over a size limit; ``limit`` names it (``max_request_rows``, ``max_queue_rows``,
    ``max_input_chars``) and ``allowed`` is its value."""

    reason = "too_large"

    def __init__(self, message: str, limit: str, allowed: int):
        super().__init__(message)
        self.limit, self.allowed = limit, allowed


class QueueFull(EngineError):
    """No room in the model's queue; ``retry_after_s`` estimates when there will be."""

    reason = "queue_full"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineUnmeetable(EngineError):
    """The deadline cannot be met (refused at submit), or passed while the request waited;
    ``estimate_ms`` is the estimate that refused it (None when it passed in the queue)."""

    reason = "deadline"

    def __init__(self, message: str, estimate_ms: float | None = None):
        super().__init__(message)
        self.estimate_ms = estimate_ms


class Draining(EngineError):
    """The engine is stopping: no new requests, and queued ones left when the drain window closed."""

    reason = "draining"


# --- configuration and results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """The engine's limits and behaviour (see the module docstring)."""

    max_batch_rows: int = 64
    max_batch_tokens: int | None = None  # tokens per batch (see the module docstring); None: rows bound batches
    max_wait_ms: float = 5.0
    max_queue_rows: int = 4096  # per model
    max_request_rows: int = 1024
    max_input_chars: int | None = None  # longest text of one input (all its texts or words together)
    age_ms: float = 200.0
    degrade: bool = False
    controller: bool = True
    max_controllers: int = 64  # budgets with a controller, per model (more distinct budgets run uncontrolled)
    control: ControlConfig = field(default_factory=ControlConfig)

    def __post_init__(self) -> None:
        for key in ("max_batch_rows", "max_queue_rows", "max_request_rows", "max_controllers"):
            _check_count(key, getattr(self, key))
        for key in ("max_input_chars", "max_batch_tokens"):
            if getattr(self, key) is not None:
                _check_count(key, getattr(self, key))
        for key in ("max_wait_ms", "age_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{key} must be a finite number of milliseconds >= 0, got {value!r}")
        for key in ("degrade", "controller"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{key} must be True or False, got {getattr(self, key)!r}")


def _check_count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive whole number, got {value!r}")


@dataclass
class Result:
    """One request's answer: a :class:`~summon.predictor.Prediction` per row, and how they were produced."""

    model: str
    predictions: list[Prediction]
    knob: Knob | None  # the knob the rows ran at: the request's, or the lowered budget when degraded (None: plain)
    requested: Knob | None  # the request's own knob
    threshold: float | None  # the confidence threshold in force (None: a plain predictor)
    calibrated_threshold: float | None  # what the knob sets on the calibration (differs when a controller moved it)
    stage_cap: int | None  # the last stage the deadline allowed, when it stopped rows earlier than the knob would
    degraded: bool
    queue_ms: float
    inference_ms: float  # the batch's time in the model
    batch: int  # the batch's number in this model's lane (from 1)
    batch_rows: int
    flops: list[float] | None = None  # per row: FLOPs of answering at its stage (calibrated staged predictors)
    request_id: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per row: the prediction's fields, its FLOPs, the operating point and the timings."""
        shared = {"threshold": json_float(self.threshold), "knob": knob_dict(self.knob), "degraded": self.degraded,
                  "queue_ms": self.queue_ms, "inference_ms": self.inference_ms}
        out = []
        for i, prediction in enumerate(self.predictions):
            row = prediction.to_dict()
            if self.flops is not None:
                row["flops"] = self.flops[i]
            out.append({**row, **shared})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The whole answer, JSON-able (thresholds ``"inf"``/``"-inf"`` as strings)."""
        return {"model": self.model, "request_id": self.request_id, "predictions": self.rows(),
                "knob": knob_dict(self.knob), "requested": knob_dict(self.requested),
                "threshold": json_float(self.threshold),
                "calibrated_threshold": json_float(self.calibrated_threshold), "stage_cap": self.stage_cap,
                "degraded": self.degraded, "queue_ms": self.queue_ms, "inference_ms": self.inference_ms,
                "batch_rows": self.batch_rows}


@dataclass(frozen=True)
class ThresholdsInForce:
    """A staged model's thresholds now: the default operating point's, and each controlled budget's."""

    default: float
    budgets: list[ControlState]


def json_float(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")


def knob_dict(knob: Knob | None) -> dict[str, Any] | None:
    """A knob's given values (``{}`` for the default operating point, None for none)."""
    if knob is None:
        return None
    out = {k: v for k, v in asdict(knob).items() if v is not None and k != "delta"}
    if knob.guaranteed is not None:
        out["delta"] = knob.delta
    return out


def knob_from(values: Mapping[str, Any] | None) -> Knob | None:
    """A :class:`Knob` from a request's JSON object (``{"budget": 0.4}``), or :class:`InfeasibleKnob` saying
    what is wrong with it."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise InfeasibleKnob(f"the knob must be an object such as {{\"budget\": 0.4}}, got {type(values).__name__}")
    unknown = sorted(set(values) - {*KNOBS, "delta", "unit"})
    if unknown:
        raise InfeasibleKnob(f"unknown knob key(s) {', '.join(map(repr, unknown))}; give one of "
                             f"{', '.join(KNOBS)} (with 'delta' for guaranteed, 'unit' for budget)")
    try:
        return Knob.of(**values)
    except (TypeError, ValueError) as err:
        raise InfeasibleKnob(str(err)) from None


# --- the engine ---------------------------------------------------------------------------------------------


class Engine:
    """Serves several named predictors (staged or plain) with cross-request batching; see the module docstring.

    Args:
        models: name -> predictor (``summon.load(...)``): staged ones (early exit, cascade, progressive) or plain.
        max_batch_rows: rows per batch (a single larger request runs alone), and the executor's batch size.
        max_batch_tokens: tokens per batch (None: no bound but the rows'); see the module docstring.
        max_wait_ms: how long the batcher waits after the oldest queued request for a batch to fill.
        max_queue_rows: rows queued per model before :class:`QueueFull`.
        max_request_rows: rows one request may carry.
        max_input_chars: characters one input may carry (None: no limit).
        age_ms: after this long a low-priority request is served as high.
        degrade: lower operating points while a queue is past half full (see the module docstring).
        controller: steer each budget's threshold by its realised cost (:mod:`summon.serve.control`).
        window, settle_rows, max_step, gain, relax_margin: the controllers' settings (:class:`ControlConfig`).
        max_controllers: distinct budgets per model that get a controller.
    """

    def __init__(self, models: Mapping[str, Any], *, max_batch_rows: int = 64, max_batch_tokens: int | None = None,
                 max_wait_ms: float = 5.0,
                 max_queue_rows: int = 4096, max_request_rows: int = 1024, max_input_chars: int | None = None,
                 age_ms: float = 200.0, degrade: bool = False, controller: bool = True, window: int = 512,
                 settle_rows: int = 32, max_step: int | None = None, gain: float = 1.0, relax_margin: float = 0.05,
                 max_controllers: int = 64):
        control = ControlConfig(window=window, settle_rows=settle_rows, max_step=max_step, gain=gain,
                                relax_margin=relax_margin)
        self.config = EngineConfig(max_batch_rows=max_batch_rows, max_batch_tokens=max_batch_tokens,
                                   max_wait_ms=max_wait_ms,
                                   max_queue_rows=max_queue_rows, max_request_rows=max_request_rows,
                                   max_input_chars=max_input_chars, age_ms=age_ms, degrade=degrade,
                                   controller=controller, max_controllers=max_controllers, control=control)
        self._lanes = {name: _Lane(name, predictor, self.config) for name, predictor in _check_models(models).items()}
        self._state: Literal["new", "running", "stopped"] = "new"
        self._lock = threading.Lock()

    @property
    def models(self) -> list[str]:
        return list(self._lanes)

    def predictor(self, model: str) -> Any:
        """The predictor served as ``model`` (for a transport's own routes: its task, its raw logits)."""
        return self._lane(model).predictor

    def _lane(self, model: str) -> _Lane:
        lane = self._lanes.get(model) if isinstance(model, str) else None
        if lane is None:
            raise UnknownModel(f"no model named {model!r}; this engine serves {', '.join(map(repr, self._lanes))}."
                               f"{suggest(str(model), list(self._lanes))}")
        return lane

    @property
    def ready(self) -> bool:
        """Started and not stopping (a transport's readiness also wants :meth:`warmup` done)."""
        return self._state == "running"

    def start(self) -> Engine:
        """Start one batcher thread per model. Requests submitted before this wait in the queue."""
        with self._lock:
            if self._state == "stopped":
                raise ValueError("this engine was stopped; make a new Engine to serve again")
            if self._state == "new":
                for lane in self._lanes.values():
                    lane.start()
                self._state = "running"
        return self

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting (new requests get :class:`Draining`), finish in-flight and queued work within
        ``drain_seconds``, fail what is still queued then with :class:`Draining`, and join the threads (a
        batch already in the model is always finished)."""
        if isinstance(drain_seconds, bool) or not isinstance(drain_seconds, int | float) or not drain_seconds >= 0:
            raise ValueError(f"drain_seconds must be a number of seconds >= 0, got {drain_seconds!r}")
        with self._lock:
            self._state = "stopped"
        until = time.monotonic() + drain_seconds
        for lane in self._lanes.values():
            lane.close()
        for lane in self._lanes.values():
            lane.drain(until)
        for lane in self._lanes.values():
            lane.abort()
            lane.join()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def submit(self, model: str, inputs: Any, *, knob: Knob | None = None, deadline_ms: float | None = None,
               priority: str = "high", request_id: str | None = None) -> Future:
        """Queue one request; returns a future resolving to a :class:`Result`.

        Args:
            model: the model's name.
            inputs: raw inputs as ``predict`` takes them (a list of texts, (text, pair) tuples or word lists;
                one string is one input).
            knob: the operating point (staged predictors only); None for the calibrated default.
            deadline_ms: the answer is wanted within this many milliseconds of now: refused at once if the
                queue and the rows' measured cost cannot meet it; rows stop at the last stage that fits.
            priority: ``"high"`` or ``"low"``.
            request_id: carried into the result (a transport's ``x-request-id``).

        Raises:
            UnknownModel, InfeasibleKnob, TooLarge, QueueFull, DeadlineUnmeetable, Draining: see the module
                docstring; ValueError or TypeError for an input the predictor cannot take, or a bad argument.
        """
        lane = self._lane(model)
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be 'high' or 'low', got {priority!r}")
        if knob is not None and not isinstance(knob, Knob):
            raise TypeError(f"knob must be a summon Knob (e.g. Knob(budget=0.4)) or None, got {type(knob).__name__}; "
                            "knob_from(dict) makes one from a request's JSON")
        if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int | float)
                                        or not 0 < deadline_ms < math.inf):
            raise ValueError(f"deadline_ms must be a positive number of milliseconds, got {deadline_ms!r}")
        if self._state == "stopped":
            raise lane.refused(Draining(f"model {model!r}: the server is draining and takes no new requests; retry on "
                                 "another replica"))
        return lane.admit(inputs, knob, deadline_ms, priority, request_id)

    def stats(self) -> dict[str, ModelStats]:
        """A snapshot of every model's counters, gauges and histograms."""
        return {name: lane.stats() for name, lane in self._lanes.items()}

    def thresholds_in_force(self) -> dict[str, ThresholdsInForce | None]:
        """Per staged model, the thresholds used now (None for a plain model)."""
        return {name: lane.thresholds_in_force() for name, lane in self._lanes.items()}

    def info(self) -> dict[str, dict[str, Any]]:
        """Per model, JSON-able: kind, task, labels, stages and their costs, the operating-point table, the
        default point and the thresholds in force."""
        return {name: lane.info() for name, lane in self._lanes.items()}

    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Run every model on placeholder inputs at these batch sizes, outside the queue and the counters."""
        for size in batch_sizes:
            _check_count("batch size", size)
        for lane in self._lanes.values():
            lane.warmup(batch_sizes)


def _check_models(models: Any) -> dict[str, Any]:
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict of name -> predictor (summon.load(...)), got "
                        f"{type(models).__name__}{' (empty)' if isinstance(models, Mapping) else ''}")
    for name, predictor in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"model names must be non-empty strings, got {name!r}")
        if not callable(getattr(predictor, "predict", None)) or not isinstance(getattr(predictor, "task", None), str):
            raise TypeError(f"model {name!r}: expected a summon predictor (summon.load(...)), got "
                            f"{type(predictor).__name__}")
    return dict(models)


# --- one model's lane: queue, batcher and execution ---------------------------------------------------------


@dataclass
class _Request:
    inputs: list[Any]  # raw, as given (plain predictors take these)
    examples: list[dict[str, Any]]  # canonical (staged predictors take these)
    pieces: list[Any] | None  # featurized at admission (plain models and early exit), else None
    tokens: int  # see the module docstring
    knob: Knob
    threshold: float | None  # what the knob sets on the calibration (staged)
    deadline: float | None  # time.monotonic() seconds
    priority: str
    request_id: str | None
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.examples)


@dataclass
class _Plan:
    """How one request's rows run in a batch."""

    knob: Knob | None
    threshold: float | None
    stage_cap: int | None = None
    degraded: bool = False
    controlled: bool = False  # at its budget controller's threshold: its rows feed the controller


@dataclass
class _Batch:
    requests: list[_Request]
    rows: int
    tokens: int
    fill: float  # the queue's fill when the batch was taken
    number: int


class _Lane:
    """One model: its bounded two-level queue, its batcher thread, its controllers and its counters."""

    def __init__(self, name: str, predictor: Any, config: EngineConfig):
        self.name, self.predictor, self.config = name, predictor, config
        self.staged = isinstance(predictor, StagedBase)
        self._tokenises = _tokenises(predictor, self.staged)
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Request]] = {p: deque() for p in PRIORITIES}
        self._queued_rows = dict.fromkeys(PRIORITIES, 0)
        self._in_flight_rows = 0
        self._busy = False
        self._closed = False
        self._batches = 0
        self._stats = ModelStats()
        self._ms_per_row: float | None = None  # measured, moving average
        self._controllers: dict[Knob, BudgetController] = {}
        self._thread: threading.Thread | None = None

    @property
    def calibration(self) -> Calibration | None:
        return self.predictor.calibration if self.staged else None

    # --- admission -----------------------------------------------------------------------------------

    def refused(self, err: EngineError) -> EngineError:
        """``err``, counted as a rejection (the caller raises it)."""
        with self._cond:
            self._stats.reject(err.reason)
        return err

    def admit(self, inputs: Any, knob: Knob | None, deadline_ms: float | None, priority: str,
              request_id: str | None) -> Future:
        raw = as_batch(inputs)
        examples = canonical_inputs(self.predictor.task, raw)
        knob = knob or Knob()
        try:
            self._check_size(raw)
            pieces, tokens = self._featurize(examples)
            threshold = self._threshold(knob)
            if deadline_ms is not None:
                self._check_deadline(len(raw), deadline_ms, priority)
        except EngineError as err:
            raise self.refused(err) from None
        request = _Request(raw, examples, pieces, tokens, knob, threshold, None if deadline_ms is None else
                           time.monotonic() + deadline_ms / 1000.0, priority, request_id)
        if not raw:  # nothing to queue
            plan = _Plan(knob if self.staged else None, threshold)
            request.future.set_result(self._result(request, plan, [], _Batch([], 0, 0, 0.0, 0), request.enqueued,
                                                   0.0))
            return request.future
        self._enqueue(request)
        return request.future

    def _check_size(self, raw: list[Any]) -> None:
        most, key = min((self.config.max_request_rows, "max_request_rows"),
                        (self.config.max_queue_rows, "max_queue_rows"))
        if len(raw) > most:
            raise TooLarge(f"model {self.name!r}: {len(raw)} inputs in one request; at most {most} ({key}): "
                           "split the request", key, most)
        most = self.config.max_input_chars
        for i, item in enumerate(raw if most is not None else ()):
            size = len(item) if isinstance(item, str) else sum(len(t) for t in item)
            if size > most:
                raise TooLarge(f"model {self.name!r}: input {i} has {size} characters; at most {most} "
                               "(max_input_chars): shorten or split it", "max_input_chars", most)

    def _featurize(self, examples: list[dict[str, Any]]) -> tuple[list[Any] | None, int]:
        """The model's own features of the rows, when it tokenises them itself (plain models and early exit),
        and the request's tokens (see the module docstring)."""
        if not examples:
            return None, 0
        if self._tokenises:
            pieces = self.predictor.inputs(examples) if self.staged else \
                self.predictor.featurizer.encode(examples, self.predictor.task)
            return pieces, sum(len(p["input_ids"]) for p in pieces)
        words = sum(len(ex["tokens"]) if "tokens" in ex else len(ex.get("text", "").split())
                    + len((ex.get("text_pair") or "").split()) for ex in examples)
        return None, words

    def _threshold(self, knob: Knob) -> float | None:
        """The threshold the knob sets on the calibration; :class:`InfeasibleKnob` for one nothing meets."""
        if not self.staged:
            if not knob.empty or knob.unit is not None:
                raise InfeasibleKnob(f"model {self.name!r} is a plain predictor (no stages): it answers every input "
                                     f"with the whole model and takes no knob; drop {knob.describe()}")
            return None
        try:
            if knob.unit is not None:
                self.predictor.stage_fractions(knob.unit)  # refuses a unit the calibration did not measure
            threshold = float(self.predictor.threshold_for(knob))
        except ValueError as err:
            raise InfeasibleKnob(f"model {self.name!r}: {err}", self._cheapest(knob.unit)) from None
        if knob.budget is not None and self.config.controller:
            self._add_controller(knob, threshold)
        return threshold

    def _cheapest(self, unit: str | None) -> float | None:
        try:
            table = _table(self.calibration, unit)
        except ValueError:  # a unit the calibration did not measure
            return None
        return None if table is None else min(p.cost for p in table.points)

    def _add_controller(self, knob: Knob, threshold: float) -> None:
        with self._cond:
            if knob in self._controllers or len(self._controllers) >= self.config.max_controllers:
                return
            calibration = self.calibration
            point = self.predictor.operating_point(knob)
            self._controllers[knob] = BudgetController(
                knob.budget, knob.unit, [p.threshold for p in calibration.table.points], threshold,
                None if point is None else point.exit_counts, self.config.control)

    def _check_deadline(self, rows: int, deadline_ms: float, priority: str) -> None:
        with self._cond:
            ahead = self._in_flight_rows + self._queued_rows["high"] + (
                self._queued_rows["low"] if priority == "low" else 0)
        floor = self._floor_ms_per_row()
        wait = ahead * (self._ms_per_row if self._ms_per_row is not None else floor)
        own = rows * floor
        if wait + own > deadline_ms:
            raise DeadlineUnmeetable(
                f"model {self.name!r}: deadline_ms={deadline_ms:g} cannot be met: about {wait:.3g} ms of queued work "
                f"ahead and at least {own:.3g} ms for {rows} rows (measured); give a later deadline or fewer rows, "
                "or retry when the queue is shorter", wait + own)

    def _floor_ms_per_row(self) -> float:
        """The least a row costs: the first stage's measured latency, else the measured mean, else 0."""
        calibration = self.calibration
        if calibration is not None and calibration.costs.ms:
            return float(calibration.costs.ms[0])
        return self._ms_per_row or 0.0

    def _enqueue(self, request: _Request) -> None:
        with self._cond:
            if self._closed:
                self._stats.reject("draining")
                raise Draining(f"model {self.name!r}: the server is draining and takes no new requests")
            queued = sum(self._queued_rows.values())
            if queued + request.rows > self.config.max_queue_rows:
                self._stats.reject("queue_full")
                retry = max(1.0, math.ceil((queued + self._in_flight_rows) * (self._ms_per_row or 0.0) / 1000.0))
                raise QueueFull(f"model {self.name!r}: the queue holds {queued} of {self.config.max_queue_rows} rows "
                                f"(max_queue_rows) and cannot take {request.rows} more; retry in {retry:g} s",
                                retry)
            self._queues[request.priority].append(request)
            self._queued_rows[request.priority] += request.rows
            self._stats.requests += 1
            self._cond.notify_all()

    # --- the batcher ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"summon-engine-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._serve(batch)
            except Exception as err:  # never let the thread die: the batch's requests get the error
                logger.exception("model %r: a batch of %d rows failed", self.name, batch.rows)
                self._fail([r for r in batch.requests if not r.future.done()], err)
            finally:
                with self._cond:
                    self._in_flight_rows -= batch.rows
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> _Batch | None:
        """The next batch (blocking); None once the lane is closed and its queue empty."""
        with self._cond:
            while not self._queued() and not self._closed:
                self._cond.wait()
            if not self._queued():
                return None
            self._wait_for_rows()
            return self._pop_batch() if self._queued() else None

    def _queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _wait_for_rows(self) -> None:
        """Wait (holding the condition) until a batch's rows are queued, ``max_wait_ms`` after the oldest
        request, or the earliest deadline less the batch's expected run time — whichever comes first."""
        while not self._closed and 0 < sum(self._queued_rows.values()) < self.config.max_batch_rows:
            queued = [r for q in self._queues.values() for r in q]
            until = min(r.enqueued for r in queued) + self.config.max_wait_ms / 1000.0
            deadlines = [r.deadline for r in queued if r.deadline is not None]
            if deadlines:
                run_s = (self._ms_per_row or self._floor_ms_per_row()) * self.config.max_batch_rows / 1000.0
                until = min(until, min(deadlines) - run_s)
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _next_queue(self, now: float) -> deque[_Request]:
        """High first; a low request older than ``age_ms`` counts as high (first come, first served)."""
        high, low = self._queues["high"], self._queues["low"]
        if not high:
            return low
        if low and now - low[0].enqueued >= self.config.age_ms / 1000.0 and low[0].enqueued < high[0].enqueued:
            return low
        return high

    def _pop_batch(self) -> _Batch:
        fill = sum(self._queued_rows.values()) / self.config.max_queue_rows
        most_tokens = self.config.max_batch_tokens or math.inf
        requests: list[_Request] = []
        rows, tokens, now = 0, 0, time.monotonic()
        while self._queued():
            queue = self._next_queue(now)
            if requests and (rows + queue[0].rows > self.config.max_batch_rows
                             or tokens + queue[0].tokens > most_tokens):
                break
            request = queue.popleft()
            self._queued_rows[request.priority] -= request.rows
            requests.append(request)
            rows, tokens = rows + request.rows, tokens + request.tokens
        self._in_flight_rows += rows
        self._busy = True
        self._batches += 1
        return _Batch(requests, rows, tokens, fill, self._batches)

    # --- running a batch -----------------------------------------------------------------------------

    def _serve(self, batch: _Batch) -> None:
        started = time.monotonic()
        live = [r for r in batch.requests if r.future.set_running_or_notify_cancel()]
        live = self._drop_expired(live, started)
        if not live:
            return
        rows = sum(r.rows for r in live)
        plans = [self._plan(r, rows, batch.fill, started) for r in live]
        outputs = self._execute(live, plans)
        seconds = time.monotonic() - started
        tokens = sum(r.tokens for r in live)
        done = [(r, p, out) for r, p, out in zip(live, plans, outputs, strict=True) if not isinstance(out, Exception)]
        for request, out in zip(live, outputs, strict=True):
            if isinstance(out, Exception):
                self._fail([request], out)
        self._observe(done, rows, tokens, seconds, started)
        for request, plan, predictions in done:
            request.future.set_result(self._result(request, plan, predictions, batch, started, seconds, rows))

    def _fail(self, requests: list[_Request], err: Exception) -> None:
        with self._cond:
            self._stats.failed += len(requests)
        for request in requests:
            _fail_running(request.future, err)

    def _drop_expired(self, requests: list[_Request], now: float) -> list[_Request]:
        live = []
        for request in requests:
            if request.deadline is not None and request.deadline <= now:
                waited = (now - request.enqueued) * 1000.0
                with self._cond:
                    self._stats.reject("deadline")
                self._fail([request], DeadlineUnmeetable(
                    f"model {self.name!r}: the deadline passed after {waited:.4g} ms in the queue; give a later "
                    "deadline or retry when the queue is shorter"))
            else:
                live.append(request)
        return live

    def _plan(self, request: _Request, batch_rows: int, fill: float, now: float) -> _Plan:
        """The request's threshold (its controller's, lowered in degrade mode) and its deadline's stage cap."""
        if not self.staged:
            return _Plan(None, None)
        controller = self._controllers.get(request.knob)
        threshold = controller.threshold if controller is not None else request.threshold
        plan = _Plan(request.knob, threshold, controlled=controller is not None)
        if self.config.degrade and fill > 0.5:
            lowered = degraded_point(self.calibration, request.knob, threshold, fill)
            if lowered is not None:
                plan = _Plan(lowered[1], lowered[0], degraded=True)
        if request.deadline is not None:
            plan.stage_cap = self._stage_cap((request.deadline - now) * 1000.0, batch_rows)
            plan.controlled = plan.controlled and plan.stage_cap is None
        return plan

    def _stage_cap(self, remaining_ms: float, batch_rows: int) -> int | None:
        calibration = self.calibration
        if calibration is None or not calibration.costs.ms:
            return None  # no measured latencies: the deadline bounds the wait only
        cap = self.predictor.deadline_stage(remaining_ms, batch_rows)
        return cap if cap < self.predictor.num_stages - 1 else None

    def _execute(self, requests: list[_Request], plans: list[_Plan]) -> list[list[Prediction] | Exception]:
        """Predictions per request from one model call; when the inputs are refused, each request alone, so
        only the one at fault fails."""
        try:
            return self._run(requests, plans)
        except (ValueError, TypeError) as err:
            if len(requests) == 1:
                return [err]
        out: list[list[Prediction] | Exception] = []
        for request, plan in zip(requests, plans, strict=True):
            try:
                out += self._run([request], [plan])
            except (ValueError, TypeError) as err:
                out.append(err)
        return out

    def _run(self, requests: list[_Request], plans: list[_Plan]) -> list[list[Prediction]]:
        sizes = [r.rows for r in requests]
        pieces = [x for r in requests for x in r.pieces] if self._tokenises else None
        if not self.staged:
            extra = {} if pieces is None else {"features": pieces}
            predictions = self.predictor.predict([x for r in requests for x in r.inputs],
                                                 batch_size=self.config.max_batch_rows, **extra)
            return _split(predictions, sizes)
        stages = self.predictor.num_stages
        limits = np.concatenate([row_limits(p.threshold, p.stage_cap, n, stages) for p, n in zip(plans, sizes,
                                                                                                  strict=True)])
        if pieces is not None:
            result = self.predictor.run(pieces, limits, batch_size=self.config.max_batch_rows)
        else:
            result = self.predictor.run_examples([ex for r in requests for ex in r.examples], limits,
                                                 batch_size=self.config.max_batch_rows)
        out, start = [], 0
        for request, plan, n in zip(requests, plans, sizes, strict=True):
            out.append(self.predictor.predictions(slice_execution(result, start, start + n), unit=plan.knob.unit,
                                                  inputs=request.inputs, examples=request.examples))
            start += n
        return out

    def _observe(self, done: list[tuple[_Request, _Plan, list[Prediction]]], rows: int, tokens: int,
                 seconds: float, started: float) -> None:
        moves = 0
        for request, plan, predictions in done:
            controller = self._controllers.get(request.knob) if plan.controlled else None
            if controller is not None and predictions and predictions[0].cost is not None:
                moves += controller.observe([p.cost for p in predictions], [p.stage for p in predictions])
        measured = seconds * 1000.0 / max(1, rows)
        with self._cond:
            self._ms_per_row = measured if self._ms_per_row is None else 0.8 * self._ms_per_row + 0.2 * measured
            self._count(done, rows, tokens, seconds, started)
            self._stats.controller_moves += moves != 0

    def _count(self, done: list[tuple[_Request, _Plan, list[Prediction]]], rows: int, tokens: int,
               seconds: float, started: float) -> None:
        stats = self._stats
        stats.batches += 1
        stats.batch_rows.observe(rows)
        stats.batch_tokens.observe(tokens)
        stats.inference_seconds.observe(seconds)
        for request, plan, predictions in done:
            stats.answered += 1
            stats.rows += len(predictions)
            stats.degraded_requests += plan.degraded
            stats.queue_wait_seconds.observe(started - request.enqueued)
            if self.staged:
                stats.count_exits([p.stage for p in predictions], self.predictor.num_stages)
                stats.stage_unavailable_rows += sum(bool(p.fallback) for p in predictions)
            for p in predictions:
                if p.cost is not None:
                    stats.cost.observe(p.cost)

    def _result(self, request: _Request, plan: _Plan, predictions: list[Prediction], batch: _Batch,
                started: float, seconds: float, batch_rows: int = 0) -> Result:
        calibration = self.calibration
        flops = None if calibration is None else [float(calibration.costs.flops[p.stage]) for p in predictions]
        queue_ms = (started - request.enqueued) * 1000.0
        return Result(model=self.name, predictions=predictions, knob=plan.knob,
                      requested=request.knob if self.staged else None, threshold=plan.threshold,
                      calibrated_threshold=request.threshold, stage_cap=plan.stage_cap, degraded=plan.degraded,
                      queue_ms=queue_ms, inference_ms=seconds * 1000.0, batch=batch.number, batch_rows=batch_rows,
                      flops=flops, request_id=request.request_id)

    # --- stopping ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Take no new requests; the batcher stops waiting for rows and empties the queue."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self, until: float) -> None:
        """Wait until the queue is empty and no batch runs, or ``until`` (monotonic seconds)."""
        if self._thread is None:
            return
        with self._cond:
            while self._queued() or self._busy:
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def abort(self) -> None:
        """Fail every request still queued with :class:`Draining`."""
        with self._cond:
            left = [r for q in self._queues.values() for r in q]
            for priority in PRIORITIES:
                self._queues[priority].clear()
                self._queued_rows[priority] = 0
            self._stats.rejections["draining"] += len(left)
            self._stats.failed += len(left)
            self._closed = True
            self._cond.notify_all()
        for request in left:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(Draining(
                    f"model {self.name!r}: the server stopped before this request was served (the drain window "
                    "closed); retry on another replica"))

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    # --- reading -------------------------------------------------------------------------------------

    def stats(self) -> ModelStats:
        with self._cond:
            stats = self._stats.snapshot()
            stats.queue_rows = sum(self._queued_rows.values())
            stats.queue_requests = self._queued()
            stats.in_flight_rows = self._in_flight_rows
            return stats

    def thresholds_in_force(self) -> ThresholdsInForce | None:
        if not self.staged:
            return None
        with self._cond:
            controllers = list(self._controllers.values())
        return ThresholdsInForce(default=float(self.predictor.threshold_for(Knob())),
                                 budgets=[c.state() for c in controllers])

    def info(self) -> dict[str, Any]:
        predictor = self.predictor
        out: dict[str, Any] = {"name": self.name, "kind": getattr(predictor, "kind", "plain") if self.staged else "plain",
                               "task": predictor.task, "labels": list(predictor.labels)}
        calibration = self.calibration
        if not self.staged:
            return out
        out["num_stages"] = predictor.num_stages
        if calibration is None:
            return {**out, "calibrated": False}
        forced = self.thresholds_in_force()
        return {**out, "calibrated": True, "cost_unit": calibration.cost_unit,
                "stage_cost_fractions": calibration.fractions(), "stage_flops": list(calibration.costs.flops),
                "stage_ms": calibration.costs.ms, "default": calibration.default.to_dict(),
                "operating_points": [p.to_dict() for p in calibration.table.points],
                "thresholds_in_force": {"default": json_float(forced.default), "budgets": [
                    {**asdict(s), "calibrated_threshold": json_float(s.calibrated_threshold),
                     "threshold": json_float(s.threshold)} for s in forced.budgets]}}

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        placeholder = WARMUP_INPUTS.get(self.predictor.task, "warm up")
        for size in batch_sizes:
            inputs = [placeholder] * size
            if self.staged:
                self.predictor.run_examples(canonical_inputs(self.predictor.task, inputs), np.inf,
                                            batch_size=self.config.max_batch_rows)
            else:
                self.predictor.predict(inputs, batch_size=self.config.max_batch_rows)


# --- pure pieces --------------------------------------------------------------------------------------------


def _tokenises(predictor: Any, staged: bool) -> bool:
    """Whether the served model featurizes its rows itself into ``input_ids`` (see the module docstring)."""
    if staged:
        return isinstance(predictor, EarlyExitPredictor)
    return isinstance(predictor, Predictor)  # one's own predictor may not take features


def row_limits(threshold: float, stage_cap: int | None, rows: int, stages: int) -> np.ndarray:
    """``[rows, stages]`` thresholds: ``threshold`` everywhere, ``-inf`` from ``stage_cap`` on (rows stop
    there at the latest)."""
    limits = np.full((rows, stages), threshold, dtype=np.float64)
    if stage_cap is not None:
        limits[:, stage_cap:] = -np.inf
    return limits


def slice_execution(result: Execution, start: int, stop: int) -> Execution:
    return Execution(result.logits[start:stop], result.stage[start:stop], result.score[start:stop],
                     result.fallback[start:stop])


def _split(items: list[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for n in sizes:
        out.append(items[start:start + n])
        start += n
    return out


def _table(calibration: Calibration | None, unit: str | None) -> ThresholdTable | None:
    if calibration is None:
        return None
    unit = unit or calibration.cost_unit
    return calibration.table.in_unit(unit, calibration.fractions(unit))


def degraded_point(calibration: Calibration | None, knob: Knob, threshold: float,
                   fill: float) -> tuple[float, Knob] | None:
    """Degrade mode's lower operating point at queue fill ``fill`` (> 0.5): ``(threshold, Knob(budget=...))``,
    or None when it would not lower ``threshold``. The nominal cost (the calibrated cost of the point at
    ``threshold``) moves toward the cheapest point by ``2 * fill - 1`` of the way."""
    table = _table(calibration, knob.unit)
    if table is None:
        return None
    cheapest = min(p.cost for p in table.points)
    below = [p for p in table.points if p.threshold <= threshold]
    nominal = max(below, key=lambda p: p.threshold).cost if below else cheapest
    share = min(1.0, max(0.0, 2.0 * fill - 1.0))
    budget = max(cheapest, nominal - share * (nominal - cheapest))
    point = table.budget(budget)
    if not point.threshold < threshold:
        return None
    return point.threshold, Knob(budget=budget, unit=knob.unit)


def _fail_running(future: Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
