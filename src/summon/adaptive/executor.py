"""The one batched executor of every staged predictor: stage-major, with the rows that go on regrouped.

A staged predictor hands the executor a :class:`StageRunner`, which knows how to run one stage on a batch
and what each row hands on to the next stage:

    state = runner.begin(k, pieces)            # a batch for stage k from per-row pieces (inputs at k = 0)
    state, raw = runner.run(k, state)          # the compute and read-out of stage k: raw logits [B, W]
    pieces = runner.unpack(k, state, rows)     # what the given rows hand on: [(piece, length), ...]

* early exit: the pieces are featurized inputs, then each row's unpadded hidden states;
* cascade: the pieces are the canonical examples themselves (each stage tokenises on its own);
* progressive ensemble: activations and the running logit sum.

Execution is stage-major: the first stage runs on every row in length-sorted batches; after each stage,
rows whose calibrated score (:class:`~summon.adaptive.scoring.Readout`) reaches their threshold take that
stage's answer, and the rest are gathered from all batches into full, length-sorted batches for the next
stage. Per-batch shrinking would leave later stages a few rows each, where matrix products are slow per
row; regrouping keeps every stage's batches full, so measured time follows the counted FLOPs.

The policy's per-row carry (patience's run, the ``learned`` scorer's previous-stage features and input length,
read from ``runner.length`` at stage 0) follows each row through the regrouping.

What a row's answer is belongs to the read-out: ``[K]`` class logits for sentence kinds (:class:`~summon.adaptive.
scoring.Readout`), one ``[words, K]`` array per row for taggers (:class:`~summon.adaptive.scoring.TokenReadout`),
kept by its ``blank``/``store``/``rows_of``/``stack``.

Thresholds may differ per row (requests with different knobs share a forward pass). A stage that cannot
answer (:class:`~summon.adaptive.cascade_stages.StageUnavailable`, e.g. a remote teacher that timed out) leaves its
rows with the answer of the last stage that did answer, marked ``fallback``. Each row's answer equals
running it alone (up to float rounding), which the contract tests check for every staged kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from summon.adaptive.cascade_stages import StageUnavailable
from summon.adaptive.scoring import Readout

logger = logging.getLogger(__name__)


class StageRunner(Protocol):
    """How one kind of staged predictor runs a stage (see the module docstring)."""

    num_stages: int

    def length(self, item: Any) -> int: ...

    def begin(self, stage: int, pieces: Sequence[Any]) -> Any: ...

    def run(self, stage: int, state: Any) -> tuple[Any, torch.Tensor]: ...

    def unpack(self, stage: int, state: Any, rows: Sequence[int]) -> list[tuple[Any, int]]: ...

    # optional: ``follow(stage, state) -> state`` turns stage ``stage``'s state into stage ``stage + 1``'s input
    # for a batch that goes on whole (runners without it always unpack and regroup)


@dataclass
class Execution:
    """Per input row: calibrated logits of the answering stage, that stage, its score, and fallbacks."""

    logits: np.ndarray  # [N, K] float32 divided by the answering stage's temperature (taggers: [N] of [words, K])
    stage: np.ndarray  # [N] int64
    score: np.ndarray  # [N] float64
    fallback: np.ndarray  # [N] bool: a later stage was asked and could not answer

    @classmethod
    def concat(cls, parts: Sequence[Execution]) -> Execution:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logits", "stage", "score", "fallback")))


def row_thresholds(threshold: float | Sequence[float] | np.ndarray, rows: int, stages: int) -> np.ndarray:
    """Thresholds as ``[rows, stages]``: one for all, one per row ``[rows]``, or one per row and stage."""
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim == 0:
        return np.full((rows, stages), float(values))
    if values.ndim == 1 and len(values) == rows:
        return np.repeat(values[:, None], stages, axis=1)
    if values.shape == (rows, stages):
        return values
    raise ValueError(f"thresholds of shape {values.shape} for {rows} rows and {stages} stages: give one number, "
                     f"one per row [{rows}], or one per row and stage [{rows}, {stages}]")


@dataclass
class _Pending:
    """A row between stages: its id, what it hands on, its length and the policy's per-row carry."""

    row: int
    piece: Any
    length: int
    carry: torch.Tensor | None


@dataclass
class _Whole:
    """A batch all of whose rows go on: kept as the runner's state (no unpacking, no regrouping copies)."""

    rows: np.ndarray
    state: Any
    carry: torch.Tensor | None


