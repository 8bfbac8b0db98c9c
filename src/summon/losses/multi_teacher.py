"""Pure losses for distilling several teachers with per-example teacher weights.

Pieces of the reconstructed RL-KD (Yuan et al. 2021, *Reinforced Multi-Teacher Selection for Knowledge
Distillation*; only third-party summaries of the method could be read, see ``shared/PAPERS.md`` §4):

* :func:`weighted_kd`: ``Σ_k w_jk · T² · KL(p_{T_k}^T ‖ p_S^T)`` per row, teacher weights ``w`` [B, K];
* :func:`confidence_weights`: ``softmax_k(−CE_k / τ)``, a teacher trusted where it is right and sure;
* :func:`selection_weights`: weights from the teachers a policy selected (or its probabilities);
* :func:`bernoulli_log_prob`, :func:`reinforce_loss`: REINFORCE for one Bernoulli selection per teacher;
* :func:`student_rewards`: the reward variants, computed from the student's logits on a batch.

Shapes: student logits [B, C], teacher logits [B, K, C] (K teachers), labels [B] class ids.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from summon.losses.kd import _at_least_fp32, kd_kl

RewardKind = Literal["ce", "loss", "accuracy"]


def teacher_cross_entropy(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each teacher's cross-entropy on the gold label: [B, K, C], [B] -> [B, K]."""
    log_p = F.log_softmax(_at_least_fp32(teacher_logits), dim=-1)
    index = labels.view(-1, 1, 1).expand(-1, teacher_logits.shape[1], 1)
    return -log_p.gather(-1, index).squeeze(-1)


def per_teacher_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t_k/T) ‖ softmax(s/T))`` for every row and teacher: [B, C], [B, K, C] -> [B, K]."""
    if student_logits.dim() != 2 or teacher_logits.dim() != 3:
        raise ValueError(f"expected student logits [B, C] and teacher logits [B, K, C], got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    student = student_logits.unsqueeze(1).expand(-1, teacher_logits.shape[1], -1)
    return kd_kl(student, teacher_logits, temperature, reduction="none")


def weighted_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """``Σ_k w_jk · T² · KL(softmax(t_jk/T) ‖ softmax(s_j/T))``, averaged over rows (or per row with ``none``).

    Args:
        student_logits: [B, C].
        teacher_logits: [B, K, C].
        weights: [B, K] per-example teacher weights (not renormalised here; rows of zeros give no KD term).
        temperature: softening temperature T > 0.
        reduction: ``mean`` over rows, or ``none`` for [B].
    """
    if weights.shape != teacher_logits.shape[:2]:
        raise ValueError(f"weights {tuple(weights.shape)} must be [B, K] = {tuple(teacher_logits.shape[:2])}")
    rows = (weights.to(torch.float32) * per_teacher_kd(student_logits, teacher_logits, temperature)).sum(dim=-1)
    if reduction == "none":
        return rows
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return rows.mean()


def confidence_weights(teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``softmax_k(−CE(y_j, p_{T_k}(x_j)) / τ)``: [B, K, C], [B] -> [B, K] (rows sum to 1).

    A small ``τ`` trusts the best teacher of each example almost alone; a large one approaches the uniform average.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return F.softmax(-teacher_cross_entropy(teacher_logits, labels) / tau, dim=-1)


def selection_weights(selected: torch.Tensor, *, normalise: bool = True,
                      empty: Literal["gold_only", "uniform"] = "gold_only") -> torch.Tensor:
    """Teacher weights [B, K] from 0/1 selections (or selection probabilities) [B, K].

    ``normalise`` divides each row by its sum (the selected teachers share the weight equally); otherwise each
    selected teacher counts fully. A row with nothing selected gets zero weights (``gold_only``: the example
    learns from its gold label alone) or ``1/K`` each (``uniform``).
    """
    if empty not in ("gold_only", "uniform"):
        raise ValueError(f"empty must be 'gold_only' or 'uniform', got {empty!r}")
    selected = selected.to(torch.float32)
    total = selected.sum(dim=-1, keepdim=True)
    weights = selected / total.clamp_min(1e-12) if normalise else selected
    none = total <= 0
    fallback = 1.0 / selected.shape[-1] if empty == "uniform" else 0.0
    return torch.where(none, torch.full_like(weights, fallback), weights)


def bernoulli_log_prob(policy_logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log π(a | s) = Σ_k [a_k·log σ(z_k) + (1 − a_k)·log(1 − σ(z_k))]``: logits z and actions [..., K] -> [...]."""
    logits = _at_least_fp32(policy_logits)
    return -F.binary_cross_entropy_with_logits(logits, actions.to(logits.dtype), reduction="none").sum(dim=-1)


def reinforce_loss(policy_logits: torch.Tensor, actions: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """REINFORCE: ``mean_j[ −(R_j − b) · log π(a_j | s_j) ]``; its gradient raises the probability of actions
    with a positive advantage.

    Args:
        policy_logits: [B, K] the policy's selection logits for the states the actions were taken in.
        actions: [B, K] the 0/1 selections taken.
        advantage: [B] (per example) or [] (per batch): reward minus baseline, treated as a constant.
    """
    return -(advantage.detach().to(torch.float32) * bernoulli_log_prob(policy_logits, actions)).mean()


def student_rewards(kind: RewardKind, student_logits: torch.Tensor, labels: torch.Tensor,
                    teacher_logits: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                    temperature: float = 1.0, alpha: float = 0.5) -> torch.Tensor:
    """Per-row rewards [B] from the student's logits [B, C] on a batch.

    ``ce``: ``−CE(y, p_S)``; ``loss``: the negative student loss ``−[(1 − α)·CE + α·Σ_k w_k·T²·KL_k]`` with the
    teacher logits [B, K, C] and weights [B, K] the student was trained with; ``accuracy``: 1 where the
    student's top class is the gold label, else 0.
    """
    if kind == "accuracy":
        return (student_logits.argmax(dim=-1) == labels).to(torch.float32)
    ce = F.cross_entropy(_at_least_fp32(student_logits), labels, reduction="none")
    if kind == "ce":
        return -ce
    if kind != "loss":
        raise ValueError(f"reward kind must be 'ce', 'loss' or 'accuracy', got {kind!r}")
    if teacher_logits is None or weights is None:
        raise ValueError("the 'loss' reward needs the teacher logits and the weights the student trained with")
    kd = weighted_kd(student_logits, teacher_logits, weights, temperature, reduction="none")
    return -((1.0 - alpha) * ce + alpha * kd)
