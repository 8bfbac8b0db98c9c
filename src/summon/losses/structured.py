"""Knowledge-distillation losses for linear-chain CRF taggers (Lin et al. 2022, *Efficient Sub-structured KD*).

The method, as the released code (``Linwenye/Efficient-KD``) implements it: match teacher and student on
every local sub-structure score ``φ_t(y', y) = emission_t(y) + transition(y', y)`` by mean squared error —
no dynamic programming in the KD term. The baselines it is measured against: matching forward-backward
marginals by KL (structural KD, which needs the DP), and training on the teacher's top-k Viterbi paths.

Shapes: emissions [B, T, L], transitions [L, L], mask [B, T] (True = real position).
Departure from the released code, on purpose: padded positions are masked out of the averages by
default; ``mask_padding=False`` reproduces the code, which averages over padding too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from summon.models.crf import nll


def substructure_scores(emissions: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """``φ[b, t, y', y] = emissions[b, t, y] + transitions[y', y]``: [B, T, L, L]."""
    return emissions.unsqueeze(2) + transitions.view(1, 1, *transitions.shape)


def _masked_mean(squared: torch.Tensor, mask: torch.Tensor, mask_padding: bool) -> torch.Tensor:
    if not mask_padding:
        return squared.mean()
    weights = mask.to(squared.dtype).view(*mask.shape, *([1] * (squared.ndim - 2)))
    per_position = squared[0, 0].numel()
    return (squared * weights).sum() / (weights.sum() * per_position).clamp_min(1.0)


def substructure_mse(student_emissions: torch.Tensor, student_transitions: torch.Tensor,
                     teacher_emissions: torch.Tensor, teacher_transitions: torch.Tensor, mask: torch.Tensor, *,
                     with_transitions: bool = True, mask_padding: bool = True) -> torch.Tensor:
    """Mean squared error between teacher and student sub-structure scores (the paper's KD term).

    ``with_transitions=False`` is the released script's default variant: MSE on emissions only.
    """
    if with_transitions:
        diff = (substructure_scores(student_emissions, student_transitions)
                - substructure_scores(teacher_emissions, teacher_transitions))
    else:
        diff = student_emissions - teacher_emissions
    return _masked_mean(diff.pow(2), mask, mask_padding)


def marginal_kl(student_unary: torch.Tensor, teacher_unary: torch.Tensor, mask: torch.Tensor, *,
                mask_padding: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Structural KD baseline: ``KL(μ_teacher ‖ μ_student)`` of unary CRF marginals, averaged over positions.

    The released code calls ``KLDivLoss(log μ_S, μ_T)`` with ``batchmean`` on tensors laid out
    (seq, batch, L), which divides by the sequence length; we average over real positions instead.
    """
    kl = (teacher_unary * ((teacher_unary + eps).log() - (student_unary + eps).log())).sum(dim=-1)
    if not mask_padding:
        return kl.mean()
    weights = mask.to(kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)


def topk_nll(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
             end: torch.Tensor, paths: Sequence[Sequence[Sequence[int]]],
             weights: Sequence[float] = (1.0, 0.1, 0.1)) -> torch.Tensor:
    """Top-k pseudo-label baseline: CRF NLL of the teacher's k best paths, weighted (1.0 for the best, 0.1 for
    the others, as in the released code); no gold term. Returns the mean over sequences."""
    total = emissions.new_zeros(())
    for rank, weight in enumerate(weights):
        tags = emissions.new_zeros(mask.shape, dtype=torch.long)
        valid = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        for b, per_row in enumerate(paths):
            if rank < len(per_row) and per_row[rank]:
                tags[b, : len(per_row[rank])] = torch.tensor(per_row[rank], device=mask.device)
                valid[b] = True
        if bool(valid.any()):
            losses = nll(emissions, tags, mask, transitions, start, end)
            total = total + weight * (losses * valid.to(losses.dtype)).sum() / mask.shape[0]
    return total
