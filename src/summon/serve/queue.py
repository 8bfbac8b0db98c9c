"""The batch queue of one served model: requests, batches and the refusals, with no model in sight.

The lowest piece of the engine (:mod:`summon.serve.engine`): the planner and the lane import it, it imports
neither. It holds the engine's one typed config (:class:`EngineConfig`), the request and batch types, every
refusal the engine raises, and :class:`BatchQueue`: two priorities bounded together by ``max_queue_rows`` rows.

**Taking a batch.** :meth:`BatchQueue.take` takes requests in order — high priority first, a low-priority
request counting as high once it has waited ``age_ms`` (so it cannot starve), first come first served within a
level — into one batch of at most ``max_batch_rows`` rows and ``max_batch_tokens`` tokens (a single larger
request runs alone), waiting at most ``max_wait_ms`` after the oldest queued request for more rows, and never
past the earliest deadline in the queue less the batch's expected run time.

**Pace.** The queue keeps the measured milliseconds per row (a moving average of the batches the lane
reports with :meth:`BatchQueue.record`): what a full queue's ``retry_after_s``, a deadline's admission and the
wait for rows estimate from. Before anything is measured, the least a row costs is what the caller says (the
first stage's calibrated latency), else 0.

**Stopping.** :meth:`~BatchQueue.close` takes no more requests and stops the wait for rows;
:meth:`~BatchQueue.drain` waits until the queue is empty and no batch runs; :meth:`~BatchQueue.abort` empties
the queue and hands back what was left, for the caller to fail; :meth:`~BatchQueue.withdraw` takes one request
out (its client left, or its transport timed out).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from summon.core.options import options_for
from summon.serve.control import ControlConfig

PRIORITIES = ("high", "low")


# --- refusals -----------------------------------------------------------------------------------------------


class EngineError(Exception):
    """A request the engine refused or could not finish; ``reason`` is its rejection reason in the stats."""

    reason = ""


class UnknownModel(ValueError):
    """No model by the name asked for."""


class InfeasibleKnob(EngineError, ValueError):
    """A knob no operating point can meet (or any knob for a one-stage predictor); ``cheapest`` is the cheapest
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


