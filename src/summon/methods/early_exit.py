"""Joint training of classifier exits (Schwartz et al. 2020, *The Right Tool for the Job*).

The paper's loss is the unweighted sum of the exits' cross-entropies, with every weight trained jointly::

    L = sum_k CE(y, softmax(logits_k))

Options beyond the paper, each off by default:

* ``distill_last``: earlier exits also learn from the last exit (self-distillation, as in e.g. Zhu et al.
  2021): exit k < S minimises ``(1 − α)·CE + α·T²·KL(last ‖ k)`` with the last exit's logits detached.
* ``distill_teacher``: every exit also learns from the run's teacher (its cached logits; ``teacher:``), as
  exit-distillation successors do: ``(1 − α)·CE + α·T²·KL(teacher ‖ k)``. Sentence tasks only.
* ``consistency``: each earlier exit k also learns from the next one, ``+ β·T²·KL(k+1 ‖ k)`` with exit k+1
  detached, so neighbouring exits agree (and a row that may stop at k answers as k+1 would).
* ``exit_weights: depth``: exit k is weighted by its depth k/S (DeeBERT/PABEE-style weighting).
* An exit on the embeddings (``model.exits: embeddings+all`` or a list with 0) is trained like the others.

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
    distill_teacher: float = 0.0  # α: weight of KD from the run's teacher (cached logits) into every exit
    consistency: float = 0.0  # β: weight of KL(next exit ‖ this exit), next detached, added for every earlier exit
    temperature: float = 2.0  # T of these KD terms

    def __post_init__(self) -> None:
        for key in ("distill_last", "distill_teacher"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.distill_last > 0 and self.distill_teacher > 0:
            raise ValueError("distill_last and distill_teacher both give the exits a teacher; set one of them")
        if not 0.0 <= self.consistency < float("inf"):
            raise ValueError(f"consistency must be a finite number >= 0, got {self.consistency}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def uses_teacher(cfg: EarlyExitConfig) -> bool:
    """Whether the run's teacher logits must come cached in the batch (``distill_teacher``)."""
    return cfg.distill_teacher > 0


def exit_losses(logits: torch.Tensor, labels: torch.Tensor, cfg: EarlyExitConfig,
                teacher: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One loss per exit; logits [B, S, C] with labels [B], or a tagger's [B, S, L, C] with sub-token labels
    [B, L] (``IGNORE_INDEX`` where not scored; the KD terms then read the scored positions only).

    ``teacher`` [B, C]: the run's teacher logits, for ``distill_teacher``.
    """
    stages = logits.shape[1]
    scored = labels != IGNORE_INDEX
    last = logits[:, -1].detach()
    if cfg.distill_teacher > 0 and teacher is None:
        raise ValueError("distill_teacher needs the teacher's logits in the batch: give the run a 'teacher:'")
    losses = []
    for k in range(stages):
        exit_k = logits[:, k][scored]
        loss = cross_entropy(logits[:, k], labels)
        if cfg.distill_teacher > 0:
            loss = mix(loss, kd_kl(exit_k, teacher[scored], cfg.temperature), cfg.distill_teacher)
        elif cfg.distill_last > 0 and k < stages - 1:
            loss = mix(loss, kd_kl(exit_k, last[scored], cfg.temperature), cfg.distill_last)
        if cfg.consistency > 0 and k < stages - 1:
            loss = loss + cfg.consistency * kd_kl(exit_k, logits[:, k + 1].detach()[scored], cfg.temperature)
        losses.append(loss)
    return losses


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: EarlyExitConfig) -> dict[str, Any]:
    logits = model(batch)
    tagging = "labels" in batch
    if logits.ndim != (4 if tagging else 3):
        raise ValueError("method 'early_exit' needs a model with exits: set model.exits (e.g. 'all')")
    if tagging and cfg.distill_teacher > 0:
        raise ValueError("distill_teacher distils a sentence classifier's logits; a tagger's exits take distill_last "
                         "or consistency")
    losses = exit_losses(logits, batch["labels"] if tagging else batch["label"], cfg, batch.get("teacher_logits"))
    stages = len(losses)
    weights = [1.0] * stages if cfg.exit_weights == "uniform" else [(k + 1) / stages for k in range(stages)]
    loss = sum(w * part for w, part in zip(weights, losses, strict=True))
    return {"loss": loss, "output": logits, "first_exit_loss": losses[0].detach(), "last_exit_loss": losses[-1].detach()}
