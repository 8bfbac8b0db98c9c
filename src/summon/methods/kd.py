"""Knowledge distillation (Hinton, Vinyals & Dean 2015, *Distilling the Knowledge in a Neural Network*).

``loss = (1 − α)·CE(student, gold) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

Teacher logits come precomputed in the batch (``teacher_logits``, from the on-disk teacher cache), so the
teacher runs once for every student trained on the same data. For tagging, teacher logits are per word
(first sub-token), which lets teacher and student use different tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from summon.losses import cross_entropy, kd_kl, mix
from summon.methods.finetune import targets
from summon.models.inference import word_level


@dataclass
class KDConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the KD term; 1.0 ignores the gold labels

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: KDConfig) -> dict[str, Any]:
    logits = model(batch)
    teacher = batch["teacher_logits"]
    if "word_starts" in batch:  # tagging: compare at each word's first sub-token
        width = min(batch["word_starts"].shape[1], teacher.shape[1])
        student = word_level(logits, batch)[:, :width]
        kd = kd_kl(student, teacher[:, :width], cfg.temperature, mask=batch["word_mask"][:, :width])
    else:
        kd = kd_kl(logits, teacher, cfg.temperature)
    task = cross_entropy(logits, targets(batch)) if cfg.alpha < 1.0 else kd.new_zeros(())
    return {"loss": mix(task, kd, cfg.alpha), "output": logits, "task_loss": task.detach(), "kd_loss": kd.detach()}
