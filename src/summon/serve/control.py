"""Budgets that hold on live traffic: a small feedback controller per (model, budget).

Thresholds are chosen on a calibration split; on traffic from another distribution the same threshold can
send more rows to the later stages and spend more than the budget (an SST-2-calibrated early-exit model asked
for ``budget=0.4`` spent 0.42 on real movie reviews). A :class:`BudgetController` watches the realised cost
fraction of the rows answered at its budget and moves that budget's threshold along the *ladder* of the
calibration table's thresholds (sorted; a lower threshold stops every row at the same stage or earlier, so the
cost can only fall):

* a move is judged on the rows answered since the previous one (at least ``settle_rows``, at most ``window``),
  so a step is not taken again before its effect is seen;
* when their mean cost is above the budget, the threshold steps down by
  ``ceil(gain * excess * len(ladder))`` ladder points, at most ``max_step`` (default a tenth of the ladder);
* when it is below ``budget - relax_margin``, it steps back up one point, never above the calibrated
  threshold; between the two it stays (hysteresis, so it does not oscillate around the budget).

The lowest rung (``-inf``: every row stops at the first stage) always meets a feasible budget, so the loop
settles. The controller also compares the window's stage histogram with the calibration's at the calibrated
point (total variation distance, ``stage_drift``): how far the traffic has moved from the calibration data.

A model's controllers, one per budget knob served (at most ``max_controllers``), are kept in :class:`Controllers`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ControlConfig:
    """How budget controllers move (see the module docstring). The one declaration of these settings:
    ``summon serve`` derives its ``--controller-*`` flags from the fields (:mod:`summon.core.options`), and the
    engine and the Ray app take them as keywords."""

    window: int = field(default=512, metadata={"help": "controllers: rows in the sliding window of realised costs"})
    settle_rows: int = field(default=32, metadata={
        "help": "controllers: rows answered at a threshold before it is judged"})
    max_step: int | None = field(default=None, metadata={
        "help": "controllers: most ladder points per move down (default: a tenth of the ladder, at least 1)"})
    gain: float = field(default=1.0, metadata={
        "help": "controllers: ladder points per unit of excess cost, times the ladder's length"})
    relax_margin: float = field(default=0.05, metadata={
        "help": "controllers: step back up only when the realised cost is this far under the budget"})

    def __post_init__(self) -> None:
        for key in ("window", "settle_rows"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive whole number of rows, got {value!r}")
        if self.max_step is not None and (isinstance(self.max_step, bool) or not isinstance(self.max_step, int)
                                          or self.max_step < 1):
            raise ValueError(f"max_step must be a positive whole number of ladder points or None, got {self.max_step!r}")
        for key in ("gain", "relax_margin"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ControlState:
    """One budget's operating point as it stands: what calibration chose and what is in force."""

    budget: float
    unit: str | None
    calibrated_threshold: float
    threshold: float  # in force now
    window_rows: int
    window_mean_cost: float | None
    stage_drift: float | None  # total variation distance of the window's exits from the calibration's
    moves: int


class BudgetController:
    """Steers one budget's threshold by the realised cost of its rows (thread-safe)."""

    def __init__(self, budget: float, unit: str | None, ladder: Sequence[float], start: float,
                 expected_exits: Sequence[int] | None = None, config: ControlConfig | None = None):
        self.budget, self.unit = float(budget), unit
        self.config = config or ControlConfig()
        self._ladder = sorted(set(ladder) | {start})
        self._home = self._index = self._ladder.index(start)
        self._max_step = self.config.max_step or max(1, len(self._ladder) // 10)
        self._expected = None if not expected_exits or not sum(expected_exits) else (
            np.asarray(expected_exits, float) / sum(expected_exits))
        self._window: deque[tuple[float, int]] = deque(maxlen=self.config.window)
        self._since_move = 0
        self._moves = 0
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        with self._lock:
            return self._ladder[self._index]

    def observe(self, costs: Sequence[float], stages: Sequence[int]) -> int:
        """Record answered rows (cost fraction and stage of each); returns the move made (ladder points,
        negative when the threshold went down, 0 for none)."""
        with self._lock:
            for cost, stage in zip(costs, stages, strict=True):
                self._window.append((float(cost), int(stage)))
            self._since_move = min(self._since_move + len(costs), self.config.window)
            if self._since_move < self.config.settle_rows:
                return 0
            move = self._decide(self._recent_mean())
            if move:
                self._index += move
                self._since_move = 0
                self._moves += 1
            return move

    def _recent_mean(self) -> float:
        recent = list(self._window)[-self._since_move:]
        return sum(c for c, _ in recent) / len(recent)

    def _decide(self, mean: float) -> int:
        if mean > self.budget and self._index > 0:
            excess_points = math.ceil(self.config.gain * (mean - self.budget) * len(self._ladder))
            return -min(self._index, self._max_step, max(1, excess_points))
        if mean < self.budget - self.config.relax_margin and self._index < self._home:
            return 1
        return 0

    def state(self) -> ControlState:
        with self._lock:
            costs = [c for c, _ in self._window]
            return ControlState(
                budget=self.budget, unit=self.unit, calibrated_threshold=self._ladder[self._home],
                threshold=self._ladder[self._index], window_rows=len(costs),
                window_mean_cost=sum(costs) / len(costs) if costs else None, stage_drift=self._drift(),
                moves=self._moves)

    def _drift(self) -> float | None:
        if self._expected is None or not self._window:
            return None
        seen = np.bincount([s for _, s in self._window], minlength=len(self._expected)).astype(float)
        seen = seen[: len(self._expected)] / max(1.0, seen.sum())
        return float(0.5 * np.abs(seen - self._expected).sum())



class Controllers:
    """One model's budget controllers: one per budget knob, at most ``limit`` (more distinct budgets run
    uncontrolled); thread-safe."""

    def __init__(self, limit: int):
        self.limit = limit
        self._controllers: dict[Hashable, BudgetController] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> BudgetController | None:
        with self._lock:
            return self._controllers.get(key)

    def add(self, key: Hashable, make: Callable[[], BudgetController]) -> None:
        """A controller for ``key`` made by ``make()``, unless it has one or the limit is reached."""
        with self._lock:
            if key not in self._controllers and len(self._controllers) < self.limit:
                self._controllers[key] = make()

    def states(self) -> list[ControlState]:
        with self._lock:
            controllers = list(self._controllers.values())
        return [c.state() for c in controllers]
