"""One served model's lane: its :class:`~summon.serve.queue.BatchQueue`, the batcher thread that takes batches
from it, and the run of each batch at the planner's thresholds (:mod:`summon.serve.planner`), counted into a
:class:`~summon.serve.stats.ModelStats` and answered as one :class:`Result` per request.

**Admission** (on the caller's thread): size limits, the model's own features (see **Tokens** in
:mod:`summon.serve.engine`), the knob's threshold (a budget knob gets its controller), the deadline's estimate;
then the queue, whose refusals are counted like the rest.

**A batch** (on the batcher's thread): requests whose deadline passed in the queue fail; the others are
planned and run in one call of the predictor, with thresholds ``[rows, stages]``, each request's on its rows;
when the predictor refuses the inputs, each request runs alone so only the one at fault fails. The realised
costs feed the budget controllers, the counters and the queue's pace.

Every predictor is a staged kind (a plain model is the one-stage kind), so the lane asks no "plain or staged?":
a one-stage predictor's knob is refused by the knob module, and its only stage answers every row.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from summon.adaptive.calibration import Calibration
from summon.adaptive.executor import Execution
from summon.adaptive.knob import Knob
from summon.adaptive.staged import StagedBase
from summon.predictors.predictor import Prediction, as_batch, canonical_inputs
from summon.serve import planner
from summon.serve.control import Controllers
from summon.serve.planner import Plan, ThresholdsInForce
from summon.serve.queue import (
    Batch,
    BatchQueue,
    DeadlineUnmeetable,
    Draining,
    EngineConfig,
    EngineError,
    Request,
    check_size,
)
from summon.serve.stats import ModelStats

logger = logging.getLogger(__name__)

WARMUP_INPUTS = {"classification": "warm up", "pair_classification": ("warm up", "warm up"),
                 "token_classification": ["warm", "up"]}


@dataclass
class Result:
    """One request's answer: a :class:`~summon.predictors.predictor.Prediction` per row, and how they were produced."""

    model: str
    predictions: list[Prediction]
    knob: Knob | None  # the knob the rows ran at: the request's, or the lowered budget when degraded (empty: the default point)
    requested: Knob | None  # the request's own knob
    threshold: float | None  # the confidence threshold in force (inf: every row to the last stage)
    calibrated_threshold: float | None  # what the knob sets on the calibration (differs when a controller moved it)
    stage_cap: int | None  # the last stage the deadline allowed, when it stopped rows earlier than the knob would
    degraded: bool
    queue_ms: float
    inference_ms: float  # the batch's time in the model
    batch: int  # the batch's number in this model's lane (from 1)
    batch_rows: int
    flops: list[float] | None = None  # per row: FLOPs of answering at its stage (calibrated staged predictors)
    request_id: str | None = None


Done = list[tuple[Request, Plan, list[Prediction]]]


