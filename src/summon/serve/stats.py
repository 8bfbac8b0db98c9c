"""What the serving engine counts, per model: plain typed values that a transport exports (Prometheus, JSON).

Counters only grow; gauges (``queue_rows``, ``queue_requests``, ``in_flight_rows``) are read at snapshot time.
Histograms keep per-bucket counts with Prometheus ``le`` bounds (:meth:`Histogram.cumulative` gives the
exposition's cumulative form). Units are base units: seconds, rows, cost fractions of the reference model.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

REASONS = ("queue_full", "deadline", "infeasible_knob", "too_large", "draining")  # why a request was refused

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRACTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Histogram:
    """Observations counted into buckets ``value <= bounds[i]`` (the last count is the ``+Inf`` bucket)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0  # sum of the observed values
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, cumulative count)`` pairs, ending with ``(inf, count)``: Prometheus' ``_bucket`` series."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((float(bound), running))
        return out

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class ModelStats:
    """Counters, gauges and histograms of one served model (see the module docstring)."""

    requests: int = 0  # accepted into the queue (the queue counts them; read at snapshot time, like the gauges)
    answered: int = 0  # requests answered
    failed: int = 0  # accepted requests that ended in an error (drained, deadline passed in the queue, model error)
    cancelled: int = 0  # accepted requests withdrawn because the client left (their rows are not answered)
    timed_out: int = 0  # accepted requests withdrawn at the transport's request timeout (its 504)
    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    rows: int = 0  # rows answered
    batches: int = 0
    batch_rows: Histogram = field(default_factory=lambda: Histogram(ROW_BUCKETS))
    batch_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))  # see serve.engine: Tokens
    queue_wait_seconds: Histogram = field(default_factory=lambda: Histogram(SECOND_BUCKETS))
    inference_seconds: Histogram = field(default_factory=lambda: Histogram(SECOND_BUCKETS))  # per batch
    queue_rows: int = 0  # gauge
    queue_requests: int = 0  # gauge
    in_flight_rows: int = 0  # gauge
    exits: list[int] = field(default_factory=list)  # rows answered by each stage
    deferred_rows: int = 0  # rows answered by a later stage than the first (passed on at least once)
    stage_unavailable_rows: int = 0  # rows kept at an earlier stage because a later one could not answer
    degraded_requests: int = 0  # requests whose budget degrade mode lowered
    cost: Histogram = field(default_factory=lambda: Histogram(FRACTION_BUCKETS))  # realised cost fraction per row
    controller_moves: int = 0  # threshold moves of the budget controllers

    def reject(self, reason: str) -> None:
        if reason not in self.rejections:
            raise ValueError(f"unknown rejection reason {reason!r}; use one of {', '.join(REASONS)}")
        self.rejections[reason] += 1

    def count_batch(self, rows: int, tokens: int, seconds: float) -> None:
        """A batch of ``rows`` rows and ``tokens`` tokens that took ``seconds`` in the model."""
        self.batches += 1
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(seconds)

    def count_answer(self, costs: Sequence[float | None], waited_seconds: float, degraded: bool) -> None:
        """A request answered: its rows' realised costs (None: not measured), its time in the queue."""
        self.answered += 1
        self.rows += len(costs)
        self.degraded_requests += degraded
        self.queue_wait_seconds.observe(waited_seconds)
        for cost in costs:
            if cost is not None:
                self.cost.observe(cost)

    def count_exits(self, stages: list[int], num_stages: int) -> None:
        if len(self.exits) < num_stages:
            self.exits += [0] * (num_stages - len(self.exits))
        for k in stages:
            self.exits[k] += 1
        self.deferred_rows += sum(1 for k in stages if k > 0)

    def snapshot(self) -> ModelStats:
        return copy.deepcopy(self)
