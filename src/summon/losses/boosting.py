"""Pure functions of progressive ensemble distillation (B-DISTIL, Dennis, Shetty et al. 2023), reconstructed.

Only the paper's abstract, figure captions and dataset table could be read (``shared/PAPERS.md`` §2): the
method section is not available and the authors' repository is empty. What follows is our reconstruction of
the boosting game; every choice the paper's text could overturn is an argument with a name.

* **Weights over (example, class)**, two-sided, from the residual ``r = g − F`` between the teacher's logits
  ``g`` (centred per row by default: softmax logits are shift-invariant) and the ensemble's ``F``::

      w⁺(i, j) ∝ exp(η · r_ij),   w⁻(i, j) ∝ exp(−η · r_ij)

  kept in log space, residuals clipped to ``±clip`` and normalised jointly (the multiplicative-weights
  adversary of the zero-sum game). ``w⁺`` is large where the ensemble is below the teacher, ``w⁻`` where above.
* **Bounded outputs.** A weak learner's raw outputs ``f`` are bounded to ``h ∈ (−1, 1)^C`` by
  ``output='softmax'``, ``h = 2·softmax(f) − 1`` (one class at most near +1, so the sum of members keeps an
  argmax), or ``output='tanh'``, ``h = tanh(f)`` per class. With ``tanh`` the barrier rewards saturation,
  and saturated outputs tie at exactly ±1 in floating point: on AG News a bag-of-n-grams member then
  answered the first of several tied classes, far below what its logits' argmax gave.
* **Edge** of a weak learner with bounded output ``h``::

      edge(h) = Σ_ij (w⁺ − w⁻)_ij · h_ij / Σ_ij (w⁺ + w⁻)_ij   ∈ (−1, 1)

  and the weak-learning condition is ``edge ≥ γ``.
* **Log-barrier relaxation** of that condition, as a training loss: per row (``barrier='row'``)
  ``−log(e_i − γ + s)`` averaged with the rows' weights, where ``e_i`` is row ``i``'s own edge; or on the
  batch's edge (``barrier='total'``) ``−log(edge − γ + s)``. A barrier is undefined where the constraint is
  violated, and an untrained learner starts with edge ≈ 0 < γ, so the barrier is shifted by ``s > 1 + γ``
  (edges are above −1, so it is defined everywhere); its gradient grows as an edge falls towards ``γ − s``.
* **Step**: the member's output is ``α · h`` with the real-AdaBoost step ``α = ln((1 + edge)/(1 − edge)) / 2η``
  (Schapire & Singer 1999), the edge measured on held-out rows.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

OUTPUTS = ("softmax", "tanh")


def bounded(logits: torch.Tensor, output: str = "softmax") -> torch.Tensor:
    """A learner's raw outputs ``[..., C]`` bounded to (−1, 1): ``2·softmax − 1`` or ``tanh`` (module docstring)."""
    if output == "softmax":
        return 2.0 * torch.softmax(logits, dim=-1) - 1.0
    if output == "tanh":
        return torch.tanh(logits)
    raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def centre(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over classes (``[..., C]``): the softmax is unchanged."""
    return logits - logits.mean(dim=-1, keepdim=True)


def residual_log_weights(teacher: torch.Tensor, ensemble: torch.Tensor, *, eta: float = 1.0, clip: float = 10.0,
                         centred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Log of ``w⁺`` and ``w⁻`` over (row, class), normalised so that ``Σ w⁺ + Σ w⁻ = 1``.

    Args:
        teacher: teacher logits ``[N, C]``.
        ensemble: the current ensemble's logits ``[N, C]`` (zeros before the first member).
        eta: the multiplicative-weights rate η > 0.
        clip: residuals are clipped to ``[−clip, clip]`` before exponentiation (no overflow).
        centred: centre the teacher's logits per row first.

    Returns:
        ``(log_w_plus, log_w_minus)``, each ``[N, C]``.
    """
    if eta <= 0 or clip <= 0:
        raise ValueError(f"eta and clip must be positive, got eta={eta}, clip={clip}")
    if teacher.shape != ensemble.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and ensemble {tuple(ensemble.shape)} logits differ in shape")
    target = centre(teacher) if centred else teacher
    residual = (target.double() - ensemble.double()).clamp(-clip, clip)
    plus, minus = eta * residual, -eta * residual
    total = torch.logsumexp(torch.stack([plus, minus]).reshape(-1), dim=0)
    return plus - total, minus - total


def row_edges(outputs: torch.Tensor, log_w_plus: torch.Tensor, log_w_minus: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's edge ``e_i`` and the log of its total weight ``log Σ_j (w⁺ + w⁻)_ij``.

    Args:
        outputs: bounded learner outputs ``h`` ``[N, C]`` in (−1, 1).
        log_w_plus, log_w_minus: ``[N, C]`` from :func:`residual_log_weights`.
    """
    both = torch.stack([log_w_plus, log_w_minus])  # [2, N, C]
    log_row = torch.logsumexp(both, dim=0).logsumexp(dim=-1)  # [N]
    share_plus = torch.exp(log_w_plus - log_row[:, None])  # w⁺ / Σ_j (w⁺ + w⁻), stable
    share_minus = torch.exp(log_w_minus - log_row[:, None])
    edges = ((share_plus - share_minus).to(outputs.dtype) * outputs).sum(dim=-1)
    return edges, log_row


def edge(outputs: torch.Tensor, log_w_plus: torch.Tensor, log_w_minus: torch.Tensor) -> torch.Tensor:
    """``Σ (w⁺ − w⁻) h / Σ (w⁺ + w⁻)`` over all rows and classes: the weak learner's edge, in (−1, 1)."""
    edges, log_row = row_edges(outputs, log_w_plus, log_w_minus)
    return (torch.softmax(log_row, dim=0).to(edges.dtype) * edges).sum()


def barrier_loss(logits: torch.Tensor, log_w_plus: torch.Tensor, log_w_minus: torch.Tensor, *, gamma: float = 0.1,
                 shift: float = 1.5, barrier: Literal["row", "total"] = "row", output: str = "softmax"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted log-barrier relaxation of ``edge(bounded(logits)) ≥ γ`` (see the module docstring).

    Rows whose weights are all ``-inf`` in log space (held-out rows) do not count.

    Args:
        logits: the learner's raw outputs ``f`` ``[B, C]``; its bounded output is ``bounded(f, output)``.
        log_w_plus, log_w_minus: ``[B, C]`` log weights of the batch's rows.
        gamma: the edge the weak-learning condition asks for.
        shift: ``s`` in ``−log(e − γ + s)``; must exceed ``1 + γ``.
        barrier: ``row`` (one barrier per row, weighted) or ``total`` (one on the batch's edge).
        output: how raw outputs are bounded, ``softmax`` or ``tanh`` (:func:`bounded`).

    Returns:
        ``(loss, edge)``: the scalar loss and the batch's edge (for logging).
    """
    if shift <= 1.0 + gamma:
        raise ValueError(f"barrier shift {shift} must exceed 1 + gamma = {1.0 + gamma}: the barrier would be "
                         "undefined for some edges")
    counted = torch.isfinite(torch.logaddexp(log_w_plus, log_w_minus)).any(dim=-1)  # held-out rows are all −inf
    if not bool(counted.any()):
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    # Dropped before any arithmetic: a −inf row would give NaN shares, and NaN·0 gradients.
    edges, log_row = row_edges(bounded(logits[counted].float(), output), log_w_plus[counted], log_w_minus[counted])
    row_weight = torch.softmax(log_row, dim=0).to(edges.dtype)
    total_edge = (row_weight * edges).sum()
    if barrier == "row":
        loss = -(row_weight * torch.log(edges - gamma + shift)).sum()
    elif barrier == "total":
        loss = -torch.log(total_edge - gamma + shift)
    else:
        raise ValueError(f"barrier must be 'row' or 'total', got {barrier!r}")
    return loss, total_edge.detach()


def adaboost_step(edge_value: float, eta: float = 1.0) -> float:
    """The real-AdaBoost step ``ln((1 + e)/(1 − e)) / 2η`` for an edge ``e`` in (−1, 1) (clipped at ±0.999)."""
    e = min(max(float(edge_value), -0.999), 0.999)
    return math.log((1.0 + e) / (1.0 - e)) / (2.0 * eta)
