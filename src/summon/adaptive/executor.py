"""Batched adaptive execution: stages run on a shrinking batch, so skipped work is saved time.

Any model with the staged interface works (early exits now; cascades and progressive ensembles reuse it):

    state = model.begin(batch)                 # e.g. embeddings
    state = model.run_to(k, state)             # the compute of stage k
    logits = model.exit_logits(k, state)       # [rows, C] read-out of stage k
    state = model.keep(state, rows)            # drop finished rows (and trim padding)

After each stage, rows whose calibrated policy score reaches the threshold take that stage's answer and
leave the batch; the rest continue, with padding trimmed to their longest row. Each row's answer is
the same as running it alone (up to float rounding), which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
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
