"""The held-out protocol: calibrate on one part of the evaluation rows, report on the other, over random halvings.

Thresholds are never judged on the rows that chose them. The evaluation rows are halved at random: the
calibration half is split again, :data:`TEMPERATURE_SHARE` of it for the per-stage temperatures (and anything
else fitted before thresholds: gates, learned scores) and the rest for the threshold table; the operating point
chosen there is reported on the other half. This is repeated over many halvings drawn from one seed, and each
figure is the mean (and, where asked, the spread) of its per-halving values.

The draws are part of the published figures: :func:`halves` makes exactly the generator calls the benchmark
scripts made before it (one ``permutation``, the calibration half first, the cut rounded), so a figure computed
through it is the figure the scripts wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

TEMPERATURE_SHARE = 0.3  # of the calibration half; the benchmarks' published draws rest on this value
TOLERANCE = 1e-12  # a drop within this of the limit counts as within it (float rounding of accuracies)


class Split(NamedTuple):
    """One halving's sorted row indices: ``temperature`` and ``threshold`` rows (together the calibration
    half) and ``report`` rows (the other half). Unpacks as ``temp_rows, thr_rows, report_rows``."""

    temperature: np.ndarray
    threshold: np.ndarray
    report: np.ndarray

    @property
    def calibration(self) -> np.ndarray:
        """The whole calibration half (temperature and threshold rows), sorted."""
        return np.sort(np.concatenate([self.temperature, self.threshold]))


def halves(n: int, rng: np.random.Generator, *, temperature_share: float = TEMPERATURE_SHARE) -> Split:
    """One random halving of ``n`` rows, drawn from ``rng`` (one ``permutation`` call).

    Args:
        n: How many evaluation rows (at least 2).
        rng: The generator to draw from; successive calls give successive halvings.
        temperature_share: Share of the calibration half (``n // 2`` rows) that fits temperatures, rounded.

    Returns:
        The :class:`Split`; the report half has ``n - n // 2`` rows.
    """
    if n < 2:
        raise ValueError(f"the held-out protocol needs at least 2 evaluation rows, got {n}")
    if not 0.0 < temperature_share < 1.0:
        raise ValueError(f"temperature_share must be in (0, 1), got {temperature_share}")
    order = rng.permutation(n)
    calibration, report = order[: n // 2], order[n // 2:]
    cut = round(temperature_share * len(calibration))
    return Split(np.sort(calibration[:cut]), np.sort(calibration[cut:]), np.sort(report))


def halvings(n: int, count: int, seed: int, *, temperature_share: float = TEMPERATURE_SHARE) -> Iterator[Split]:
    """``count`` successive halvings of ``n`` rows from one generator seeded with ``seed``.

    Every method compared at the same ``seed`` sees the same halvings, in the same order.
    """
    if count < 0:
        raise ValueError(f"the number of halvings must be at least 0, got {count}")
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield halves(n, rng, temperature_share=temperature_share)


def first_halving(n: int, seed: int, *, temperature_share: float = TEMPERATURE_SHARE) -> Split:
    """The first of :func:`halvings` for ``seed``: the one halving a single calibration, a plot or a timing uses.

    Its ``calibration`` and ``report`` are also the two-way split (calibration half, report half) of ``n`` rows
    for a script that fits no temperatures of its own.
    """
    return halves(n, np.random.default_rng(seed), temperature_share=temperature_share)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when none is left.

    A None is a halving where the figure does not exist (no threshold reached the target, a budget below
    the cheapest stage); an empty mean is None (JSON null), never NaN, so a result file stays valid JSON.
    """
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def spread(values: Iterable[float | None]) -> float | None:
    """The standard deviation (population, ``ddof=0``) of the values that are not None; None when none is left."""
    kept = [v for v in values if v is not None]
    return float(np.std(kept)) if kept else None


def share_within(drops: Iterable[float | None], limit: float) -> float | None:
    """The share of halvings whose drop is at most ``limit`` (up to :data:`TOLERANCE`).

    A None drop (no operating point on that halving) counts as not within; None when there are no halvings.
    """
    return mean(float(d is not None and d <= limit + TOLERANCE) for d in drops)