class Lane:
    """One model: its queue and batcher thread, its budget controllers and its counters."""

    def __init__(self, name: str, predictor: StagedBase, config: EngineConfig):
        self.name, self.predictor, self.config = name, predictor, config
        self.queue = BatchQueue(name, config)
        self.controllers = Controllers(config.max_controllers)
        self._lock = threading.Lock()  # the counters
        self._stats = ModelStats()
        self._thread: threading.Thread | None = None
        self._pending: dict[Future, Request] = {}  # accepted and not yet resolved, by their future
        self._batch: Batch | None = None  # the batch in the model now

    # --- admission -----------------------------------------------------------------------------------

    def refused(self, err: EngineError) -> EngineError:
        """``err``, counted as a rejection (the caller raises it)."""
        with self._lock:
            self._stats.reject(err.reason)
        return err

    def admit(self, inputs: Any, knob: Knob | None, deadline_ms: float | None, priority: str,
              request_id: str | None) -> Future:
        raw = as_batch(inputs)
        examples = canonical_inputs(self.predictor.task, raw)
        calibration = self.predictor.calibration
        try:
            check_size(self.name, raw, self.config)
            pieces, tokens = _features(self.predictor, examples)
            knob = knob or Knob()
            threshold = planner.knob_threshold(self.name, calibration, knob, stages=self.predictor.num_stages)
            if knob is not None and knob.budget is not None and self.config.controller:
                self.controllers.add(knob, lambda: planner.new_controller(calibration, knob, threshold,
                                                                           self.config.control))
            if deadline_ms is not None:
                self.queue.check_deadline(len(raw), deadline_ms, priority, planner.least_row_ms(calibration))
            request = Request(examples, raw, pieces, tokens, knob, threshold, None if deadline_ms is None else
                              time.monotonic() + deadline_ms / 1000.0, priority, request_id)
            if raw:
                with self._lock:
                    self._pending[request.future] = request
                try:
                    self.queue.put(request)
                except EngineError:
                    with self._lock:
                        self._pending.pop(request.future, None)
                    raise
                request.future.add_done_callback(self._resolved)
        except EngineError as err:
            raise self.refused(err) from None
        if not raw:  # nothing to queue
            request.future.set_result(_result(self.name, request, Plan(knob, threshold), [], calibration,
                                              Batch([], 0, 0, 0.0, 0), request.enqueued, 0.0))
        return request.future

    def _resolved(self, future: Future) -> None:
        with self._lock:
            self._pending.pop(future, None)

    def give_up(self, future: Future, reason: str) -> bool:
        """The transport no longer wants ``future``'s answer (``reason``: ``"cancelled"``, its client left, or
        ``"timed_out"``, it answered 504): a queued request is withdrawn from the queue, a running one's rows stop
        being run at the next stage batch and are dropped; it is counted under ``reason``, not as answered. False when it was already
        answered (or unknown)."""
        if reason not in ("cancelled", "timed_out"):
            raise ValueError(f"reason must be 'cancelled' or 'timed_out', got {reason!r}")
        with self._lock:
            request = self._pending.pop(future, None)
            if request is None or request.counted or request.given_up is not None or future.done():
                return False
            request.given_up = reason
            setattr(self._stats, reason, getattr(self._stats, reason) + 1)
        self.queue.withdraw(request)
        future.cancel()  # a queued (not yet running) future; a running one's rows stop at the next stage batch
        return True

    # --- the batcher ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"summon-engine-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (batch := self.queue.take(planner.least_row_ms(self.predictor.calibration))) is not None:
            self._batch = batch
            try:
                self._serve(batch)
            except Exception as err:  # never let the thread die: the batch's requests get the error
                logger.exception("model %r: a batch of %d rows failed", self.name, batch.rows)
                self._fail([r for r in batch.requests if not r.future.done()], err)
            finally:
                self._batch = None
                self.queue.done(batch)

    def _serve(self, batch: Batch) -> None:
        started = time.monotonic()
        live = _unexpired(self.name, [r for r in batch.requests if r.given_up is None and _start(r.future)],
                          started, lambda request, err: self._fail([request], self.refused(err)))
        if not live:
            return
        rows = sum(r.rows for r in live)
        calibration = self.predictor.calibration
        plans = [_plan(self.predictor, self.config, self.controllers.get(r.knob), r, calibration, batch.fill, rows,
                       started) for r in live]
        outputs = _execute(self.predictor, live, plans, self.config.max_batch_rows)
        seconds = time.monotonic() - started
        done = [(r, p, out) for r, p, out in zip(live, plans, outputs, strict=True) if not isinstance(out, Exception)]
        for request, out in zip(live, outputs, strict=True):
            if isinstance(out, Exception):
                self._fail([request], out)
        done = self._count(done, rows, sum(r.tokens for r in live), seconds, started)
        for request, plan, predictions in done:
            with contextlib.suppress(InvalidStateError):  # failed meanwhile (the drain window closed): keeps its error
                request.future.set_result(_result(self.name, request, plan, predictions, calibration, batch, started,
                                                  seconds, rows))

    def _fail(self, requests: list[Request], err: Exception) -> None:
        with self._lock:
            self._stats.failed += len(requests)
        for request in requests:
            if not request.future.done():
                request.future.set_exception(err)

    def _count(self, done: Done, rows: int, tokens: int, seconds: float, started: float) -> Done:
        """Feed the controllers, the queue's pace and the counters; the requests still wanted (the others were
        given up while their batch ran: their rows are dropped, not counted as answered)."""
        moves = _observe(done)
        self.queue.record(rows, seconds)
        with self._lock:
            self._stats.count_batch(rows, tokens, seconds)
            done = [d for d in done if d[0].given_up is None]
            for request, plan, predictions in done:
                request.counted = True
                self._stats.count_answer([p.cost for p in predictions], started - request.enqueued, plan.degraded)
                self._stats.count_exits([p.stage for p in predictions], self.predictor.num_stages)
                self._stats.stage_unavailable_rows += sum(bool(p.fallback) for p in predictions)
            self._stats.controller_moves += moves != 0
        return done

    # --- stopping ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Take no new requests; the batcher stops waiting for rows and empties the queue."""
        self.queue.close()

    def drain(self, until: float) -> None:
        """Wait until the queue is empty and no batch runs, or ``until`` (monotonic seconds)."""
        if self._thread is not None:
            self.queue.drain(until)

    def abort(self) -> None:
        """Fail every request still queued, and those of the batch still in the model, with :class:`Draining`
        (the batch's thread stops running their rows at the next stage batch; they are dropped)."""
        left = self.queue.abort()
        batch = self._batch
        with self._lock:
            running = [r for r in (batch.requests if batch is not None else ())
                       if r.given_up is None and not r.counted and not r.future.done()]
            for request in running:
                request.given_up = "draining"
            self._stats.rejections["draining"] += len(left) + len(running)
            self._stats.failed += len(left) + len(running)
        _drained(self.name, left, running)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the batcher thread (at most ``timeout`` seconds); whether it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # --- reading -------------------------------------------------------------------------------------

    def stats(self) -> ModelStats:
        gauges = self.queue.gauges()
        with self._lock:
            stats = self._stats.snapshot()
        stats.requests = gauges.accepted
        stats.queue_rows, stats.queue_requests = gauges.queue_rows, gauges.queue_requests
        stats.in_flight_rows = gauges.in_flight_rows
        return stats

    def thresholds_in_force(self) -> ThresholdsInForce:
        return planner.in_force(self.predictor.calibration, self.controllers.states())

    def info(self) -> dict[str, Any]:
        """JSON-able: kind, task, labels, stages and their costs, the operating points, the thresholds in force."""
        return _info(self.name, self.predictor, self.thresholds_in_force())

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        placeholder = WARMUP_INPUTS.get(self.predictor.task, "warm up")
        for size in batch_sizes:
            examples = canonical_inputs(self.predictor.task, [placeholder] * size)
            self.predictor.run_examples(examples, np.inf, batch_size=self.config.max_batch_rows)



