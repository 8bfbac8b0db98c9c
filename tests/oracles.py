"""Reference implementations the tests compare the package with (kept out of the package: nothing there uses them)."""

from __future__ import annotations

import torch
from torch import nn


def stage_scores(probs: torch.Tensor, policy) -> torch.Tensor:
    """Scores of every stage for every row, the policy called stage by stage: probs [N, S, C] -> [N, S]."""
    carry = None
    scores = []
    for k in range(probs.shape[1]):
        score, carry = policy(probs[:, k], carry)
        scores.append(score)
    return torch.stack(scores, dim=1)


def float_linears(model: nn.Module) -> int:
    """How many ``nn.Linear`` layers (the kind dynamic int8 replaces) ``model`` holds."""
    return sum(type(m) is nn.Linear for m in model.modules())
