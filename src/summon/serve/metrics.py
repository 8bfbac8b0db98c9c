"""Prometheus metrics of a serving app, read at scrape time from the engine's counters and the app's own.

Nothing is counted twice: the engine counts in :class:`~summon.serve.stats.ModelStats` (read through
:meth:`~summon.serve.engine.Engine.stats`), the HTTP layer in an :class:`HttpStats`, and one custom collector
(:class:`ServingCollector`) turns both into metric families when ``/metrics`` is scraped. Each app has its own
registry (:func:`metrics_registry`), never the process-wide default, so two apps in one process (tests, a
student and its teacher) keep apart.

Names follow Prometheus' conventions: base units (seconds, rows, cost fractions), ``_total`` counters:

==========================================  =========  =============================================================
metric                                      type       labels / meaning
==========================================  =========  =============================================================
``summon_http_requests_total``              counter    ``route``, ``method``, ``status``
``summon_http_request_duration_seconds``    histogram  ``route``: arrival to the last byte of the answer's head
``summon_http_requests_in_flight``          gauge      HTTP requests being answered now
``summon_ready``                            gauge      1 when ``/ready`` answers 200
``summon_requests_total``                   counter    ``model``: requests accepted into the queue
``summon_requests_answered_total``          counter    ``model``
``summon_requests_failed_total``            counter    ``model``: accepted, then drained, expired or failed
``summon_requests_cancelled_total``         counter    ``model``: accepted, then given up by the client (it left)
``summon_requests_timed_out_total``         counter    ``model``: accepted, then answered 504 (request timeout)
``summon_rejections_total``                 counter    ``model``, ``reason`` (queue_full, deadline, infeasible_knob,
                                                       too_large, draining)
``summon_rows_total``                       counter    ``model``: rows answered
``summon_batches_total``                    counter    ``model``
``summon_batch_rows``                       histogram  ``model``: rows per batch
``summon_batch_tokens``                     histogram  ``model``: tokens per batch (words for cascades, ensembles)
``summon_queue_wait_seconds``               histogram  ``model``: per request
``summon_inference_seconds``                histogram  ``model``: per batch
``summon_queue_rows``                       gauge      ``model``: rows waiting in the queue
``summon_queue_requests``                   gauge      ``model``: requests waiting in the queue
``summon_in_flight_rows``                   gauge      ``model``: rows in the model now
``summon_cost_fraction``                    histogram  ``model``: realised cost of each row (fraction of the full model)
``summon_exits_total``                      counter    ``model``, ``stage``: rows answered by each stage
``summon_deferred_rows_total``              counter    ``model``: rows answered past the first stage
``summon_stage_unavailable_rows_total``     counter    ``model``: rows kept at an earlier stage (a remote one failed)
``summon_fallback_requests_total``          counter    ``model``: answered requests with such a row
``summon_degraded_requests_total``          counter    ``model``: requests whose budget degrade mode lowered
``summon_controller_moves_total``           counter    ``model``: threshold moves of the budget controllers
``summon_budget_threshold``                 gauge      ``model``, ``budget``, ``unit``: the threshold in force
``summon_budget_window_mean_cost``          gauge      ``model``, ``budget``, ``unit``: realised cost over the window
``summon_budget_stage_drift``               gauge      ``model``, ``budget``, ``unit``: exits' distance from calibration
==========================================  =========  =============================================================
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from summon.serve.stats import SECOND_BUCKETS, Histogram, ModelStats

try:  # the serve extra; metrics_registry says how to install it when it is missing
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.utils import floatToGoString
except ImportError:  # pragma: no cover - exercised only without the extra
    CollectorRegistry = None
    CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class HttpStats:
    """What the HTTP layer counts (thread-safe): answers by route, method and status, their durations, the
    requests in flight, and answered requests that carried a fallback row."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    in_flight: int = 0
    fallback_requests: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.durations.setdefault(route, Histogram(SECOND_BUCKETS)).observe(seconds)

    def fallback(self, model: str) -> None:
        with self._lock:
            self.fallback_requests[model] = self.fallback_requests.get(model, 0) + 1

    def snapshot(self) -> HttpStats:
        with self._lock:
            return HttpStats(dict(self.requests), copy.deepcopy(self.durations), self.in_flight,
                             dict(self.fallback_requests))


class ServingCollector:
    """A Prometheus collector reading ``engine.stats()``, ``engine.thresholds_in_force()`` and an
    :class:`HttpStats` at each scrape (see the module docstring)."""

    def __init__(self, engine: Any, http: HttpStats, ready: Callable[[], bool]):
        self.engine, self.http, self.ready = engine, http, ready

    def describe(self) -> list:
        return []  # the families depend on the models served and the budgets asked for

    def collect(self) -> Iterator[Any]:
        http = self.http.snapshot()
        yield from http_families(http)
        ready = GaugeMetricFamily("summon_ready", "1 when the server is ready (GET /ready answers 200)")
        ready.add_metric([], float(self.ready()))
        yield ready
        yield from engine_families(self.engine.stats(), http.fallback_requests)
        yield from budget_families(self.engine.thresholds_in_force())


def metrics_registry(engine: Any, http: HttpStats, ready: Callable[[], bool]) -> Any:
    """A registry of its own holding one :class:`ServingCollector`."""
    if CollectorRegistry is None:
        raise ValueError("metrics need prometheus-client: pip install 'summon[serve]'")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingCollector(engine, http, ready))
    return registry


def render(registry: Any) -> bytes:
    """The registry in Prometheus' text format (:data:`CONTENT_TYPE_LATEST`)."""
    return generate_latest(registry)


