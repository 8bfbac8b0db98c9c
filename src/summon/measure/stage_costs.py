"""What answering at each stage costs, measured once for every kind: FLOPs counted by torch and milliseconds timed
on this machine, by one function (:func:`measure_costs`) over a stage runner (a kind's
:class:`~summon.adaptive.executor.StageRunner`, or :class:`~summon.measure.profile.ModelRunner` for a bare
model).

Answering at stage k pays for everything run so far: the kind's featurisation (``inputs``), then stages 0..k, each
its compute and its read-out. A kind says only what its reference ("the full model") runs:

* early exit: every layer and only the last head (the model as it would run without exits), a callable;
* cascade: the last stage alone (a stage index);
* progressive ensemble, a plain predictor, a bare model: every stage (the default).

A stage that measures itself (a remote model behind HTTP, a Ray Serve deployment) plugs in through one runner
method, ``measure(stage, examples, *, latency, **rule) -> StageMeasurement | None`` (None for a stage counted and
timed here), which the cascade's runner forwards to its stage's own ``measure``.

This module sits in the measurement layer: it knows stage runners only through the methods it calls, and imports
nothing but :mod:`summon.measure`.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, NamedTuple

import torch

from summon.measure.cost import FlopMeter
from summon.measure.device import device_name
from summon.measure.timing import MAX_SECONDS, REPEATS, WARMUP, time_call

logger = logging.getLogger(__name__)

COST_ROWS = 512  # examples whose FLOPs are counted
COST_BATCH = 32  # rows per batch when counting FLOPs, longest first (as the executor batches)
TIMING_ROWS = 32  # the batch whose milliseconds are timed: the first examples, cycled to this many

MS_INCLUDES = ("canonical examples to raw logits: the kind's inputs() (featurisation) and stages 0..k; median "
               "milliseconds per example over timed runs of one batch of batch_size")


@dataclass
class StageCosts:
    """Cumulative cost of answering at each stage, and of the reference full model, per example.

    ``ms`` means what :data:`MS_INCLUDES` says (see :func:`measure_costs`); ``ms_includes`` records it with the
    numbers (None in costs saved before summon stated it).
    """

    flops: list[float]  # [S] FLOPs per example when answering at stage k
    flops_full: float
    ms: list[float] | None = None  # [S] milliseconds per example at ``batch_size``, when measured
    ms_full: float | None = None
    batch_size: int | None = None
    device: str | None = None  # where the milliseconds were measured
    ms_includes: str | None = None  # what the milliseconds include (MS_INCLUDES), when measured

    def fractions(self, unit: str = "flops") -> list[float]:
        """Cost of answering at each stage as a fraction of the full model, in ``flops`` or ``ms``."""
        if unit == "flops":
            return [f / self.flops_full for f in self.flops]
        if unit == "ms":
            if self.ms is None or not self.ms_full:
                raise ValueError("no measured latency in these costs; measure them with latency=True")
            return [m / self.ms_full for m in self.ms]
        raise ValueError(f"cost unit must be 'flops' or 'ms', got {unit!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageCosts:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class StageMeasurement(NamedTuple):
    """What a stage that measures itself reports: FLOPs per example (None: unknown, counted as 0), milliseconds
    per example of the stage alone (None: not timed, or the stage did not answer) and where it ran."""

    flops: float | None
    ms: float | None
    where: str


Reference = Callable[[Sequence[Any]], Any] | int | None


@torch.inference_mode()
def measure_costs(runner: Any, examples: Sequence[Any], *, inputs: Callable[[Sequence[Any]], Sequence[Any]] = list,
                  reference: Reference = None, latency: bool = True, device: torch.device | str | None = None,
                  separate_models: bool = False, rows: int = COST_ROWS, batch_size: int = COST_BATCH,
                  timing_rows: int = TIMING_ROWS, warmup: int = WARMUP, repeats: int = REPEATS,
                  max_seconds: float = MAX_SECONDS) -> StageCosts:
    """FLOPs and milliseconds per example of answering at each stage of ``runner``, and of the reference model.

    **FLOPs** are counted by torch (:class:`~summon.measure.cost.FlopMeter`) over the first ``rows`` examples: their
    stage-0 pieces (``inputs(examples)``, not counted) sorted by ``runner.length``, longest first, in batches of
    ``batch_size``, each batch run through every stage as the executor runs a batch that goes on whole (stage 0:
    ``runner.begin(0, pieces)`` then ``runner.run(0, ·)``; stage k: ``runner.follow(k - 1, ·)``, or ``unpack`` and
    ``begin`` for a runner without ``follow``, then ``runner.run(k, ·)``). Answering at stage k costs the FLOPs of
    stages 0..k over every batch divided once by the number of examples; with ``separate_models`` (a cascade, an
    ensemble: each stage a model with FLOPs per example of its own, which is all a remote stage reports), the
    running sum of each stage's FLOPs per example. The two differ at most in the last bit; each is what its kinds
    have always reported, so saved calibrations keep their figures.

    **Milliseconds** (with ``latency``) are wall-clock time per example from canonical examples to raw stage
    logits, on one batch of ``timing_rows`` examples (the first ones, cycled): stage 0 includes the kind's
    featurisation (``inputs(examples)``: tokenising, collating, moving to the device; for kinds whose stages
    featurize for themselves, inside their ``run``), and answering at stage k includes stages 0..k, each with
    the hand-over from the stage before. Calibration (temperatures, scores) and the executor's regrouping of rows
    between stages are not inside. Each piece (featurisation, each stage, the reference) is timed apart by the one
    timing loop (:func:`~summon.measure.timing.time_call` on ``device``: ``warmup`` untimed runs, up to
    ``repeats`` timed ones, the medians kept), with ``max_seconds`` shared evenly between the pieces; a stage that
    measures itself reports its own (a remote stage: the whole round trip). :data:`MS_INCLUDES` says it with the
    numbers.

    **The reference** (``flops_full``, ``ms_full``), what the kind calls its full model, starts from canonical
    examples too: ``None`` runs every stage (the last stage's cumulative cost); an ``int`` j is stage j alone (plus
    featurisation); a callable ``reference(pieces)`` runs on every batch of stage-0 pieces, counted and timed like
    a stage (early exit: every layer and only the last head).

    Args:
        runner: the kind's :class:`~summon.adaptive.executor.StageRunner` (optionally with ``follow`` and with
            ``measure(stage, examples, *, latency, **rule) -> StageMeasurement | None``), or a bare model's
            :class:`~summon.measure.profile.ModelRunner`.
        examples: canonical examples (calibration rows).
        inputs: canonical examples -> stage-0 pieces (``predictor.inputs``).
        device: where the stages run (the clock waits for its queued work).

    Returns:
        :class:`StageCosts`; ``ms`` None without ``latency`` or when a self-measuring stage did not answer.
    """
    sample = list(examples[:rows])
    if not sample:
        raise ValueError("cost measurement needs at least one example")
    stages = runner.num_stages
    rule = {"warmup": warmup, "repeats": repeats, "max_seconds": max_seconds / (stages + 2)}  # per timed piece
    timing = [sample[i % len(sample)] for i in range(timing_rows)]
    own = _own_measurements(runner, timing, latency, rule)
    totals, reference_flops = _count_flops(runner, inputs(sample), own, reference, batch_size)
    n = len(sample)
    per_stage = [float(own[k].flops or 0.0) if k in own else totals[k] / n for k in range(stages)]
    flops = _running_sum(per_stage) if separate_models else _counted_sum(totals, n, own)
    costs = StageCosts(flops=flops, flops_full=_reference_cost(reference, per_stage, flops, reference_flops, 0.0))
    if not latency:
        return costs
    featurize, alone, reference_ms = _time_stages(runner, timing, inputs, own, reference, device, rule)
    if None in alone:
        logger.warning("a stage did not answer while its latency was measured: these costs carry no milliseconds")
        return costs
    stage_ms = [alone[0] + featurize, *alone[1:]]
    costs.ms = _running_sum(stage_ms)
    costs.ms_full = _reference_cost(reference, alone, costs.ms, reference_ms, featurize)
    where = [device_name(device or "cpu")] if len(own) < stages else []
    costs.batch_size, costs.ms_includes = timing_rows, MS_INCLUDES
    costs.device = ", ".join(dict.fromkeys(where + [m.where for m in own.values()]))
    return costs


def _own_measurements(runner: Any, examples: list[Any], latency: bool,
                      rule: dict[str, Any]) -> dict[int, StageMeasurement]:
    """The stages that measure themselves, with what they report on ``examples``."""
    measure = getattr(runner, "measure", None)
    if measure is None:
        return {}
    found = {k: measure(k, examples, latency=latency, **rule) for k in range(runner.num_stages)}
    return {k: m for k, m in found.items() if m is not None}


def _entry(runner: Any, stage: int, pieces: Sequence[Any], state: Any) -> Callable[[], Any]:
    """How stage ``stage`` gets its input: from the pieces at stage 0, else from the previous stage's state."""
    if stage == 0:
        return partial(runner.begin, 0, pieces)
    follow = getattr(runner, "follow", None)
    if follow is not None:
        return partial(follow, stage - 1, state)

    def hand_on() -> Any:
        handed = runner.unpack(stage - 1, state, range(len(pieces)))
        return runner.begin(stage, [piece for piece, _ in handed])

    return hand_on


