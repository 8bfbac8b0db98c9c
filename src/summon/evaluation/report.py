"""Write a quality-versus-cost report (JSON, Markdown, PNG) for a set of evaluated models.

An entry is ``{"name": str, "metrics": {...}, "cost": {"params": int, "flops_per_example": float,
"latency": {"1": {"per_example_ms": ...}, ...}}, ...}``; extra keys are kept in the JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from numbers import Real
from pathlib import Path
from typing import Any

from summon.core.files import REPORT_FORMAT
from summon.measure.cost import machine_info

logger = logging.getLogger(__name__)

_MAIN_METRICS = ("accuracy", "f1")
_LATENCY_PLOT_BS = "32"
_MISSING = "-"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Render rows as a GitHub-flavoured Markdown table.

    Args:
        rows: One dict per row; values are turned into text with ``str`` (a missing key gives ``-``).
        columns: Column headers, in order; also the keys looked up in each row.

    Returns:
        The table, one line per row after the header and separator lines, ending with a newline.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column.")

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, _MISSING)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _validate(entries: Any, reference: str | None) -> None:
    """Check entry structure, unique names and the reference name; raise ValueError naming the bad entry."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"entries must be a non-empty list of dicts, got {entries!r:.80}.")
    names: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            msg = f"entry {i} must be a dict, got {type(entry).__name__}."
            raise ValueError(msg)
        label = f"entry {i} ({entry['name']!r})" if "name" in entry else f"entry {i}"
        missing = [k for k in ("name", "metrics", "cost") if k not in entry]
        if missing:
            raise ValueError(f"{label} lacks {missing}; each entry needs 'name', 'metrics' and 'cost'.")
        if not isinstance(entry["name"], str) or not entry["name"]:
            raise ValueError(f"{label}: 'name' must be a non-empty string.")
        if not isinstance(entry["metrics"], dict):
            msg = f"{label}: 'metrics' must be a dict, got {type(entry['metrics']).__name__}."
            raise ValueError(msg)
        cost = entry["cost"]
        if not isinstance(cost, dict) or not all(
            _is_number(cost.get(k)) for k in ("params", "flops_per_example")
        ):
            raise ValueError(f"{label}: 'cost' must be a dict with numeric 'params' and 'flops_per_example'.")
        if entry["name"] in names:
            raise ValueError(f"{label}: the name is used by an earlier entry; names must be unique.")
        names.append(entry["name"])
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not an entry name; names are {names}.")


def _metric_columns(entries: list[dict]) -> list[str]:
    """Numeric metric names across entries, accuracy first, then in order of first appearance."""
    seen: list[str] = []
    for entry in entries:
        for key, value in entry["metrics"].items():
            if _is_number(value) and key not in seen:
                seen.append(key)
    if "accuracy" in seen:
        seen.remove("accuracy")
        seen.insert(0, "accuracy")
    return seen


def _latency_sizes(entries: list[dict]) -> list[str]:
    """Batch-size keys (as strings) present in any entry's latency, in numeric order."""
    sizes = {str(bs) for entry in entries for bs in (entry["cost"].get("latency") or {})}
    return sorted(sizes, key=lambda s: (0, int(s)) if s.isdigit() else (1, s))


def _per_example_ms(entry: dict, bs: str) -> float | None:
    stats = (entry["cost"].get("latency") or {}).get(bs)
    value = stats.get("per_example_ms") if isinstance(stats, dict) else None
    return float(value) if _is_number(value) else None


def _fmt_metric(value: Any) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, bool) or not _is_number(value):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def _fmt_small(value: float) -> str:
    """Three decimals, or scientific notation below 0.01 so small values do not print as 0.000."""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2e}"


def _fmt_flops(flops: float) -> str:
    if flops >= 1e9:
        return f"{flops / 1e9:.3g} G"
    return f"{flops / 1e6:.3g} M"


