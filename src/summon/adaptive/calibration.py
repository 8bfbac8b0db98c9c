"""Temperature scaling per stage (Guo et al. 2017), fitted by NLL on held-out logits.

The Right Tool for the Job calibrates each exit separately with one scalar temperature on the dev set;
so do we. We minimise NLL over log T with L-BFGS (the paper's code runs Adam over a list of learning
rates and keeps the best; L-BFGS reaches the same one-dimensional optimum in a few steps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from summon.evaluate.metrics import expected_calibration_error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising mean NLL of ``softmax(logits / T)``; logits [N, C], labels [N]."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))  # beyond this only separable toy data goes


def fit_temperatures(stage_logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """One temperature per stage; stage_logits [N, S, C]."""
    return [fit_temperature(stage_logits[:, k], labels) for k in range(stage_logits.shape[1])]


def calibration_report(stage_logits: torch.Tensor, labels: torch.Tensor, temperatures: list[float],
                       n_bins: int = 15) -> list[dict[str, float]]:
    """Per stage: temperature, NLL and ECE before and after scaling (on the data given)."""
    rows = []
    gold = labels.numpy()
    for k, t in enumerate(temperatures):
        raw = stage_logits[:, k].double()
        before, after = raw.softmax(-1).numpy(), (raw / t).softmax(-1).numpy()
        rows.append({"stage": k, "temperature": t,
                     "nll_before": _nll(before, gold), "nll_after": _nll(after, gold),
                     "ece_before": expected_calibration_error(before, gold, n_bins),
                     "ece_after": expected_calibration_error(after, gold, n_bins)})
    return rows


def _nll(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)).mean())
