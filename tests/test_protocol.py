"""The held-out protocol (summon.evaluation.protocol): halvings, their shares, their draws, and the one mean."""

from __future__ import annotations

import numpy as np
import pytest

from summon.evaluation.protocol import (
    TEMPERATURE_SHARE,
    Split,
    first_halving,
    halves,
    halvings,
    mean,
    share_within,
    spread,
)


def old_benchmark_halves(n: int, rng: np.random.Generator):
    """The reference oracle: the lines benchmarks/early_exit.py and cascade.py each carried before the module."""
    order = rng.permutation(n)
    calib, report = order[: n // 2], order[n // 2:]
    cut = round(0.3 * len(calib))
    return np.sort(calib[:cut]), np.sort(calib[cut:]), np.sort(report)


def old_serve_load_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """The reference oracle: benchmarks/serve_load.py's two-way split of SST-2 dev (used by int8.py too)."""
    order = np.random.default_rng(seed).permutation(n)
    half = len(order) // 2
    return sorted(order[:half].tolist()), sorted(order[half:].tolist())


@pytest.mark.parametrize("n", [2, 3, 10, 101, 872])
def test_a_halving_is_disjoint_sorted_and_covers_every_row(n):
    split = halves(n, np.random.default_rng(0))
    rows = np.concatenate(split)
    assert sorted(rows.tolist()) == list(range(n))
    assert all(np.array_equal(part, np.sort(part)) for part in split)
    assert len(split.report) == n - n // 2 and len(split.calibration) == n // 2
    assert np.array_equal(split.calibration, np.sort(np.concatenate([split.temperature, split.threshold])))


def test_temperature_rows_are_the_stated_share_of_the_calibration_half():
    split = halves(1000, np.random.default_rng(1))
    assert len(split.temperature) == round(TEMPERATURE_SHARE * 500) == 150 and len(split.threshold) == 350
    other = halves(1000, np.random.default_rng(1), temperature_share=0.5)
    assert len(other.temperature) == len(other.threshold) == 250
    assert np.array_equal(other.calibration, split.calibration)  # the share cuts the same half, nothing else


@pytest.mark.parametrize(("n", "seed"), [(872, 42), (7600, 42), (101, 3), (2, 0)])
def test_halvings_reproduce_the_old_benchmark_draws(n, seed):
    rng = np.random.default_rng(seed)
    for split in halvings(n, 20, seed):
        expected = old_benchmark_halves(n, rng)
        assert isinstance(split, Split) and len(split) == 3
        for got, want in zip(split, expected, strict=True):
            assert np.array_equal(got, want)


def test_first_halving_is_the_old_single_draw_and_the_old_two_way_split():
    n, seed = 872, 42
    temp, thr, report = old_benchmark_halves(n, np.random.default_rng(seed))
    first = first_halving(n, seed)
    assert np.array_equal(first.report, report)
    assert np.array_equal(first.calibration, np.sort(np.concatenate([temp, thr])))  # early_exit.py's first_calib
    assert np.array_equal(first.temperature, next(halvings(n, 5, seed)).temperature)
    calib, load = old_serve_load_halves(n, seed)
    assert first.calibration.tolist() == calib and first.report.tolist() == load


def test_halvings_are_deterministic_per_seed_and_differ_between_halvings_and_seeds():
    a, b = list(halvings(200, 4, 7)), list(halvings(200, 4, 7))
    assert all(np.array_equal(x, y) for s, t in zip(a, b, strict=True) for x, y in zip(s, t, strict=True))
    assert not np.array_equal(a[0].report, a[1].report)
    assert not np.array_equal(a[0].report, next(halvings(200, 1, 8)).report)
    assert list(halvings(200, 0, 7)) == []


@pytest.mark.parametrize(("call", "message"), [
    (lambda: halves(1, np.random.default_rng(0)), "at least 2"),
    (lambda: halves(10, np.random.default_rng(0), temperature_share=1.0), "temperature_share"),
    (lambda: list(halvings(10, -1, 0)), "at least 0"),
])
def test_bad_arguments_say_what_was_seen(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mean_skips_none_and_an_empty_mean_is_none():
    assert mean([1.0, None, 3.0]) == 2.0
    assert mean(x for x in (0.5, 0.25)) == 0.375  # any iterable, generators included
    assert mean([]) is None and mean([None, None]) is None
    assert isinstance(mean([1, 2]), float)


def test_spread_is_the_population_std_over_halvings():
    assert spread([1.0, 3.0]) == 1.0  # ddof=0, as the early-exit benchmark's drop_std was written
    assert spread([2.0, None, 4.0, 6.0]) == pytest.approx(float(np.std([2.0, 4.0, 6.0])))
    assert spread([0.7]) == 0.0 and spread([]) is None and spread([None]) is None


def test_share_within_counts_the_limit_and_counts_none_as_outside():
    eps = 0.01
    drops = [0.0, eps, 0.1 + 0.2 - 0.3 + eps, 0.02, None]  # a rounding hair above the limit still counts
    assert share_within(drops, eps) == 3 / 5
    old = [float(d <= eps + 1e-12) for d in drops[:4]]  # the benchmarks' old inline formula
    assert share_within(drops[:4], eps) == float(np.mean(old))
    assert share_within([], eps) is None