# --- families -----------------------------------------------------------------------------------------------


def http_families(http: HttpStats) -> Iterator[Any]:
    requests = CounterMetricFamily("summon_http_requests", "HTTP requests answered, by route, method and status",
                                   labels=["route", "method", "status"])
    for (route, method, status), n in sorted(http.requests.items()):
        requests.add_metric([route, method, status], n)
    yield requests
    duration = HistogramMetricFamily("summon_http_request_duration_seconds", "Time to answer an HTTP request",
                                     labels=["route"])
    for route, histogram in sorted(http.durations.items()):
        _add_histogram(duration, [route], histogram)
    yield duration
    in_flight = GaugeMetricFamily("summon_http_requests_in_flight", "HTTP requests being answered now")
    in_flight.add_metric([], http.in_flight)
    yield in_flight


COUNTERS = (  # (name, help, ModelStats field)
    ("summon_requests", "Requests accepted into the model's queue", "requests"),
    ("summon_requests_answered", "Requests answered", "answered"),
    ("summon_requests_failed", "Accepted requests that ended in an error (drained, expired, model error)", "failed"),
    ("summon_requests_cancelled", "Accepted requests whose client left before the answer (not answered)", "cancelled"),
    ("summon_requests_timed_out", "Accepted requests answered 504 at the request timeout (not answered)", "timed_out"),
    ("summon_rows", "Rows answered", "rows"),
    ("summon_batches", "Batches run", "batches"),
    ("summon_deferred_rows", "Rows answered by a later stage than the first", "deferred_rows"),
    ("summon_stage_unavailable_rows", "Rows kept at an earlier stage because a later one could not answer",
     "stage_unavailable_rows"),
    ("summon_degraded_requests", "Requests whose budget degrade mode lowered", "degraded_requests"),
    ("summon_controller_moves", "Threshold moves of the budget controllers", "controller_moves"),
)
GAUGES = (
    ("summon_queue_rows", "Rows waiting in the model's queue", "queue_rows"),
    ("summon_queue_requests", "Requests waiting in the model's queue", "queue_requests"),
    ("summon_in_flight_rows", "Rows in the model now", "in_flight_rows"),
)
HISTOGRAMS = (
    ("summon_batch_rows", "Rows per batch", "batch_rows"),
    ("summon_batch_tokens", "Tokens per batch (word pieces where the model tokenises once; words for cascades and "
     "ensembles)", "batch_tokens"),
    ("summon_queue_wait_seconds", "Time a request waited in the queue", "queue_wait_seconds"),
    ("summon_inference_seconds", "Time a batch spent in the model", "inference_seconds"),
    ("summon_cost_fraction", "Realised cost of each answered row, as a fraction of the full model", "cost"),
)


def engine_families(stats: dict[str, ModelStats], fallback_requests: dict[str, int]) -> Iterator[Any]:
    models = sorted(stats)
    for name, doc, key in COUNTERS:
        family = CounterMetricFamily(name, doc, labels=["model"])
        for model in models:
            family.add_metric([model], getattr(stats[model], key))
        yield family
    fallback = CounterMetricFamily("summon_fallback_requests", "Answered requests with a row kept at an earlier "
                                   "stage because a later one could not answer", labels=["model"])
    for model in models:
        fallback.add_metric([model], fallback_requests.get(model, 0))
    yield fallback
    for name, doc, key in GAUGES:
        family = GaugeMetricFamily(name, doc, labels=["model"])
        for model in models:
            family.add_metric([model], getattr(stats[model], key))
        yield family
    for name, doc, key in HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=["model"])
        for model in models:
            _add_histogram(family, [model], getattr(stats[model], key))
        yield family
    yield _rejections(stats)
    yield _exits(stats)


def _rejections(stats: dict[str, ModelStats]) -> Any:
    family = CounterMetricFamily("summon_rejections", "Requests refused, by reason", labels=["model", "reason"])
    for model in sorted(stats):
        for reason, n in stats[model].rejections.items():
            family.add_metric([model, reason], n)
    return family


def _exits(stats: dict[str, ModelStats]) -> Any:
    family = CounterMetricFamily("summon_exits", "Rows answered by each stage", labels=["model", "stage"])
    for model in sorted(stats):
        for stage, n in enumerate(stats[model].exits):
            family.add_metric([model, str(stage)], n)
    return family


def budget_families(in_force: dict[str, Any]) -> Iterator[Any]:
    """Per controlled budget: the threshold in force, the window's mean cost and its stage drift."""
    labels = ["model", "budget", "unit"]
    threshold = GaugeMetricFamily("summon_budget_threshold", "Confidence threshold in force for a budget", labels=labels)
    cost = GaugeMetricFamily("summon_budget_window_mean_cost", "Realised mean cost of a budget's recent rows",
                             labels=labels)
    drift = GaugeMetricFamily("summon_budget_stage_drift", "Total variation distance of a budget's recent exits "
                              "from the calibration's", labels=labels)
    for model, forced in sorted(in_force.items()):
        for state in forced.budgets if forced is not None else ():
            values = [model, f"{state.budget:g}", state.unit or "calibration"]
            threshold.add_metric(values, state.threshold)
            if state.window_mean_cost is not None:
                cost.add_metric(values, state.window_mean_cost)
            if state.stage_drift is not None:
                drift.add_metric(values, state.stage_drift)
    yield from (threshold, cost, drift)


def _add_histogram(family: Any, labels: list[str], histogram: Histogram) -> None:
    buckets = [("+Inf" if math.isinf(le) else floatToGoString(le), n) for le, n in histogram.cumulative()]
    family.add_metric(labels, buckets, sum_value=histogram.total)
