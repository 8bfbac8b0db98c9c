"""Joint training of classifier exits (Schwartz et al. 2020, *The Right Tool for the Job*).

The paper's loss is the unweighted sum of the exits' cross-entropies, with every weight trained jointly::

    L = sum_k CE(y, softmax(logits_k))

Options beyond the paper, each off by default:

* ``distill_last``: earlier exits also learn from the last exit (self-distillation, as in e.g. Zhu et al.
  2021): exit k < S minimises ``(1 − α)·CE + α·T²·KL(last ‖ k)`` with the last exit's logits detached.
* ``exit_weights: depth``: exit k is weighted by its depth k/S (DeeBERT/PABEE-style weighting).

Taggers train the same way, one token head per exit and each exit's loss over the scored sub-tokens
(``recipes/conll2003_ner_early_exit.yaml``; :mod:`summon.adaptive.token_exit` runs them).

DeeBERT's two-stage schedule (Xin et al. 2020) is two runs of the ordinary loop: fine-tune the backbone
and final head (``finetune``), then train the other exits on a frozen copy (``model: {kind: copy,
exits: all, freeze: [backbone, heads.<last>]}`` with this method). ``recipes/sst2_early_exit_two_stage.yaml``
is the second stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from summon.data.features import IGNORE_INDEX
from summon.losses import cross_entropy, kd_kl, mix


@dataclass
class EarlyExitConfig:
    exit_weights: Literal["uniform", "depth"] = "uniform"
    distill_last: float = 0.0  # α: weight of KD from the last exit into each earlier exit
    temperature: float = 2.0  # T of that KD

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill_last <= 1.0:
            raise ValueError(f"distill_last must be in [0, 1], got {self.distill_last}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def exit_losses(logits: torch.Tensor, labels: torch.Tensor, cfg: EarlyExitConfig) -> list[torch.Tensor]:
    """One loss per exit; logits [B, S, C] with labels [B], or a tagger's [B, S, L, C] with sub-token labels
    [B, L] (``IGNORE_INDEX`` where not scored; self-distillation then also reads the scored positions only)."""
    stages = logits.shape[1]
    scored = labels != IGNORE_INDEX
    last = logits[:, -1].detach()
    losses = []
    for k in range(stages):
        ce = cross_entropy(logits[:, k], labels)
        if cfg.distill_last > 0 and k < stages - 1:
            ce = mix(ce, kd_kl(logits[:, k][scored], last[scored], cfg.temperature), cfg.distill_last)
        losses.append(ce)
    return losses


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: EarlyExitConfig) -> dict[str, Any]:
    logits = model(batch)
    tagging = "labels" in batch
    if logits.ndim != (4 if tagging else 3):
        raise ValueError("method 'early_exit' needs a model with exits: set model.exits (e.g. 'all')")
    losses = exit_losses(logits, batch["labels"] if tagging else batch["label"], cfg)
    stages = len(losses)
    weights = [1.0] * stages if cfg.exit_weights == "uniform" else [(k + 1) / stages for k in range(stages)]
    loss = sum(w * part for w, part in zip(weights, losses, strict=True))
    return {"loss": loss, "output": logits, "first_exit_loss": losses[0].detach(), "last_exit_loss": losses[-1].detach()}
