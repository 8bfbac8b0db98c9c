"""Pure loss functions for classification and Hinton-style distillation.

Narrow signatures over tensors (``student_logits, teacher_logits, labels``), as in torchtune's
``kd_losses.py``; methods compose them and trainers never hide them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not ``IGNORE_INDEX``.

    Args:
        logits: [N, C] or [B, L, C].
        labels: [N] or [B, L] class ids; ``-100`` marks positions to skip.
    """
    flat = labels.reshape(-1)
    if not bool((flat != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # nothing to score: zero, not NaN, and still part of the graph
    return F.cross_entropy(_at_least_fp32(logits).reshape(-1, logits.shape[-1]), flat,
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are promoted for a stable softmax; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
          mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Hinton et al. 2015: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over rows.

    The ``T²`` factor keeps gradient magnitudes comparable across temperatures.

    Args:
        student_logits: [..., C].
        teacher_logits: [..., C], same shape.
        temperature: softening temperature T > 0.
        mask: optional bool [...] selecting the rows that count (e.g. real words in a padded batch).
        reduction: ``mean`` over rows, or ``none`` for one value per row ([...], mask ignored).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_s = F.log_softmax(_at_least_fp32(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(_at_least_fp32(teacher_logits) / temperature, dim=-1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    if reduction == "none":
        return per_row * temperature**2
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if mask is not None:
        per_row = per_row[mask]
    if per_row.numel() == 0:
        return student_logits.sum() * 0.0
    return per_row.mean() * temperature**2


def mix(task_loss: torch.Tensor, kd_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 − α)·task + α·kd``."""
    return (1.0 - alpha) * task_loss + alpha * kd_loss
