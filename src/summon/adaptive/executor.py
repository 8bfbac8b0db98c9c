"""Batched adaptive execution: stages run on a shrinking batch, so skipped work is saved time.

Any model with the staged interface works (early exits now; cascades and progressive ensembles reuse it):

    state = model.begin(batch)                 # e.g. embeddings
    state = model.run_to(k, state)             # the compute of stage k
    logits = model.exit_logits(k, state)       # [rows, C] read-out of stage k
    state = model.keep(state, rows)            # drop finished rows (and trim padding)
    pieces = model.unpack(state, rows)         # (optional) per-row, unpadded states ...
    state = model.pack(pieces)                 # ... and a padded batch of them again (regrouping)

After each stage, rows whose calibrated policy score reaches the threshold take that stage's answer and
leave the batch; the rest continue, with padding trimmed to their longest row. Each row's answer is
the same as running it alone (up to float rounding), which the tests check.

:func:`run_regrouped` goes further for models with ``unpack``/``pack``: it runs stage-major over many
batches, gathering the rows that go on from all of them into full, length-sorted batches for the next
stage. Per-batch shrinking leaves later stages a few rows each, where CPU matrix products are slow per
row; regrouping keeps every stage's batches full, so measured time follows the counted FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from summon.adaptive.policies import Policy


@dataclass
class BatchResult:
    """Per row of the input batch: calibrated logits of the answering stage, that stage, and its score."""

    logits: torch.Tensor  # [B, C], divided by the answering stage's temperature
    stage: torch.Tensor  # [B]
    score: torch.Tensor  # [B]


def thresholds_per_stage(threshold: float | Sequence[float], stages: int) -> list[float]:
    """One threshold for all stages (the paper's single knob) or one per stage; the last never matters."""
    if isinstance(threshold, int | float):
        return [float(threshold)] * stages
    values = [float(t) for t in threshold]
    if len(values) != stages:
        raise ValueError(f"{len(values)} thresholds for {stages} stages")
    return values


@torch.inference_mode()
def run_batch(model: Any, batch: dict[str, torch.Tensor], policy: Policy, temperatures: Sequence[float],
              threshold: float | Sequence[float]) -> BatchResult:
    """Run one batch adaptively (see the module docstring)."""
    stages = model.num_stages
    limits = thresholds_per_stage(threshold, stages)
    size = batch["input_ids"].shape[0]
    rows = torch.arange(size, device=batch["input_ids"].device)
    state, carry = model.begin(batch), None
    out_logits: torch.Tensor | None = None
    out_stage = torch.full((size,), stages - 1, dtype=torch.long, device=rows.device)
    out_score = torch.zeros(size, dtype=torch.float64, device=rows.device)
    for k in range(stages):
        state = model.run_to(k, state)
        logits = model.exit_logits(k, state).double() / temperatures[k]  # float64, as in calibration
        score, carry = policy(logits.softmax(dim=-1), carry)
        done = torch.ones_like(score, dtype=torch.bool) if k == stages - 1 else score >= limits[k]
        if out_logits is None:
            out_logits = torch.zeros(size, logits.shape[-1], device=logits.device)
        out_logits[rows[done]] = logits[done].float()
        out_stage[rows[done]] = k
        out_score[rows[done]] = score[done].double()
        if bool(done.all()):
            break
        if not bool(done.any()):
            continue  # nobody left: no need to rebuild the batch
        going = ~done
        rows = rows[going]
        carry = carry[going] if carry is not None else None
        state = model.keep(state, going)
    return BatchResult(logits=out_logits, stage=out_stage, score=out_score)


@dataclass
class _Pending:
    """A row between stages in :func:`run_regrouped`: its id, unpadded state piece, length and policy carry."""

    row: int
    piece: Any
    length: int
    carry: torch.Tensor | None


@torch.inference_mode()
def run_regrouped(model: Any, batches: Iterable[tuple[Sequence[int], dict[str, torch.Tensor]]], policy: Policy,
                  temperatures: Sequence[float], threshold: float | Sequence[float], batch_size: int,
                  ) -> dict[int, tuple[torch.Tensor, int, float]]:
    """Stage-major adaptive execution with regrouping (see the module docstring).

    Args:
        batches: ``(row ids, batch)`` pairs; every batch runs the first stage.
        batch_size: rows per batch for the later stages, refilled from the rows still going.

    Returns:
        ``{row id: (calibrated logits [C], answering stage, score)}`` — each row's answer equals running
        it alone (up to float rounding).
    """
    stages = model.num_stages
    limits = thresholds_per_stage(threshold, stages)
    answers: dict[int, tuple[torch.Tensor, int, float]] = {}
    pending: list[_Pending] = []
    for ids, batch in batches:
        state = model.run_to(0, model.begin(batch))
        pending += _decide(model, 0, state, list(ids), None, policy, temperatures, limits, answers)
    for k in range(1, stages):
        pending.sort(key=lambda p: -p.length)
        going: list[_Pending] = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            state = model.run_to(k, model.pack([p.piece for p in chunk]))
            carry = None if chunk[0].carry is None else torch.stack([p.carry for p in chunk])
            going += _decide(model, k, state, [p.row for p in chunk], carry, policy, temperatures, limits, answers)
        pending = going
    return answers


def _decide(model: Any, k: int, state: Any, rows: list[int], carry: torch.Tensor | None, policy: Policy,
            temperatures: Sequence[float], limits: Sequence[float],
            answers: dict[int, tuple[torch.Tensor, int, float]]) -> list[_Pending]:
    """Record the rows that stop at stage ``k``; return the others as pending pieces."""
    logits = model.exit_logits(k, state).double() / temperatures[k]
    score, carry = policy(logits.softmax(dim=-1), carry)
    last = k == model.num_stages - 1
    done = (score >= limits[k]).tolist() if not last else [True] * len(rows)
    going = [i for i, stop in enumerate(done) if not stop]
    for i, stop in enumerate(done):
        if stop:
            answers[rows[i]] = (logits[i].float(), k, float(score[i]))
    if not going:
        return []
    pieces = model.unpack(state, torch.tensor(going, device=logits.device))
    return [_Pending(rows[i], piece, length, None if carry is None else carry[i])
            for i, (piece, length) in zip(going, pieces, strict=True)]


@torch.inference_mode()
def run_full_batch(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain full model: all the compute, only the last read-out (no intermediate exits). [B, C]."""
    last = model.num_stages - 1
    return model.exit_logits(last, model.run_to(last, model.begin(batch)))


def all_stage_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Uncalibrated logits of every stage for every row at full depth, [B, S, C] (training, calibration)."""
    state = model.begin(batch)
    out = []
    for k in range(model.num_stages):
        state = model.run_to(k, state)
        out.append(model.exit_logits(k, state))
    return torch.stack(out, dim=1)