# --- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """The engine's limits and behaviour (see :mod:`summon.serve.engine`): the one typed config every piece
    of the engine reads, and the one declaration of these options: ``summon serve`` derives its flags from the
    fields and their ``help`` (:mod:`summon.core.options`), the engine and the Ray app take them as keywords in
    the flat form of :meth:`of` (the fields of :class:`ControlConfig` beside these)."""

    max_batch_rows: int = field(default=64, metadata={
        "help": "rows per batch (across requests), and the executor's batch size"})
    max_batch_tokens: int | None = field(default=None, metadata={  # see serve.engine: Tokens
        "help": "tokens per batch (across requests; a single larger request runs alone); default: rows only"})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "how long a batch waits to fill after the oldest queued request (ms)"})
    max_queue_rows: int = field(default=4096, metadata={
        "help": "rows queued per model; more are refused (queue full: 503 or 429, with Retry-After)"})
    max_request_rows: int = field(default=1024, metadata={
        "cli": False, "flag": "--max-rows", "help": "rows one request may carry (served: the app's max_rows)"})
    max_input_chars: int | None = field(default=None, metadata={
        "help": "longest input in characters (all its texts or words together); longer is answered 413 "
        "(default: no limit)"})
    age_ms: float = field(default=200.0, metadata={
        "help": "after this long (ms) a low-priority request is served as high"})
    degrade: bool = field(default=False, metadata={
        "help": "while a queue is past half full, lower each request's budget toward the cheapest operating point "
        "before refusing anything"})
    controller: bool = field(default=True, metadata={
        "help": "steer each budget's threshold by the realised cost of its rows (budget controllers; off: every "
        "budget keeps its calibrated threshold)"})
    max_controllers: int = field(default=64, metadata={
        "help": "budgets with a controller, per model (more distinct budgets run uncontrolled)"})
    control: ControlConfig = field(default_factory=ControlConfig, metadata={
        "cli": False, "help": "the controllers' settings: the fields of ControlConfig"})

    @classmethod
    def of(cls, **options: Any) -> EngineConfig:
        """The config of keyword options in the flat form :class:`~summon.serve.engine.Engine` takes: these
        fields and :class:`ControlConfig`'s side by side; an unknown name is refused with a suggestion."""
        own, control = options_for(options, cls, ControlConfig, where="the engine",
                                   set_by={"control": "its own fields (window, settle_rows, ...)"})
        return cls(**own, control=ControlConfig(**control))

    def flat(self) -> dict[str, Any]:
        """The keyword options of :meth:`of` (and of ``Engine``) that make this config."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "control"}
        return {**own, **asdict(self.control)}

    def __post_init__(self) -> None:
        for key in ("max_batch_rows", "max_queue_rows", "max_request_rows", "max_controllers"):
            check_count(key, getattr(self, key))
        for key in ("max_input_chars", "max_batch_tokens"):
            if getattr(self, key) is not None:
                check_count(key, getattr(self, key))
        for key in ("max_wait_ms", "age_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{key} must be a finite number of milliseconds >= 0, got {value!r}")
        for key in ("degrade", "controller"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{key} must be True or False, got {getattr(self, key)!r}")


def check_count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive whole number, got {value!r}")


def check_size(name: str, raw: list[Any], config: EngineConfig) -> None:
    """:class:`TooLarge` for more inputs than a request (or the queue) may hold, or an input too long."""
    most, key = min((config.max_request_rows, "max_request_rows"), (config.max_queue_rows, "max_queue_rows"))
    if len(raw) > most:
        raise TooLarge(f"model {name!r}: {len(raw)} inputs in one request; at most {most} ({key}): split the request",
                       key, most)
    most = config.max_input_chars
    for i, item in enumerate(raw if most is not None else ()):
        size = len(item) if isinstance(item, str) else sum(len(t) for t in item)
        if size > most:
            raise TooLarge(f"model {name!r}: input {i} has {size} characters; at most {most} "
                           "(max_input_chars): shorten or split it", "max_input_chars", most)


# --- requests and batches -----------------------------------------------------------------------------------


@dataclass
class Request:
    """One request's rows and what the lane decided at admission. The queue reads ``rows`` (the number of
    ``examples``), ``tokens``, ``priority``, ``deadline`` and ``enqueued``; the rest rides along."""

    examples: list[dict[str, Any]]  # canonical rows (what staged predictors take)
    inputs: list[Any] = field(default_factory=list)  # raw, as given (a tagger's words and spans are read from them)
    pieces: list[Any] | None = None  # the model's own features, made at admission where it tokenises, else None
    tokens: int = 0  # see serve.engine: Tokens
    knob: Any = None  # the request's Knob (empty: the default point)
    threshold: float | None = None  # what the knob sets on the calibration
    deadline: float | None = None  # time.monotonic() seconds
    priority: str = "high"
    request_id: str | None = None
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    given_up: str | None = None  # "cancelled", "timed_out" or "draining": its rows, if run, are dropped, not answered
    counted: bool = False  # counted as answered (then it can no longer be given up)

    @property
    def rows(self) -> int:
        return len(self.examples)


@dataclass
class Batch:
    requests: list[Request]
    rows: int
    tokens: int
    fill: float  # the queue's fill when the batch was taken
    number: int  # from 1, per queue


@dataclass(frozen=True)
class QueueGauges:
    """The queue as it stands, and how many requests it ever accepted."""

    queue_rows: int
    queue_requests: int
    in_flight_rows: int
    accepted: int


# --- the queue ----------------------------------------------------------------------------------------------


class BatchQueue:
    """One model's bounded two-level queue (see the module docstring); thread-safe."""

    def __init__(self, name: str, config: EngineConfig):
        self.name, self.config = name, config
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Request]] = {p: deque() for p in PRIORITIES}
        self._queued_rows = dict.fromkeys(PRIORITIES, 0)
        self._in_flight_rows = 0
        self._busy = False
        self._closed = False
        self._batches = 0
        self._accepted = 0
        self.ms_per_row: float | None = None  # measured, moving average

    # --- admission -----------------------------------------------------------------------------------

    def put(self, request: Request) -> None:
        """Queue ``request``; :class:`Draining` once closed, :class:`QueueFull` when its rows do not fit."""
        with self._cond:
            if self._closed:
                raise Draining(f"model {self.name!r}: the server is draining and takes no new requests")
            queued = sum(self._queued_rows.values())
            if queued + request.rows > self.config.max_queue_rows:
                retry = max(1.0, math.ceil((queued + self._in_flight_rows) * (self.ms_per_row or 0.0) / 1000.0))
                raise QueueFull(f"model {self.name!r}: the queue holds {queued} of {self.config.max_queue_rows} rows "
                                f"(max_queue_rows) and cannot take {request.rows} more; retry in {retry:g} s", retry)
            self._queues[request.priority].append(request)
            self._queued_rows[request.priority] += request.rows
            self._accepted += 1
            self._cond.notify_all()

    def check_deadline(self, rows: int, deadline_ms: float, priority: str, least_row_ms: float | None) -> None:
        """:class:`DeadlineUnmeetable` when the work ahead of ``rows`` new rows at ``priority`` and their own
        least cost cannot finish within ``deadline_ms``."""
        with self._cond:
            ahead = self._in_flight_rows + self._queued_rows["high"] + (
                self._queued_rows["low"] if priority == "low" else 0)
        floor = self._floor_ms(least_row_ms)
        wait = ahead * (self.ms_per_row if self.ms_per_row is not None else floor)
        own = rows * floor
        if wait + own > deadline_ms:
            raise DeadlineUnmeetable(
                f"model {self.name!r}: deadline_ms={deadline_ms:g} cannot be met: about {wait:.3g} ms of queued work "
                f"ahead and at least {own:.3g} ms for {rows} rows (measured); give a later deadline or fewer rows, "
                "or retry when the queue is shorter", wait + own)

    def _floor_ms(self, least_row_ms: float | None) -> float:
        """The least a row costs: ``least_row_ms`` (the first stage's latency), else the measured mean, else 0."""
        return least_row_ms if least_row_ms is not None else self.ms_per_row or 0.0

    # --- the batcher's side --------------------------------------------------------------------------

    def take(self, least_row_ms: float | None = None) -> Batch | None:
        """The next batch (blocking); None once the queue is closed and empty."""
        with self._cond:
            while not self._queued() and not self._closed:
                self._cond.wait()
            if not self._queued():
                return None
            self._wait_for_rows(least_row_ms)
            return self._pop_batch() if self._queued() else None

    def _queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _wait_for_rows(self, least_row_ms: float | None) -> None:
        """Wait (holding the condition) until a batch's rows are queued, ``max_wait_ms`` after the oldest
        request, or the earliest deadline less the batch's expected run time — whichever comes first."""
        while not self._closed and 0 < sum(self._queued_rows.values()) < self.config.max_batch_rows:
            queued = [r for q in self._queues.values() for r in q]
            until = min(r.enqueued for r in queued) + self.config.max_wait_ms / 1000.0
            deadlines = [r.deadline for r in queued if r.deadline is not None]
            if deadlines:
                run_s = (self.ms_per_row or self._floor_ms(least_row_ms)) * self.config.max_batch_rows / 1000.0
                until = min(until, min(deadlines) - run_s)
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _next_queue(self, now: float) -> deque[Request]:
        """High first; a low request older than ``age_ms`` counts as high (first come, first served)."""
        high, low = self._queues["high"], self._queues["low"]
        if not high:
            return low
        if low and now - low[0].enqueued >= self.config.age_ms / 1000.0 and low[0].enqueued < high[0].enqueued:
            return low
        return high

    def _pop_batch(self) -> Batch:
        fill = sum(self._queued_rows.values()) / self.config.max_queue_rows
        most_tokens = self.config.max_batch_tokens or math.inf
        requests: list[Request] = []
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
        return Batch(requests, rows, tokens, fill, self._batches)

    def record(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` rows took ``seconds`` in the model: the pace's moving average."""
        measured = seconds * 1000.0 / max(1, rows)
        with self._cond:
            self.ms_per_row = measured if self.ms_per_row is None else 0.8 * self.ms_per_row + 0.2 * measured

    def done(self, batch: Batch) -> None:
        """The batch from :meth:`take` is finished (answered or failed)."""
        with self._cond:
            self._in_flight_rows -= batch.rows
            self._busy = False
            self._cond.notify_all()

    # --- stopping ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Take no new requests; :meth:`take` stops waiting for rows and empties the queue."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self, until: float) -> None:
        """Wait until the queue is empty and no batch runs, or ``until`` (monotonic seconds)."""
        with self._cond:
            while self._queued() or self._busy:
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def withdraw(self, request: Request) -> bool:
        """Take ``request`` out of the queue if it is still there (not yet in a batch); whether it was."""
        with self._cond:
            queue = self._queues[request.priority]
            at = next((i for i, r in enumerate(queue) if r is request), None)
            if at is None:
                return False
            del queue[at]
            self._queued_rows[request.priority] -= request.rows
            self._cond.notify_all()
            return True

    def abort(self) -> list[Request]:
        """Close, empty the queue and return what it held (the caller fails them)."""
        with self._cond:
            left = [r for q in self._queues.values() for r in q]
            for priority in PRIORITIES:
                self._queues[priority].clear()
                self._queued_rows[priority] = 0
            self._closed = True
            self._cond.notify_all()
        return left

    def gauges(self) -> QueueGauges:
        with self._cond:
            return QueueGauges(sum(self._queued_rows.values()), self._queued(), self._in_flight_rows, self._accepted)