def _plan(predictor: StagedBase, config: EngineConfig, controller: Any, request: Request,
          calibration: Calibration | None, fill: float, batch_rows: int, now: float) -> Plan:
    """The request's plan in this batch (:func:`summon.serve.planner.plan`)."""
    return planner.plan(calibration, request.knob, request.threshold, controller, num_stages=predictor.num_stages,
                        degrade=config.degrade, fill=fill,
                        remaining_ms=None if request.deadline is None else (request.deadline - now) * 1000.0,
                        batch_rows=batch_rows)


def _execute(predictor: StagedBase, requests: list[Request], plans: list[Plan],
             size: int) -> list[list[Prediction] | Exception]:
    """Predictions per request from one model call; when the inputs are refused, each request alone, so only the
    one at fault fails."""
    try:
        return _run(predictor, requests, plans, size)
    except (ValueError, TypeError) as err:
        if len(requests) == 1:
            return [err]
    out: list[list[Prediction] | Exception] = []
    for request, plan in zip(requests, plans, strict=True):
        try:
            out += _run(predictor, [request], [plan], size)
        except (ValueError, TypeError) as err:
            out.append(err)
    return out


def _observe(done: Done) -> int:
    """Feed each budget's controller the realised costs of its rows; how many moved."""
    moves = 0
    for _, plan, predictions in done:
        if plan.controller is not None and predictions and predictions[0].cost is not None:
            moves += plan.controller.observe([p.cost for p in predictions], [p.stage for p in predictions])
    return moves


def _unexpired(model: str, requests: list[Request], now: float, fail: Callable[[Request, Exception], None]
               ) -> list[Request]:
    """The requests whose deadline has not passed; ``fail`` gets the others with :class:`DeadlineUnmeetable`."""
    live = []
    for request in requests:
        if request.deadline is not None and request.deadline <= now:
            waited = (now - request.enqueued) * 1000.0
            fail(request, DeadlineUnmeetable(f"model {model!r}: the deadline passed after {waited:.4g} ms in the "
                                             "queue; give a later deadline or retry when the queue is shorter"))
        else:
            live.append(request)
    return live


