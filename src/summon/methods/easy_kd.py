"""Easy-example distillation for cascades (Rawat et al. 2021, *When in Doubt, Summon the Titans*).

The student only has to be right on the inputs it will answer; the hardest ``budget`` fraction go to the
teacher. Which inputs are hard is decided from teacher and student signals and re-estimated at the start
of every epoch ("round"), with the current student:

* ``disagreement``: the ``budget`` fraction with the largest KL(teacher ‖ student) at T = 1 (in the first
  epoch, before the student has learnt anything, teacher confidence is used instead);
* ``teacher_confidence``: the ``budget`` fraction where the teacher is least confident (fixed across epochs).

Two objectives, both reconstructions — only the paper's abstract was available (shared/PAPERS.md §1):

* ``selective`` (variant A): KD on easy rows, the uniform distribution as the target on hard rows, so a
  confidence rule defers them (:func:`summon.losses.selective_kd`);
* ``defer`` (variant B): an explicit defer output trained as a learning-to-defer surrogate with the
  teacher as the expert (:func:`summon.losses.defer_surrogate`); the student needs
  ``model.defer_output: true``, and the cascade defers on that output (scorer ``defer``).

Each epoch's hard set is written to ``<output_dir>/hardness/epoch_<e>.json``, so a resumed run uses the
same sets as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from summon.losses import cross_entropy, defer_surrogate, selective_kd
from summon.measure.metrics import softmax
from summon.models.inference import predict_logits


@dataclass
class EasyKDConfig:
    variant: Literal["selective", "defer"] = "selective"
    budget: float = 0.2  # target share of inputs deferred to the teacher (the hardest ones)
    hardness: Literal["disagreement", "teacher_confidence"] = "disagreement"
    temperature: float = 2.0  # KD temperature on easy rows (variant A); teacher softening (variant B uses 1)
    hard_weight: float = 1.0  # λ: weight of the uniform target on hard rows (variant A)
    ce_weight: float = 0.0  # optional gold cross-entropy on easy rows, added to either variant

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise ValueError(f"budget must be in (0, 1), got {self.budget}")
        if self.temperature <= 0 or self.hard_weight < 0 or self.ce_weight < 0:
            raise ValueError("temperature must be positive; hard_weight and ce_weight non-negative")


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: EasyKDConfig) -> dict[str, Any]:
    logits = model(batch)
    teacher, easy = batch["teacher_logits"], batch["easy"]
    if cfg.variant == "selective":
        loss = selective_kd(logits, teacher, easy, cfg.temperature, cfg.hard_weight)
    else:
        loss = defer_surrogate(logits, teacher, easy)
    out = {"output": logits, "easy_share": easy.mean().detach()}
    if cfg.ce_weight > 0:
        gold = torch.where(easy > 0.5, batch["label"], torch.full_like(batch["label"], -100))
        ce = cross_entropy(logits[:, : teacher.shape[-1]], gold)
        loss = loss + cfg.ce_weight * ce
        out["ce"] = ce.detach()
    out["loss"] = loss
    return out


# --- hardness, re-estimated each epoch ------------------------------------------------------------


def hard_rows(teacher_logits: np.ndarray, student_logits: np.ndarray | None, budget: float) -> np.ndarray:
    """Indices of the ``budget`` share of rows deemed hard (student logits None: teacher confidence)."""
    p_t = softmax(teacher_logits.astype(np.float64))
    if student_logits is None:
        hardness = -p_t.max(axis=1)
    else:
        k = teacher_logits.shape[1]
        p_s = softmax(student_logits[:, :k].astype(np.float64))
        hardness = (p_t * (np.log(np.clip(p_t, 1e-12, None)) - np.log(np.clip(p_s, 1e-12, None)))).sum(axis=1)
    count = round(budget * len(hardness))
    return np.sort(np.argsort(-hardness, kind="stable")[:count])


def epoch_start(ctx: Any) -> None:
    """Mark each training feature ``easy`` (1.0) or hard (0.0) for this epoch; see the module docstring."""
    cfg: EasyKDConfig = ctx.method_cfg
    path = ctx.output_dir / "hardness" / f"epoch_{ctx.epoch}.json"
    features = ctx.train_set.features
    if ctx.is_main_process and not path.is_file():
        teacher = np.stack([f["teacher_logits"] for f in features])
        student = None
        if cfg.hardness == "disagreement" and ctx.epoch > 0:
            student = np.stack(predict_logits(ctx.model, features, "classification", pad_id=ctx.pad_id,
                                              batch_size=256, progress="hardness"))
        hard = hard_rows(teacher, student, cfg.budget)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": ctx.epoch, "budget": cfg.budget, "criterion":
                                   "teacher_confidence" if student is None else "disagreement",
                                   "hard": hard.tolist()}))
        os.replace(tmp, path)
    ctx.wait_for_everyone()
    hard = set(json.loads(path.read_text())["hard"])
    for i, feature in enumerate(features):
        feature["easy"] = 0.0 if i in hard else 1.0
