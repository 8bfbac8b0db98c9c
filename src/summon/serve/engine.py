"""The serving engine: bounded queues, batches formed across requests, and the staged executor with one
threshold per row — plain Python and threads, apart from any transport (the HTTP app and Ray sit on top).

::

    engine = Engine({"sst2": summon.load("runs/exits")}, max_batch_rows=64, max_wait_ms=5)
    engine.start()
    future = engine.submit("sst2", ["a gem", "a mess"], knob=Knob(budget=0.4), deadline_ms=200)
    result = future.result()            # a Result: one Prediction per row, the operating point, timings
    engine.stop(drain_seconds=10)

**Pieces.** This module is the facade: models by name, start and stop, submit, stats, info, warm-up. Below
it, importing downward only:

* :mod:`summon.serve.lane` — one model's lane: admission, the batcher thread, the predictor's run of each
  batch, the counters and the :class:`Result`;
* :mod:`summon.serve.planner` — pure: knob, calibration and budget controllers in, per-request plans and
  per-row thresholds out (degrade mode, deadline caps, the thresholds in force);
* :mod:`summon.serve.queue` — the lowest piece: :class:`EngineConfig`, the request and batch types, the
  refusals, and the bounded two-priority queue that forms batches.

**Lanes.** Each model has its own lane: a queue of two priorities bounded by ``max_queue_rows`` rows, and one
batcher thread. The batcher takes requests in order — high priority first, a low-priority request counting
as high once it has waited ``age_ms`` (so it cannot starve), first come first served within a level — into
one batch of at most ``max_batch_rows`` rows and ``max_batch_tokens`` tokens (a single larger request runs
alone), waiting at most ``max_wait_ms`` after the oldest queued request for more rows, and never past the
earliest deadline in the queue less the batch's expected run time.

**Tokens.** A request is featurized once, when it is admitted (on the caller's thread, not the batcher's),
into its kind's stage-0 pieces (``predictor.inputs``): where those are the model's own features (a plain model,
early exit: word pieces, as the model sees them, special tokens included), the batcher counts those tokens against
``max_batch_tokens`` and the batch-tokens histogram. A cascade or a progressive ensemble hands raw text to each
stage, which tokenises it its own way; its rows count whitespace-separated words instead.

**One forward pass for many knobs.** Every predictor is a staged kind (a plain model is the one-stage kind,
:mod:`summon.adaptive.plain`) and runs the whole batch in one call of ``run`` with thresholds ``[rows, stages]``: each request's threshold on its rows, and ``-inf`` from
the stage its deadline caps it at (:func:`~summon.serve.planner.stage_cap`, for the batch's rows in the
time it has left). The executor regroups the rows that go on, from every request, into
full batches for the next stage; the answers are then split per request. Every row's answer equals
predicting its request alone at the same threshold. A one-stage predictor takes no knob.

**Overload is answered, never absorbed.** :meth:`Engine.submit` refuses at once, raising:

===========================  =================================================================  ==============
exception                    when                                                               HTTP (suggested)
===========================  =================================================================  ==============
:class:`UnknownModel`        no model by that name (ValueError)                                 404
:class:`InfeasibleKnob`      a knob no operating point meets, or any knob for a one-stage one    422
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

import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Literal

from summon.adaptive.kinds import as_staged
from summon.adaptive.knob import Knob
from summon.adaptive.staged import StagedBase
from summon.core.registry import suggest
from summon.serve.lane import Lane, Result
from summon.serve.planner import ThresholdsInForce, json_float, knob_dict, knob_from, row_limits
from summon.serve.queue import (
    PRIORITIES,
    DeadlineUnmeetable,
    Draining,
    EngineConfig,
    EngineError,
    InfeasibleKnob,
    QueueFull,
    TooLarge,
    UnknownModel,
    check_count,
)
from summon.serve.stats import ModelStats

__all__ = ["PRIORITIES", "DeadlineUnmeetable", "Draining", "Engine", "EngineConfig", "EngineError", "InfeasibleKnob",
           "QueueFull", "Result", "ThresholdsInForce", "TooLarge", "UnknownModel", "json_float", "knob_dict",
           "knob_from", "row_limits"]


class Engine:
    """Serves several named predictors of any kind with cross-request batching; see the module docstring.

    Args:
        models: name -> predictor (``summon.load(...)``) of any kind (early exit, cascade, progressive, plain).
        config: the engine's options (:class:`~summon.serve.queue.EngineConfig`, its fields documented there:
            batch limits, queue bounds, ageing, degrade, the budget controllers' :class:`ControlConfig`).
        **options: or the same options as keywords, in the flat form of :meth:`EngineConfig.of`
            (``max_batch_rows=64, window=512, ...``); an unknown one is refused with a suggestion.
    """

    def __init__(self, models: Mapping[str, Any], config: EngineConfig | None = None, **options: Any):
        if config is not None and options:
            raise TypeError(f"Engine: give a config or keyword options, not both (got config and "
                            f"{', '.join(sorted(options))})")
        self.config = config if config is not None else EngineConfig.of(**options)
        self._lanes = {name: Lane(name, predictor, self.config) for name, predictor in _check_models(models).items()}
        self._state: Literal["new", "running", "stopped"] = "new"
        self._lock = threading.Lock()

    @property
    def models(self) -> list[str]:
        return list(self._lanes)

    def predictor(self, model: str) -> Any:
        """The predictor served as ``model`` (for a transport's own routes: its task, its raw logits)."""
        return self._lane(model).predictor

    def _lane(self, model: str) -> Lane:
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
        ``drain_seconds``, then fail what is left with :class:`Draining` — queued requests and those of a batch
        still in the model — and return: within ``drain_seconds`` plus a tenth of a second. A batch still in the
        model runs on in its (daemon) thread; its rows are dropped."""
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
        for lane in self._lanes.values():
            lane.join(timeout=max(0.1, until - time.monotonic()))  # a batch past the window is not waited for

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all for every batcher thread to end (after :meth:`stop`, a batch still
        in the model stops at its next stage batch); whether all have."""
        until = time.monotonic() + max(0.0, timeout)
        joined = [lane.join(timeout=max(0.0, until - time.monotonic())) for lane in self._lanes.values()]  # every one
        return all(joined)

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
            knob: the operating point (refused by a one-stage predictor); None for the calibrated default.
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

    def give_up(self, model: str, future: Future, reason: str = "cancelled") -> bool:
        """The caller no longer wants the answer of ``future`` (from :meth:`submit` for ``model``): ``reason``
        ``"cancelled"`` (its client left) or ``"timed_out"`` (it answered 504). A queued request leaves the queue
        (no work is done for it); a running one's rows stop being run at the next stage batch and are dropped; either way it counts
        under ``reason``, not as answered. False when it was answered already."""
        return self._lane(model).give_up(future, reason)

    def stats(self) -> dict[str, ModelStats]:
        """A snapshot of every model's counters, gauges and histograms."""
        return {name: lane.stats() for name, lane in self._lanes.items()}

    def thresholds_in_force(self) -> dict[str, ThresholdsInForce]:
        """Per model, the thresholds used now (a one-stage model's: ``inf``, its only stage)."""
        return {name: lane.thresholds_in_force() for name, lane in self._lanes.items()}

    def info(self) -> dict[str, dict[str, Any]]:
        """Per model, JSON-able: kind, task, labels, stages and their costs, the operating-point table, the
        default point and the thresholds in force."""
        return {name: lane.info() for name, lane in self._lanes.items()}

    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Run every model on placeholder inputs at these batch sizes, outside the queue and the counters."""
        for size in batch_sizes:
            check_count("batch size", size)
        for lane in self._lanes.values():
            lane.warmup(batch_sizes)


def _check_models(models: Any) -> dict[str, StagedBase]:
    """``name -> predictor`` as the engine serves them: each predictor as its kind (a plain one as the one-stage
    kind, :func:`~summon.adaptive.kinds.as_staged`)."""
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict of name -> predictor (summon.load(...)), got "
                        f"{type(models).__name__}{' (empty)' if isinstance(models, Mapping) else ''}")
    out = {}
    for name, predictor in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"model names must be non-empty strings, got {name!r}")
        try:
            out[name] = as_staged(predictor)
        except TypeError:
            raise TypeError(f"model {name!r}: expected a summon predictor (summon.load(...)), got "
                            f"{type(predictor).__name__}") from None
    return out
