"""Structured knowledge distillation for CRF taggers (Lin et al. 2022, *Efficient Sub-structured Knowledge
Distillation*, arXiv 2203.04825; released code ``Linwenye/Efficient-KD``), with the baselines it is measured
against. Teacher and student are :class:`~summon.models.tagger.CRFTagger` models over the same chain
(same tokenizer, label set and ``crf_over``); the teacher is frozen.

Variants (``variant``):

* ``substructure`` (the paper's proposal, ``distil='struct_with_trans'``):
  ``(1 − α)·NLL(gold) + α·mean (φ^S − φ^T)²`` over sub-structure scores
  ``φ_t(y', y) = emission_t(y) + transition(y', y)``; no dynamic programming in the KD term.
* ``substructure_emissions_only`` (the released script's default, ``struct_wo_trans``): the MSE on emissions only.
* ``marginal_kl`` (structural KD baseline, ``margin_prob``): ``(1 − α)·NLL + α·KL(μ^T ‖ μ^S)`` of the unary
  marginals from forward-backward (DP for teacher and student).
* ``topk`` (``topk``): the CRF NLL of the teacher's k best Viterbi paths weighted 1.0, 0.1, 0.1; no gold term.

Where the teacher's outputs come from (``teacher_outputs``):

* ``cached`` (default): computed once, before training, over the student's own featurized rows, and cached on
  disk (:mod:`summon.training.structured_cache`, keyed by teacher, featurizer, data and what is cached): the
  chain emissions and transitions, plus the unary marginals (``marginal_kl``) or the k best paths
  (``topk``). A KD epoch then costs the student alone. The loss equals the online one on the same batch, up
  to float rounding (the teacher runs in eval mode, so its outputs do not depend on the epoch). Teacher and
  student still need the same tokenizer: the teacher is read over the student's chain, as online.
* ``online``: the teacher runs every batch, in eval mode and without gradients, as in the paper's code;
  its time is part of the paper's epoch-time comparison.

α = 0.9 as in the code. Departures, on purpose: padded positions are masked out of the MSE and KL averages
(``mask_padding: false`` reproduces the code's plain mean over padding, with both models' emissions taken
as 0 in our chain's padded slots, which hold no token — the code's pad tokens have hidden states of their own,
ours are gather padding — so that cached and online outputs give the same loss; the transitions still count
at every padded position in ``substructure``); the KL averages over real positions
rather than ``KLDivLoss(batchmean)`` over a (seq, batch, L) layout; special tokens ([CLS], [SEP]) are not in
the chain; and the CRF runs over words unless ``model.crf_over: subtokens`` (the code chains word pieces
with an ``X`` label); teacher outputs are cached unless ``teacher_outputs: online``.

Timing: every step returns ``teacher_forward_seconds`` (0 when cached), ``student_forward_seconds`` (the
encoder and emission layer), ``kd_seconds`` (the KD term alone, with the forward-backward or k-best NLL it
needs) and ``gold_nll_seconds`` (the gold CRF NLL, the part every variant but ``topk`` shares with
``crf_finetune``); the loop adds ``backward`` (with the optimizer step) and sums them per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from summon.losses.structured import marginal_kl, substructure_mse, topk_nll
from summon.measure.timing import clock, seconds
from summon.methods.crf_finetune import crf_model

VARIANTS = ("substructure", "substructure_emissions_only", "marginal_kl", "topk")
TEACHER_OUTPUTS = ("cached", "online")


@dataclass
class StructuredKDConfig:
    variant: Literal["substructure", "substructure_emissions_only", "marginal_kl", "topk"] = "substructure"
    alpha: float = 0.9  # weight of the KD term against the gold NLL (not used by topk)
    mask_padding: bool = True  # false: average over padding too, as the released code does
    k: int = 3  # topk: teacher paths
    topk_weights: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.1])  # topk: NLL weight per rank
    # cached: teacher outputs computed once before training (a KD epoch costs the student alone);
    # online: the teacher runs every batch, as in the paper's code and its epoch timing
    teacher_outputs: Literal["cached", "online"] = "cached"

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant: unknown structured_kd variant {self.variant!r}; choose one of "
                            f"{', '.join(VARIANTS)}")
        if self.teacher_outputs not in TEACHER_OUTPUTS:
            problems.append(f"teacher_outputs: must be 'cached' (teacher outputs computed once before training) or "
                            f"'online' (the teacher runs every batch), got {self.teacher_outputs!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha: must be in [0, 1], got {self.alpha!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1 or len(self.topk_weights) != self.k:
            problems.append(f"k / topk_weights: topk needs k >= 1 and one weight per path; got k={self.k!r} and "
                            f"topk_weights={self.topk_weights!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def cached_contents(self) -> dict[str, Any]:
        """What the teacher cache holds for this config (part of its key)."""
        return {"emissions": True, "transitions": True, "unary": self.variant == "marginal_kl",
                "kbest": self.k if self.variant == "topk" else 0}


TeacherOut = dict[str, Any]


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, batch: dict[str, torch.Tensor], cfg: StructuredKDConfig) -> TeacherOut:
    """What the variant needs from the teacher: chain emissions [B, T, L] and transitions [L, L], plus unary
    marginals [B, T, L] (``marginal_kl``) or the k best paths (``topk``), and the chain mask [B, T]."""
    tagger = crf_model(teacher, "structured_kd (teacher)")
    emissions, mask, _ = tagger.crf_inputs(batch, teacher(batch))
    out: TeacherOut = {"emissions": emissions, "transitions": tagger.crf.transitions.detach(), "mask": mask}
    if cfg.variant == "marginal_kl":
        out["unary"] = tagger.crf.marginals(emissions, mask)[0]
    elif cfg.variant == "topk":
        out["paths"] = tagger.crf.kbest(emissions, mask, cfg.k)[1]
    return out


def teacher_rows(teacher: nn.Module, batch: dict[str, torch.Tensor], cfg: StructuredKDConfig
                 ) -> list[dict[str, np.ndarray]]:
    """The teacher's outputs for each row of ``batch``, unpadded, as the cache stores them and
    :func:`summon.data.features.collate` pads them back: ``teacher_emissions`` [T_i, L], ``teacher_unary``
    [T_i, L] (``marginal_kl``), ``teacher_paths`` [T_i, k] (``topk``; -1 for a missing rank) and
    ``teacher_transitions`` [L, L] (one array shared by every row)."""
    out = teacher_outputs(teacher, batch, cfg)
    lengths = out["mask"].sum(dim=1).tolist()
    transitions = out["transitions"].float().cpu().numpy()
    emissions = out["emissions"].float().cpu().numpy()
    unary = out["unary"].float().cpu().numpy() if "unary" in out else None
    rows = []
    for b, n in enumerate(lengths):
        row = {"teacher_emissions": emissions[b, :n].copy(), "teacher_transitions": transitions}
        if unary is not None:
            row["teacher_unary"] = unary[b, :n].copy()
        if "paths" in out:
            paths = np.full((n, cfg.k), -1, dtype=np.int64)
            for rank, path in enumerate(out["paths"][b]):
                if path:
                    paths[:, rank] = path
            row["teacher_paths"] = paths
        rows.append(row)
    return rows


def cached_outputs(batch: dict[str, torch.Tensor], cfg: StructuredKDConfig) -> TeacherOut:
    """The teacher outputs the cache put in ``batch`` (see :func:`teacher_rows`), in :func:`teacher_outputs`' form."""
    if "teacher_emissions" not in batch:
        raise ValueError("teacher_outputs: 'cached', but the batch holds no cached teacher outputs "
                         "(teacher_emissions); train through summon.train (it fills the cache) or set "
                         "method_args.teacher_outputs: online and pass the teacher model")
    lengths = batch["teacher_chain_length"]
    width = batch["teacher_emissions"].shape[1]
    mask = torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    out: TeacherOut = {"emissions": batch["teacher_emissions"], "transitions": batch["teacher_transitions"][0],
                       "mask": mask}
    if cfg.variant == "marginal_kl":
        if "teacher_unary" not in batch:
            raise ValueError("variant marginal_kl needs cached teacher marginals (teacher_unary); the cache was "
                             "filled for another variant")
        out["unary"] = batch["teacher_unary"]
    elif cfg.variant == "topk":
        paths = batch.get("teacher_paths")
        if paths is None or paths.shape[-1] != cfg.k:
            raise ValueError(f"variant topk needs the teacher's {cfg.k} best paths cached (teacher_paths); the cache "
                             "was filled for another variant or k")
        rows = paths.transpose(1, 2).tolist()  # [B, k, T]
        out["paths"] = [[path[:n] if path[0] >= 0 else [] for path in row]
                        for row, n in zip(rows, lengths.tolist(), strict=True)]
    return out


