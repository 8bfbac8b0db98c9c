"""``OUT/report/report.{json,md,png}`` of a ``summon auto`` run: the front, the table, the choice and why."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from summon.core.files import REPORT_FORMAT
from summon.evaluation.report import markdown_table
from summon.measure.cost import machine_info
from summon.search.front import Point, front

__all__ = ["write_report"]


def write_report(result: dict[str, Any], points: Sequence[Point], folder: Path) -> dict[str, Path]:
    """Write the report of ``result`` (from :func:`~summon.search.auto.run_auto`) with every candidate's curve."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "png": folder / "report.png"}
    payload = {"format": REPORT_FORMAT, "title": "summon auto", "created": _now(), "machine": machine_info(),
               "entries": [], **result}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(_markdown(result), encoding="utf-8")
    _plot(result, points, paths["png"])
    return paths


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _markdown(result: dict[str, Any]) -> str:
    target = ", ".join(f"{k} {v:g}" for k, v in result["target"].items())
    lines = ["# summon auto", "", f"Target: {target} (δ = {result['delta']:g}"
             f"{', guaranteed' if result['guaranteed'] else ''}); budget {result['time_budget_minutes']:g} min, "
             f"used {result['minutes_used']:g} min. Held-out rows: "
             + ", ".join(f"{k} {v}" for k, v in result["rows"].items()) + ".", "", f"Protocol: {result['protocol']}.", ""]
    chosen = result.get("chosen")
    if chosen:
        cert = chosen["certificate"]
        lines += [f"**Chosen: {chosen['name']}** — {chosen['cost_at_target']:.4f} of the teacher's FLOPs, "
                  f"{_ms(chosen['ms_per_example_bs32'])} ms per example at batch 32; drop on the certification rows "
                  f"{100 * cert['drop']:.2f} points, certified ≤ {chosen['certified_drop_points']:.2f} points "
                  f"(probability ≥ {1 - cert['delta']:g}). Saved to `{chosen['path']}`.", "", f"Why: {result['why']}.", ""]
    else:
        lines += [f"**Nothing chosen**: {result['why']}.", ""]
    rows = [{"candidate": c["name"], "method": c["method"], "train min": _num(c["train_minutes"]),
             "cost at target": _num(c["cost_at_target"]) if c["meets_target"] else
             ("misses it" if c["meets_target"] is False else ""),
             "ms/example bs32": _ms(c["ms_per_example_bs32"]), "accuracy": _num(c["accuracy"]),
             "skipped": c["pruned_at"] or ""} for c in result["candidates"]]
    columns = ["candidate", "method", "train min", "cost at target", "ms/example bs32", "accuracy", "skipped"]
    lines += [markdown_table(rows, columns), ""]
    if result.get("next_in_line"):
        lines += ["A larger budget would try next: " + ", ".join(
            f"{p['name']} (~{p['estimated_minutes']:g} min)" for p in result["next_in_line"]) + ".", ""]
    if result.get("commands"):
        lines += ["Reproduce a candidate alone:", ""] + [f"- {n}: `{c}`" for n, c in result["commands"].items()] + [""]
    lines += ["Not searched yet: " + "; ".join(result["not_built"]) + ".", ""]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _ms(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def _plot(result: dict[str, Any], points: Sequence[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    by_candidate: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        by_candidate[point.candidate].append(point)
    for name, own in sorted(by_candidate.items()):
        own = sorted(own, key=lambda p: p.cost)
        style = "o" if len(own) == 1 else "-"
        ax.plot([max(p.cost, 1e-6) for p in own], [p.accuracy for p in own], style, lw=1.2, ms=5, label=name, alpha=0.8)
    edge = front(points)
    if edge:
        ax.step([max(p.cost, 1e-6) for p in edge], [p.accuracy for p in edge], where="post", color="black", lw=0.8,
                ls="--", label="front")
    teacher = result["teacher_accuracy_selection"]
    ax.axhline(teacher, color="grey", lw=0.8)
    if "max_drop" in result["target"]:
        ax.axhline(teacher - result["target"]["max_drop"], color="red", lw=0.8, ls=":", label="target")
    else:
        ax.axvline(result["target"]["budget"], color="red", lw=0.8, ls=":", label="target")
    chosen = result.get("chosen")
    if chosen:
        ax.plot([max(chosen["cost_at_target"], 1e-6)], [chosen["accuracy_selection"]], "*", ms=14, color="gold",
                markeredgecolor="black", label=f"chosen: {chosen['name']}")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example, fraction of the teacher (log)")
    ax.set_ylabel("accuracy (selection rows)")
    ax.set_title("summon auto: every candidate's accuracy vs cost")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
