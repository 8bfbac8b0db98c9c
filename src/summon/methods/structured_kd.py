"""Structured knowledge distillation for CRF taggers (Lin et al. 2022, *Efficient Sub-structured Knowledge
Distillation*, arXiv 2203.04825; released code ``Linwenye/Efficient-KD``), with the baselines it is measured
against. Teacher and student are :class:`~summon.models.tagger.CRFTagger` models over the same chain
(same tokenizer, label set and ``crf_over``); the teacher is frozen and run online, in eval mode and
without gradients, every batch, as in the paper's code, which is what lets the epoch time be split.

Variants (``variant``):

* ``substructure`` (the paper's proposal, ``distil='struct_with_trans'``):
  ``(1 − α)·NLL(gold) + α·mean (φ^S − φ^T)²`` over sub-structure scores
  ``φ_t(y', y) = emission_t(y) + transition(y', y)``; no dynamic programming in the KD term.
* ``substructure_emissions_only`` (the released script's default, ``struct_wo_trans``): the MSE on emissions only.
* ``marginal_kl`` (structural KD baseline, ``margin_prob``): ``(1 − α)·NLL + α·KL(μ^T ‖ μ^S)`` of the unary
  marginals from forward-backward (DP for teacher and student).
* ``topk`` (``topk``): the CRF NLL of the teacher's k best Viterbi paths weighted 1.0, 0.1, 0.1; no gold term.

α = 0.9 as in the code. Departures, on purpose: padded positions are masked out of the MSE and KL averages
(``mask_padding: false`` reproduces the code's plain mean over padding); the KL averages over real positions
rather than ``KLDivLoss(batchmean)`` over a (seq, batch, L) layout; special tokens ([CLS], [SEP]) are not in
the chain; and the CRF runs over words unless ``model.crf_over: subtokens`` (the code chains word pieces
with an ``X`` label). Every step times the teacher forward, the student forward (with the loss) and,
in the loop, the backward pass, which the loop sums per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from summon.losses.structured import marginal_kl, substructure_mse, topk_nll
from summon.measure.timing import clock, seconds
from summon.methods.crf_finetune import crf_model

VARIANTS = ("substructure", "substructure_emissions_only", "marginal_kl", "topk")


@dataclass
class StructuredKDConfig:
    variant: Literal["substructure", "substructure_emissions_only", "marginal_kl", "topk"] = "substructure"
    alpha: float = 0.9  # weight of the KD term against the gold NLL (not used by topk)
    mask_padding: bool = True  # false: average over padding too, as the released code does
    k: int = 3  # topk: teacher paths
    topk_weights: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.1])  # topk: NLL weight per rank

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: unknown structured_kd variant {self.variant!r}; choose one of "
                             f"{', '.join(VARIANTS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.k < 1 or len(self.topk_weights) != self.k:
            raise ValueError(f"topk needs k >= 1 and one weight per path; got k={self.k} and "
                             f"topk_weights={self.topk_weights}")


TeacherOut = dict[str, Any]


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, batch: dict[str, torch.Tensor], cfg: StructuredKDConfig) -> TeacherOut:
    """What the variant needs from the teacher: chain emissions [B, T, L] and transitions [L, L], plus unary
    marginals [B, T, L] (``marginal_kl``) or the k best paths (``topk``)."""
    tagger = crf_model(teacher, "structured_kd (teacher)")
    emissions, mask, _ = tagger.crf_inputs(batch, teacher(batch))
    out: TeacherOut = {"emissions": emissions, "transitions": tagger.crf.transitions.detach()}
    if cfg.variant == "marginal_kl":
        out["unary"] = tagger.crf.marginals(emissions, mask)[0]
    elif cfg.variant == "topk":
        out["paths"] = tagger.crf.kbest(emissions, mask, cfg.k)[1]
    return out


def kd_loss(student_emissions: torch.Tensor, mask: torch.Tensor, student: nn.Module, teacher: TeacherOut,
            cfg: StructuredKDConfig) -> torch.Tensor:
    """The variant's distillation term for the student's chain emissions [B, T, L] and CRF ``student``."""
    if cfg.variant in ("substructure", "substructure_emissions_only"):
        return substructure_mse(student_emissions, student.transitions, teacher["emissions"], teacher["transitions"],
                                mask, with_transitions=cfg.variant == "substructure", mask_padding=cfg.mask_padding)
    if cfg.variant == "marginal_kl":
        unary = student.marginals(student_emissions, mask)[0]
        return marginal_kl(unary, teacher["unary"], mask, mask_padding=cfg.mask_padding)
    return topk_nll(student_emissions, mask, *student.params(), teacher["paths"], weights=cfg.topk_weights)


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: StructuredKDConfig, *,
         teacher: nn.Module) -> dict[str, Any]:
    device = batch["input_ids"].device
    start = clock(device)
    from_teacher = teacher_outputs(teacher, batch, cfg)
    mid = clock(device)
    tagger = crf_model(model, "structured_kd")
    emissions, mask, tags = tagger.crf_inputs(batch, model(batch))
    if emissions.shape != from_teacher["emissions"].shape:
        raise ValueError(f"teacher and student chains differ: {tuple(from_teacher['emissions'].shape)} vs "
                         f"{tuple(emissions.shape)}; they need the same tokenizer, labels and model.crf_over")
    kd = kd_loss(emissions, mask, tagger.crf, from_teacher, cfg)
    out: dict[str, Any] = {"kd_loss": kd.detach()}
    if cfg.variant == "topk":
        loss = kd
    else:
        if tags is None:
            raise ValueError("structured_kd needs gold tags for its NLL term (variant topk does not)")
        gold = tagger.crf.nll(emissions, tags, mask).mean()
        loss = (1.0 - cfg.alpha) * gold + cfg.alpha * kd
        out["nll"] = gold.detach()
    end = clock(device)
    return {**out, "loss": loss, "output": emissions, "teacher_forward_seconds": seconds(mid - start),
            "student_forward_seconds": seconds(end - mid)}
