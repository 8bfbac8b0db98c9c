"""Evaluate saved predictors on a split: quality metrics and measured cost, ready for a report."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from summon.adaptive.kinds import as_staged
from summon.adaptive.knob import Knob
from summon.data.catalog import CATALOG
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec, TaskData
from summon.measure.cost import machine_info
from summon.measure.task import score
from summon.measure.timing import time_call

LATENCY_RUNS = 50  # timed adaptive runs per batch size, at most


def spec_for(predictor: Any, text: str, limit: int | None = None) -> DatasetSpec:
    """Parse a command-line data spec (``sst2:dev``, a file, ``hub:...``); files and hub sets get the predictor's task."""
    extra = {} if text.partition(":")[0] in CATALOG else {"task": predictor.task}
    return DatasetSpec.parse(text, require_split=True, limit=limit, **extra)


def load_for(predictor: Any, spec: DatasetSpec, data_dir: str | None = None) -> TaskData:
    """Load ``spec`` in the predictor's label set, checking the task matches and the labels fit: names (the data's,
    the catalog's or the spec's ``labels:``) are matched to the predictor's by name, and data for another label set
    (a stray name, an id beyond the predictor's labels, ids that stop short of them) is refused naming both sets
    (:func:`~summon.data.loading.load_split` with ``expected``)."""
    data = load_split(spec, data_dir=data_dir, expected=list(predictor.labels))
    if data.task != predictor.task:
        raise ValueError(f"{data.source} is a {data.task} set but the predictor does {predictor.task}")
    return data


def evaluate_staged(predictor: Any, data: TaskData, *, name: str, knob: Knob | None = None, latency: bool = True,
                    batch_sizes: Sequence[int] = (1, 32, 128), max_seconds: float = 10.0,
                    batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """A report entry for any predictor at an operating point (the calibrated default, or ``knob``).

    Metrics come from one adaptive run over the split. FLOPs per example are the mean over rows of the
    cumulative FLOPs of the stage each row reached; latency is the measured wall-clock time of adaptive
    runs at each batch size, per row (see :func:`_staged_latency`). An uncalibrated predictor runs every row to its
    last stage.
    """
    threshold = predictor.threshold_for(knob or Knob())
    items = predictor.inputs(data.examples)
    result = predictor.run(items, threshold, batch_size=batch_size, progress=f"eval {name}" if progress else False)
    metrics = score(data.task, data.labels, data.examples, list(result.logits))
    metrics["answered_by_stage"] = np.bincount(result.stage, minlength=predictor.num_stages).tolist()
    if result.fallback.any():
        metrics["fallbacks"] = int(result.fallback.sum())
    costs = predictor.calibration.costs if predictor.calibration else predictor.measure_costs(data.examples,
                                                                                            latency=False)
    cost: dict[str, Any] = {"params": predictor.num_parameters(),
                            "flops_per_example": float(np.mean(np.asarray(costs.flops)[result.stage])),
                            "threshold": threshold, "machine": machine_info(predictor.device)}
    if latency:
        cost["latency"] = _staged_latency(predictor, items, threshold, batch_sizes, max_seconds)
    return {"name": name, "path": str(predictor.path) if predictor.path else None, "data": data.source,
            "metrics": metrics, "cost": cost}


def _staged_latency(predictor: Any, items: Sequence[Any], threshold: float, batch_sizes: Sequence[int],
                    max_seconds: float) -> dict[str, dict[str, float]]:
    """Median milliseconds per row of adaptive runs at each batch size, over ``max(64, 4 * batch size)`` rows
    (at most 512, the split's rows in order, cycled when it is smaller), so each run sees a mix of stages.

    Each batch size warms up on one batch, then its runs over all the rows are timed by the one timing loop
    (:func:`~summon.measure.timing.time_call`): at least 3, at most 50, stopping once its share of ``max_seconds``
    has passed."""
    out = {}
    budget = max_seconds / max(1, len(batch_sizes))
    for bs in batch_sizes:
        rows = [items[i % len(items)] for i in range(min(512, max(64, 4 * bs)))]
        predictor.run(rows[:bs], threshold, batch_size=bs)  # warm-up
        seconds = time_call(partial(predictor.run, rows, threshold, batch_size=bs), device=predictor.device,
                            warmup=0, repeats=LATENCY_RUNS, max_seconds=budget)
        median = float(np.median(seconds)) * 1000.0
        out[str(bs)] = {"median_ms": median, "per_example_ms": median / len(rows), "rows": len(rows),
                        "runs": len(seconds)}
    return out


def evaluate_entry(predictor: Any, data: TaskData, *, name: str, knob: Knob | None = None, **options: Any) -> dict:
    """A report entry for any predictor (a plain one is the one-stage kind): :func:`evaluate_staged`."""
    return evaluate_staged(as_staged(predictor), data, name=name, knob=knob, **options)
