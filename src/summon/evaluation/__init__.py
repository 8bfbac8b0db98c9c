"""Evaluation: quality metrics, cost (parameters, the machine; FLOPs and latency are measured by
:mod:`summon.measure.stage_costs` and :mod:`summon.measure.profile`) and reports."""

from __future__ import annotations

from summon.evaluation.report import markdown_table, write_report
from summon.measure.cost import count_parameters, machine_info
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
    "count_parameters",
    "expected_calibration_error",
    "machine_info",
    "macro_f1",
    "markdown_table",
    "nll",
    "reliability_bins",
    "span_f1",
    "write_report",
]

from summon.measure.task import MAIN_METRIC, score

__all__ += ["MAIN_METRIC", "score"]