def _run(runner: Any, stage: int, enter: Callable[[], Any]) -> Any:
    return runner.run(stage, enter())


def _count_flops(runner: Any, pieces: Sequence[Any], own: dict[int, StageMeasurement], reference: Reference,
                 batch_size: int) -> tuple[list[int], float | None]:
    """FLOPs of each stage alone over all the pieces (0 for a stage that measures itself), and per example of a
    callable reference (None for the others)."""
    meter = FlopMeter()
    totals = [0] * runner.num_stages
    reference_total = 0
    order = sorted(range(len(pieces)), key=lambda i: -runner.length(pieces[i]))
    for start in range(0, len(order), batch_size):
        batch = [pieces[i] for i in order[start:start + batch_size]]
        state = None
        for k in range(runner.num_stages):
            enter = _entry(runner, k, batch, state)
            if k in own:  # measured by the stage itself: its inputs are handed on as they came
                state = enter()
                continue
            (state, _), flops = meter(_run, runner, k, enter)
            totals[k] += flops
        if callable(reference):
            reference_total += meter(reference, batch)[1]
    return totals, reference_total / len(pieces) if callable(reference) else None


def _time_stages(runner: Any, examples: list[Any], inputs: Callable[[Sequence[Any]], Sequence[Any]],
                 own: dict[int, StageMeasurement], reference: Reference, device: Any,
                 rule: dict[str, Any]) -> tuple[float, list[float | None], float | None]:
    """Milliseconds per example of featurisation, of each stage alone and of a callable reference (else None)."""
    size = len(examples)

    def ms(fn: Callable[[], Any]) -> float:
        return statistics.median(time_call(fn, device=device, **rule)) * 1000.0 / size

    featurize = ms(partial(inputs, examples))
    pieces = inputs(examples)
    alone: list[float | None] = []
    state = None
    for k in range(runner.num_stages):
        enter = _entry(runner, k, pieces, state)
        if k in own:
            alone.append(own[k].ms)
            state = enter()
            continue
        alone.append(ms(partial(_run, runner, k, enter)))
        state = _run(runner, k, enter)[0]
    return featurize, alone, ms(partial(reference, pieces)) if callable(reference) else None


def _reference_cost(reference: Reference, alone: Sequence[float], cumulative: Sequence[float],
                    measured: float | None, featurize: float) -> float:
    """The reference's cost from canonical examples: measured (a callable, with ``featurize`` added), stage j alone
    with featurisation (an index), or every stage (the last cumulative cost)."""
    if callable(reference):
        return featurize + measured
    if reference is not None:
        return featurize + alone[reference]
    return cumulative[-1]


def _counted_sum(totals: Sequence[int], n: int, own: dict[int, StageMeasurement]) -> list[float]:
    """Answering at each stage per example: the FLOPs counted for stages 0..k divided once by ``n`` (exact integer
    sums), plus what stages that measure themselves report per example."""
    out, counted, reported = [], 0, 0.0
    for k, total in enumerate(totals):
        counted += total
        reported += float(own[k].flops or 0.0) if k in own else 0.0
        out.append(counted / n + reported if own else counted / n)
    return out


def _running_sum(values: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for value in values:
        total += value
        out.append(total)
    return out
