"""Evaluate saved predictors on a split: quality metrics and measured cost, ready for a report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from summon.data.catalog import CATALOG
from summon.data.loading import load_split
from summon.data.spec import DatasetSpec, TaskData
from summon.evaluate.measure import measure_costs
from summon.evaluate.task import score
from summon.inference import predict_logits


def spec_for(predictor: Any, text: str, limit: int | None = None) -> DatasetSpec:
    """Parse a command-line data spec (``sst2:dev``, a file, ``hub:...``); files and hub sets get the predictor's task."""
    extra = {} if text.partition(":")[0] in CATALOG else {"task": predictor.task}
    return DatasetSpec.parse(text, limit=limit, **extra)


def load_for(predictor: Any, spec: DatasetSpec, data_dir: str | None = None) -> TaskData:
    """Load ``spec`` with the predictor's label set, checking the task matches."""
    if spec.labels is None:
        spec = DatasetSpec(**{**spec.__dict__, "labels": list(predictor.labels)})
    data = load_split(spec, data_dir=data_dir)
    if data.task != predictor.task:
        raise ValueError(f"{data.source} is a {data.task} set but the predictor does {predictor.task}")
    return data


def evaluate_predictor(predictor: Any, data: TaskData, *, name: str, latency: bool = True,
                       batch_sizes: Sequence[int] = (1, 32, 128), max_seconds: float = 10.0,
                       batch_size: int = 128, progress: bool = False) -> dict[str, Any]:
    """One report entry: ``{"name", "path", "data", "metrics", "cost"}`` (see :func:`summon.evaluate.write_report`)."""
    features = predictor.featurizer.encode(data.examples, data.task)
    # A calibrated staged predictor is measured as it runs: at its default operating point, adaptively.
    model = predictor.as_module() if getattr(predictor, "adaptive", None) else predictor.model
    rows = predict_logits(model, features, data.task, pad_id=predictor.featurizer.pad_id, batch_size=batch_size,
                          progress=f"eval {name}" if progress else False)
    metrics = score(data.task, data.labels, data.examples, rows)
    cost = measure_costs(model, features, predictor.featurizer.pad_id, latency=latency,
                         batch_sizes=batch_sizes, max_seconds=max_seconds)
    return {"name": name, "path": str(predictor.path) if predictor.path else None, "data": data.source,
            "metrics": metrics, "cost": cost}


def evaluate_cascade(cascade: Any, data: TaskData, *, name: str, threshold: float | None = None,
                     batch_size: int = 64) -> dict[str, Any]:
    """A report entry for a calibrated cascade at its default (or the given) threshold.

    FLOPs per example are the mean over rows of the cumulative FLOPs of the stages each row reached;
    latency is the measured wall-clock time of the whole stage-major run divided by the rows.
    """
    import time

    import numpy as np

    limit = cascade.threshold_for(threshold=threshold)
    start = time.perf_counter()
    result = cascade.run(data.examples, limit, batch_size=batch_size)
    seconds = time.perf_counter() - start
    metrics = score(data.task, data.labels, data.examples, list(result.logits))
    costs = cascade.costs
    flops = float(np.mean(np.asarray(costs.flops)[result.stage]))
    params = sum(int(sum(p.numel() for p in s.predictor.model.parameters())) for s in cascade.stages
                 if hasattr(s, "predictor"))
    metrics["answered_by_stage"] = np.bincount(result.stage, minlength=cascade.num_stages).tolist()
    metrics["fallbacks"] = int(result.fallback.sum())
    return {"name": name, "path": str(cascade.path) if cascade.path else None, "data": data.source,
            "metrics": metrics, "cost": {"params": params, "flops_per_example": flops,
                                         "latency": {str(batch_size): {"per_example_ms": 1000 * seconds / len(data)}}}}