def kd_loss(student_emissions: torch.Tensor, mask: torch.Tensor, student: nn.Module, teacher: TeacherOut,
            cfg: StructuredKDConfig) -> torch.Tensor:
    """The variant's distillation term for the student's chain emissions [B, T, L] and CRF ``student``."""
    if cfg.variant in ("substructure", "substructure_emissions_only"):
        teacher_emissions = teacher["emissions"]
        if not cfg.mask_padding:  # padded slots hold no token: both emissions count as 0 there (online = cached)
            real = mask.unsqueeze(-1)
            student_emissions = torch.where(real, student_emissions, torch.zeros_like(student_emissions))
            teacher_emissions = torch.where(real, teacher_emissions, torch.zeros_like(teacher_emissions))
        return substructure_mse(student_emissions, student.transitions, teacher_emissions, teacher["transitions"],
                                mask, with_transitions=cfg.variant == "substructure", mask_padding=cfg.mask_padding)
    if cfg.variant == "marginal_kl":
        unary = student.marginals(student_emissions, mask)[0]
        return marginal_kl(unary, teacher["unary"], mask, mask_padding=cfg.mask_padding)
    return topk_nll(student_emissions, mask, *student.params(), teacher["paths"], weights=cfg.topk_weights)


def _check_chains(student_emissions: torch.Tensor, mask: torch.Tensor, teacher: TeacherOut) -> None:
    same = student_emissions.shape == teacher["emissions"].shape and torch.equal(mask, teacher["mask"])
    if not same:
        raise ValueError(f"teacher and student chains differ: {tuple(teacher['emissions'].shape)} vs "
                         f"{tuple(student_emissions.shape)} (or their lengths per row); they need the same "
                         "tokenizer, labels, model.max_length and model.crf_over")


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: StructuredKDConfig, *,
         teacher: nn.Module | None = None) -> dict[str, Any]:
    device = batch["input_ids"].device
    start = clock(device)
    if cfg.teacher_outputs == "online":
        if teacher is None:
            raise ValueError("teacher_outputs: 'online' needs the teacher model (step(..., teacher=))")
        from_teacher = teacher_outputs(teacher, batch, cfg)
        after_teacher = clock(device)
    else:  # no teacher runs: reading its cached rows from the batch counts as the student's forward
        from_teacher = cached_outputs(batch, cfg)
        after_teacher = start
    tagger = crf_model(model, "structured_kd")
    emissions, mask, tags = tagger.crf_inputs(batch, model(batch))
    after_student = clock(device)
    _check_chains(emissions, mask, from_teacher)
    kd = kd_loss(emissions, mask, tagger.crf, from_teacher, cfg)
    after_kd = clock(device)
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
    return {**out, "loss": loss, "output": emissions, "teacher_forward_seconds": seconds(after_teacher - start),
            "student_forward_seconds": seconds(after_student - after_teacher),
            "kd_seconds": seconds(after_kd - after_student), "gold_nll_seconds": seconds(end - after_kd)}