def _table_rows(entries: list[dict], reference: str | None) -> tuple[list[dict], list[str]]:
    """Rows and column names of the Markdown summary table."""
    metrics = _metric_columns(entries)
    sizes = _latency_sizes(entries)
    ref_flops = None
    if reference is not None:
        ref_flops = float(next(e for e in entries if e["name"] == reference)["cost"]["flops_per_example"])
    frac_col = f"cost vs {reference}"
    lat_cols = {bs: f"ms/example @bs{bs}" for bs in sizes}
    columns = ["name", *metrics, "params (M)", "FLOPs/example"]
    if reference is not None:
        columns.append(frac_col)
    columns.extend(lat_cols.values())
    rows = []
    for entry in entries:
        cost = entry["cost"]
        row: dict[str, str] = {"name": entry["name"]}
        for m in metrics:
            row[m] = _fmt_metric(entry["metrics"].get(m))
        row["params (M)"] = f"{cost['params'] / 1e6:.2f}"
        row["FLOPs/example"] = _fmt_flops(float(cost["flops_per_example"]))
        if ref_flops is not None:
            frac = float(cost["flops_per_example"]) / ref_flops if ref_flops > 0 else None
            row[frac_col] = f"{_fmt_small(frac)}x" if frac is not None else "n/a"
        for bs, col in lat_cols.items():
            ms = _per_example_ms(entry, bs)
            row[col] = _fmt_small(ms) if ms is not None else _MISSING
        rows.append(row)
    return rows, columns


def _main_metric(entries: list[dict]) -> str | None:
    for name in _MAIN_METRICS:
        if any(_is_number(e["metrics"].get(name)) for e in entries):
            return name
    return None


def _scatter(ax: Any, points: list[tuple[str, float, float]], xlabel: str, ylabel: str) -> None:
    """Labelled scatter on a log x axis; points are (name, x, y) with x > 0."""
    if not points:
        ax.text(0.5, 0.5, f"no data for {xlabel}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    for name, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _plot(entries: list[dict], path: Path, title: str) -> None:
    """Save the two-panel quality-versus-cost figure; uses the Agg canvas, never a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = _main_metric(entries)
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    flops_pts, lat_pts = [], []
    for e in entries:
        y = e["metrics"].get(metric) if metric else None
        if not _is_number(y) or not math.isfinite(y):
            continue
        flops = float(e["cost"]["flops_per_example"])
        if flops > 0:
            flops_pts.append((e["name"], flops, float(y)))
        else:
            logger.warning("entry %r has %s FLOPs per example; left off the log-scale plot", e["name"], flops)
        ms = _per_example_ms(e, _LATENCY_PLOT_BS)
        if ms is not None and ms > 0:
            lat_pts.append((e["name"], ms, float(y)))
    ylabel = metric or "(no accuracy or f1 metric)"
    _scatter(left, flops_pts, "FLOPs per example", ylabel)
    _scatter(right, lat_pts, f"latency per example at batch size {_LATENCY_PLOT_BS} (ms)", ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays, tensors and paths JSON-serializable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to report.json")


def write_report(
    entries: list[dict], out_dir: str | Path, *, title: str, reference: str | None = None
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` comparing models on quality and cost.

    The Markdown table lists each model's numeric metrics (accuracy first, 4 decimals), parameters in
    millions, FLOPs per example, the FLOPs fraction of the ``reference`` entry if given, and the
    per-example latency at each measured batch size. The figure plots the main metric (``accuracy`` if
    present, else ``f1``) against FLOPs per example (log x) and against per-example latency at batch size 32.

    Args:
        entries: One dict per model (see the module docstring); extra keys are kept in the JSON.
        out_dir: Directory to write into (created if missing).
        title: Report title.
        reference: Name of the entry whose FLOPs the cost fractions are relative to.

    Returns:
        ``{"json": path, "markdown": path, "png": path}``.
    """
    _validate(entries, reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}

    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    payload = {
        "format": REPORT_FORMAT,  # summon eval --out may replace a folder holding this report, and nothing else
        "title": title,
        "reference": reference,
        "created": created,
        "machine": machine_info(),
        "entries": entries,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")

    rows, columns = _table_rows(entries, reference)
    lines = [f"# {title}", "", f"Created {created}."]
    if reference is not None:
        lines.append(f"Cost fraction = FLOPs per example relative to `{reference}`.")
    md = "\n".join(lines) + "\n\n" + markdown_table(rows, columns)
    paths["markdown"].write_text(md, encoding="utf-8")

    _plot(entries, paths["png"], title)
    logger.info("wrote report for %d models to %s", len(entries), out)
    return paths
