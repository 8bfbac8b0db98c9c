"""A learned deferral gate: a logistic model that predicts whether a stage agrees with the last stage.

Its inputs are features of the stage's calibrated class probabilities (the top three probabilities,
margin, normalised entropy and log of the top probability), so it costs nothing beyond the stage itself.
Its output — the probability of agreeing — is the stage's confidence score: high means "answer here".

The ``learned`` scorer (:mod:`summon.adaptive.learned`) generalises it (earlier stages' scores, the agreement
run, the input length, standardised features, a gold target); the gate stays for predictors calibrated with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


def gate_features(probs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Features [n, 6] of class probabilities [n, K]."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    top = p.sort(dim=-1, descending=True).values
    top3 = F.pad(top[:, :3], (0, max(0, 3 - top.shape[1])))
    margin = top3[:, 0] - top3[:, 1]
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1) / np.log(max(p.shape[1], 2))
    return torch.cat([top3, margin[:, None], entropy[:, None], top[:, :1].clamp_min(1e-12).log()], dim=1)


@dataclass
class Gate:
    """``P(agree) = sigmoid(w · features + b)``."""

    weight: list[float]
    bias: float

    def __call__(self, probs: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = gate_features(probs)
        return torch.sigmoid(x @ torch.tensor(self.weight, dtype=torch.float64) + self.bias)

    @classmethod
    def fit(cls, probs: np.ndarray, agree: np.ndarray, l2: float = 1e-3, max_iter: int = 200) -> Gate:
        """Logistic regression by L-BFGS on rows where the stage's answer is known to agree or not."""
        x = gate_features(probs)
        y = torch.as_tensor(agree, dtype=torch.float64)
        if y.numel() == 0:
            raise ValueError("the gate needs rows to learn from")
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(weight=w.detach().tolist(), bias=float(b.detach()))

    def to_dict(self) -> dict:
        return asdict(self)
