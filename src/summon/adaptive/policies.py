"""Exit and deferral policies as small pure functions.

A policy turns a stage's calibrated class probabilities into a confidence score per row; a row stops at
the first stage whose score reaches the threshold (the last stage always answers). Every policy has the
same signature so the executor, the threshold selector and the evaluation treat them alike::

    score, carry = policy(probs, carry)     # probs [B, C]; carry [B, ...] or None at the first stage

``carry`` holds per-row memory between stages (only patience needs it); the executor keeps it aligned
with the rows still running. Scores grow with confidence, so "stop when score >= threshold" holds for all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Policy = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


def max_prob(probs: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """The Right Tool for the Job: the largest calibrated class probability."""
    return probs.max(dim=-1).values, None


def margin(probs: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """Difference between the two largest probabilities (1.0 when there is a single class)."""
    if probs.shape[-1] < 2:
        return torch.ones(probs.shape[:-1], dtype=probs.dtype, device=probs.device), None
    top = probs.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1], None


def entropy(probs: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """One minus the normalised entropy: 1 for a one-hot distribution, 0 for the uniform one."""
    classes = probs.shape[-1]
    if classes < 2:
        return torch.ones(probs.shape[:-1], dtype=probs.dtype, device=probs.device), None
    h = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
    return 1.0 - h / torch.log(torch.tensor(float(classes), dtype=probs.dtype, device=probs.device)), None


def patience(probs: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PABEE (Zhou et al. 2020): how many consecutive stages, ending here, predicted the same class.

    A threshold of ``t`` stops once ``t`` stages in a row agree. ``carry`` is [B, 2]: the previous
    prediction and the run length so far.
    """
    pred = probs.argmax(dim=-1)
    if carry is None:
        run = torch.ones_like(pred)
    else:
        run = torch.where(pred == carry[:, 0], carry[:, 1] + 1, torch.ones_like(pred))
    return run.to(probs.dtype), torch.stack([pred, run], dim=1)


POLICIES: dict[str, Policy] = {"max_prob": max_prob, "margin": margin, "entropy": entropy, "patience": patience}


# --- taggers: one score per sentence from one score per word ---------------------------------------

TOKEN_POLICIES = ("max_prob", "margin", "entropy")  # per-word scores a tagger's exits may use
TOKEN_REDUCTIONS = ("min", "mean", "path")


def sentence_score(word_scores: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """A sentence's score from its words' scores ``[B, W]`` (``mask`` marks real words): ``min`` (the least
    confident word decides), ``mean``, or ``path`` — the product over words, which for ``max_prob`` is the
    probability of the best tag path of a tagger whose words are tagged independently (a softmax head).
    A sentence without words scores 1 (nothing to get wrong)."""
    if how not in TOKEN_REDUCTIONS:
        raise ValueError(f"unknown token reduction {how!r}; choose from {', '.join(TOKEN_REDUCTIONS)}")
    scores = word_scores.masked_fill(~mask, 1.0)
    if scores.shape[1] == 0:
        return torch.ones(scores.shape[0], dtype=scores.dtype, device=scores.device)
    if how == "min":
        return scores.min(dim=1).values
    if how == "mean":
        words = mask.sum(dim=1)
        return torch.where(words > 0, (scores * mask).sum(dim=1) / words.clamp_min(1), 1.0)
    return scores.clamp_min(1e-300).log().sum(dim=1).exp()
