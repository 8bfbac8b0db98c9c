"""Evaluation: quality metrics, cost measurement (parameters, FLOPs, latency) and reports."""

from __future__ import annotations

from summon.evaluate.report import markdown_table, write_report
from summon.measure.cost import (
    cost_summary,
    count_flops,
    count_parameters,
    machine_info,
    measure_latency,
)
from summon.measure.metrics import (
    accuracy,
    classification_metrics,
    expected_calibration_error,
    macro_f1,
    nll,
    reliability_bins,
    span_f1,
)

__all__ = [
    "accuracy",
    "classification_metrics",
    "cost_summary",
    "count_flops",
    "count_parameters",
    "expected_calibration_error",
    "machine_info",
    "macro_f1",
    "markdown_table",
    "measure_latency",
    "nll",
    "reliability_bins",
    "span_f1",
    "write_report",
]

from summon.measure.task import MAIN_METRIC, score

__all__ += ["MAIN_METRIC", "score"]