def _chunks(items: list[_Pending], size: int) -> list[list[_Pending]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


Wanted = Callable[[np.ndarray], np.ndarray]  # row ids -> bool mask: whose answers are still wanted


def _wanted_rows(rows: np.ndarray, wanted: Wanted | None) -> np.ndarray:
    return rows if wanted is None or not len(rows) else rows[np.asarray(wanted(rows), dtype=bool)]


@torch.inference_mode()
def execute(runner: StageRunner, items: Sequence[Any], readout: Readout,
            threshold: float | Sequence[float] | np.ndarray, *, batch_size: int = 64,
            collect: list[list[np.ndarray | None]] | None = None, wanted: Wanted | None = None) -> Execution:
    """Run ``items`` (stage-0 pieces) adaptively; see the module docstring.

    A batch none of whose rows stops goes on as it is when the runner can hand a stage's state to the next
    (``runner.follow``: early exit, taggers, cascades); only batches that lost rows are unpacked and regrouped.

    Args:
        threshold: one number, one per row, or ``[rows, stages]``.
        batch_size: rows per batch at every stage.
        collect: if given, ``collect[k][row]`` receives each row's raw logits at stage ``k`` (calibration
            passes run with an infinite threshold, so every row reaches every stage).
        wanted: if given, asked before every batch which of its rows are still wanted (a server's client may
            have left); the others are not run from there on: they keep the answer of their last stage run, or
            none (``readout.blank``) when they had not started, so their caller must drop them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n, stages = len(items), runner.num_stages
    limits = row_thresholds(threshold, n, stages)
    out = Execution(logits=readout.blank(n), stage=np.zeros(n, np.int64), score=np.zeros(n, np.float64),
                    fallback=np.zeros(n, bool))
    pending: list[_Pending | _Whole] = [_Pending(i, item, runner.length(item), None) for i, item in enumerate(items)]
    for k in range(stages):
        loose = sorted((p for p in pending if isinstance(p, _Pending)), key=lambda p: -p.length)
        going: list[_Pending | _Whole] = []
        for whole in (p for p in pending if isinstance(p, _Whole)):
            if not len(_wanted_rows(whole.rows, wanted)):  # a batch with some rows wanted runs whole
                continue
            going += _run_batch(runner, readout, k, whole.rows, partial(runner.follow, k - 1, whole.state),
                                whole.carry, None, limits, out, collect)
        for chunk in _chunks(loose, batch_size):
            if wanted is not None:
                keep = set(_wanted_rows(np.array([p.row for p in chunk]), wanted).tolist())
                chunk = [p for p in chunk if p.row in keep]
                if not chunk:
                    continue
            rows = np.array([p.row for p in chunk])
            carry = None if chunk[0].carry is None else torch.stack([p.carry for p in chunk])
            lengths = np.array([p.length for p in chunk]) if k == 0 and readout.needs_lengths else None
            going += _run_batch(runner, readout, k, rows, partial(runner.begin, k, [p.piece for p in chunk]),
                                carry, lengths, limits, out, collect)
        pending = going
        if not pending:
            break
    return out


def _run_batch(runner: StageRunner, readout: Readout, k: int, rows: np.ndarray, start: Callable[[], Any],
               carry: torch.Tensor | None, lengths: np.ndarray | None, limits: np.ndarray, out: Execution,
               collect: list[list[np.ndarray | None]] | None) -> list[_Pending | _Whole]:
    """Run stage ``k`` on one batch (``start()`` gives the runner's state for it); record every row's answer
    (final or provisional); return what goes on: the whole batch, or its remaining rows."""
    try:
        state, raw = runner.run(k, start())
    except StageUnavailable as err:
        if k == 0:
            raise
        logger.warning("stage %d unavailable (%s): %d rows keep the answer of stage %d", k, err, len(rows), k - 1)
        out.fallback[rows] = True
        return []
    if collect is not None:
        for row, raw_row in zip(rows, readout.rows_of(raw), strict=True):
            collect[k][row] = raw_row
    logits, score, carry = readout(k, raw, carry, lengths)
    readout.store(out.logits, rows, logits)
    out.stage[rows] = k
    scores = score.cpu().numpy()
    out.score[rows] = scores
    if k == runner.num_stages - 1:
        return []
    going = np.flatnonzero(scores < limits[rows, k]).tolist()
    if not going:
        return []
    if len(going) == len(rows) and getattr(runner, "follow", None) is not None:
        return [_Whole(rows, state, carry)]
    pieces = runner.unpack(k, state, going)
    return [_Pending(int(rows[i]), piece, length, None if carry is None else carry[i])
            for i, (piece, length) in zip(going, pieces, strict=True)]


def collect_stage_logits(runner: StageRunner, items: Sequence[Any], readout: Readout, *,
                         batch_size: int = 64) -> list[np.ndarray]:
    """Raw logits of every stage on every row, ``[N, W]`` per stage (calibration, evaluation, oracles)."""
    collect: list[list[np.ndarray | None]] = [[None] * len(items) for _ in range(runner.num_stages)]
    result = execute(runner, items, readout, np.inf, batch_size=batch_size, collect=collect)
    if result.fallback.any():
        raise ValueError(f"{int(result.fallback.sum())} rows could not reach every stage (a stage was unavailable: "
                         "see the warning above); calibration and evaluation need every stage to answer. Start or "
                         "reach the missing stage and run again")
    return [readout.stack(rows) for rows in collect]