def _drained(model: str, left: list[Request], running: list[Request]) -> None:
    """Fail with :class:`Draining` the requests still queued (``left``) and those whose batch was still in the model
    (``running``) when the drain window closed."""
    for request in left:
        if request.future.set_running_or_notify_cancel():
            request.future.set_exception(Draining(
                f"model {model!r}: the server stopped before this request was served (the drain window closed); "
                "retry on another replica"))
    for request in running:
        with contextlib.suppress(InvalidStateError):
            if request.future.running() or _start(request.future):
                request.future.set_exception(Draining(
                    f"model {model!r}: the server stopped before this request's batch finished (the drain window "
                    "closed); retry on another replica"))


def _info(name: str, predictor: StagedBase, forced: ThresholdsInForce) -> dict[str, Any]:
    return {"name": name, "kind": predictor.kind, "task": predictor.task, "labels": list(predictor.labels),
            "num_stages": predictor.num_stages, **_calibration_info(predictor.calibration, forced)}

def _result(model: str, request: Request, plan: Plan, predictions: list[Prediction], calibration: Calibration | None,
            batch: Batch, started: float, seconds: float, batch_rows: int = 0) -> Result:
    flops = None if calibration is None else [float(calibration.costs.flops[p.stage]) for p in predictions]
    return Result(model=model, predictions=predictions, knob=plan.knob, requested=request.knob,
                  threshold=plan.threshold, calibrated_threshold=request.threshold, stage_cap=plan.stage_cap,
                  degraded=plan.degraded, queue_ms=(started - request.enqueued) * 1000.0,
                  inference_ms=seconds * 1000.0, batch=batch.number, batch_rows=batch_rows, flops=flops,
                  request_id=request.request_id)


def _start(future: Future) -> bool:
    """Mark ``future`` running; False when it was cancelled, or another thread got there first."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # already running or finished
        return False


def _calibration_info(calibration: Calibration | None, forced: ThresholdsInForce | None) -> dict[str, Any]:
    if calibration is None:
        return {"calibrated": False}
    return {"calibrated": True, "cost_unit": calibration.cost_unit,
            "stage_cost_fractions": calibration.fractions(), "stage_flops": list(calibration.costs.flops),
            "stage_ms": calibration.costs.ms, "default": calibration.default.to_dict(),
            "operating_points": [p.to_dict() for p in calibration.table.points],
            "thresholds_in_force": forced.to_dict()}


def _features(predictor: StagedBase, examples: list[dict[str, Any]]) -> tuple[list[Any], int]:
    """The rows' stage-0 pieces (``predictor.inputs``, made once at admission) and the request's tokens (see
    **Tokens** in :mod:`summon.serve.engine`): sub-tokens where the pieces are the kind's own features
    (``input_ids``), else words."""
    if not examples:
        return [], 0
    pieces = predictor.inputs(examples)
    if isinstance(pieces[0], dict) and "input_ids" in pieces[0]:
        return pieces, sum(len(p["input_ids"]) for p in pieces)
    return pieces, sum(len(ex["tokens"]) if "tokens" in ex else len(ex.get("text", "").split())
                       + len((ex.get("text_pair") or "").split()) for ex in examples)


def _run(predictor: StagedBase, requests: list[Request], plans: list[Plan], batch_size: int) -> list[list[Prediction]]:
    """One adaptive run of every request's rows at its plan's thresholds, split back per request."""
    sizes = [r.rows for r in requests]
    limits = np.concatenate([planner.row_limits(p.threshold, p.stage_cap, n, predictor.num_stages)
                             for p, n in zip(plans, sizes, strict=True)])
    owner = np.repeat(np.arange(len(requests)), sizes)
    result = predictor.run([x for r in requests for x in r.pieces], limits, batch_size=batch_size,
                           wanted=partial(_still_wanted, requests, owner))
    out, start = [], 0
    for request, plan, n in zip(requests, plans, sizes, strict=True):
        # a request given up while its batch ran stopped being run (some rows may have no answer): dropped
        out.append([] if request.given_up is not None else predictor.predictions(
            slice_execution(result, start, start + n), unit=plan.knob.unit, inputs=request.inputs,
            examples=request.examples))
        start += n
    return out


def _still_wanted(requests: list[Request], owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which ``rows`` (of a batch's run) belong to requests not given up: the executor asks before every stage
    batch, so a departed client's (or a 504'd, or a drained) request stops costing compute at the next one."""
    return np.array([requests[i].given_up is None for i in owner[rows]], dtype=bool)


def slice_execution(result: Execution, start: int, stop: int) -> Execution:
    return Execution(result.logits[start:stop], result.stage[start:stop], result.score[start:stop],
                     result.fallback[start:stop])
