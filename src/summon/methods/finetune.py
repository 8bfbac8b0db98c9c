"""Fine-tuning on gold labels: cross-entropy, optionally label-smoothed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from summon.losses import cross_entropy


@dataclass
class FinetuneConfig:
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gold ids: ``label`` [B] for sequence tasks, sub-token ``labels`` [B, L] for tagging."""
    return batch["label"] if "label" in batch else batch["labels"]


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: FinetuneConfig) -> dict[str, Any]:
    logits = model(batch)
    loss = cross_entropy(logits, targets(batch), label_smoothing=cfg.label_smoothing)
    return {"loss": loss, "output": logits, "task_loss": loss.detach()}
