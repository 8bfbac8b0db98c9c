"""Fine-tuning a CRF tagger on gold tags: the mean CRF negative log-likelihood (forward algorithm).

This trains the teacher of structured KD and is the gold-only student baseline of Lin et al. 2022
(*Efficient Sub-structured Knowledge Distillation*; ``distil='none'`` in ``Linwenye/Efficient-KD``).
The model must be a :class:`~summon.models.tagger.CRFTagger` (``model.crf: true``). The step times its parts as
:mod:`summon.methods.structured_kd` does (student forward, gold NLL; no teacher and no KD term, so both 0) so
epoch times compare part by part with the distilling methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from summon.measure.timing import clock, seconds
from summon.models.tagger import CRFTagger


@dataclass
class CRFFinetuneConfig:
    """No options: the loss is the CRF NLL of the gold tags, averaged over sentences."""


def crf_model(model: nn.Module, method: str) -> CRFTagger:
    """The CRF tagger inside ``model`` (unwrapping DDP), or a ValueError saying how to get one."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, CRFTagger):
        raise ValueError(f"method '{method}' needs a CRF tagger, got {type(inner).__name__}; set model.crf: true "
                         "on a token_classification task")
    return inner


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: CRFFinetuneConfig) -> dict[str, Any]:
    tagger = crf_model(model, "crf_finetune")
    device = batch["input_ids"].device
    start = clock(device)
    emissions = model(batch)
    after_student = clock(device)
    loss = tagger.nll(batch, emissions).mean()
    end = clock(device)
    return {"loss": loss, "output": emissions, "nll": loss.detach(), "teacher_forward_seconds": seconds(0.0),
            "student_forward_seconds": seconds(after_student - start), "kd_seconds": seconds(0.0),
            "gold_nll_seconds": seconds(end - after_student)}
