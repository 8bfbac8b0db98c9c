"""Losses for students that only need to be right on easy inputs (reconstructions of *Summon the Titans*).

Only the paper's abstract could be read (see shared/PAPERS.md, section 1): the student is distilled to be
correct on a subset of easy examples and hard ones fall back to the teacher. The two objectives here are
our reconstructions, following the same group's later work on deferral; the benchmark decides between them.

``easy`` is a per-row weight in [0, 1] (1 = easy), computed from teacher and student signals with a target
deferral budget by :mod:`summon.methods.easy_kd`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from summon.losses.kd import kd_kl


def uniform_kl(student_logits: torch.Tensor) -> torch.Tensor:
    """Per row ``KL(u ‖ softmax(s))`` with ``u`` uniform over the K classes: [B, K] -> [B]."""
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    return -math.log(student_logits.shape[-1]) - log_p.mean(dim=-1)


def selective_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, easy: torch.Tensor,
                 temperature: float = 2.0, hard_weight: float = 1.0) -> torch.Tensor:
    """Variant A: ``mean[ e·T²·KL(p_t^T ‖ p_s^T) + λ·(1 − e)·KL(u ‖ p_s) ]``.

    Easy rows imitate the teacher; hard rows are pushed towards the uniform distribution, so a
    confidence rule defers them. student/teacher logits [B, K], easy [B].
    """
    kd = kd_kl(student_logits, teacher_logits, temperature, reduction="none")
    return (easy * kd + hard_weight * (1.0 - easy) * uniform_kl(student_logits)).mean()


def defer_surrogate(student_logits: torch.Tensor, teacher_logits: torch.Tensor, easy: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Variant B, learning to defer with the teacher as the expert: ``mean[ e·CE(p_t, p_s[:K]) − (1 − e)·log p_s[⊥] ]``.

    The student has K + 1 outputs, the last one "defer" (⊥); probabilities are over all K + 1, so mass
    on ⊥ is taken from every class. student [B, K + 1], teacher [B, K], easy [B].
    """
    k = teacher_logits.shape[-1]
    if student_logits.shape[-1] != k + 1:
        raise ValueError(f"the defer loss needs K + 1 = {k + 1} student outputs, got {student_logits.shape[-1]}; "
                         "build the student with model.defer_output: true")
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    easy_part = -(p_t * log_p[:, :k]).sum(dim=-1)
    return (easy * easy_part - (1.0 - easy) * log_p[:, k]).mean()
