"""Progressive ensemble distillation, B-DISTIL (Dennis, Shetty, Sevekari, Koishida, Smith; NeurIPS 2023).

**A reconstruction.** Only the paper's abstract, figure captions and dataset table could be read
(``shared/PAPERS.md`` §2); its method section is not available and the authors' repository is empty. Every
choice below that the paper's text could overturn is an option of :class:`ProgressiveConfig`.

The teacher is decomposed into members ``f_1 … f_T`` whose sum approximates its (centred) logits, so the
ensemble can stop after any prefix (anytime inference). Boosting round ``t``
(:func:`summon.training.progressive.train_ensemble` drives the rounds through the one training loop):

1. weights over (example, class) from the residual between the teacher and the current ensemble,
   two-sided multiplicative weights kept in log space (:func:`summon.losses.residual_log_weights`);
2. FIND-WL: the candidates listed in ``candidates`` (cheapest first; ``search`` says where each round
   starts) are trained in turn, each by
   :func:`step` on the shifted log-barrier relaxation of the weak-learning condition ``edge ≥ gamma``
   (:func:`summon.losses.barrier_loss`), and the first whose edge on held-out rows meets ``gamma`` is kept;
   when none does, ``on_failure`` says whether to stop or take the best;
3. the member's output is ``α_t · h_t``, its raw outputs bounded to ``h_t ∈ (−1, 1)^C`` (``bounded_output``), with the real-AdaBoost step ``α_t`` from its held-out edge; with
   ``composition: true`` member ``t`` also reads member ``t−1``'s last hidden layer through a learned
   projection (:mod:`summon.models.member`); earlier members are frozen.

A round's weights and the previous member's hidden layer are computed once, written to
``<candidate run>/round.safetensors``, and attached to the training rows at each epoch's start by
:func:`epoch_start`, so a killed candidate run resumes with the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import nn

from summon.losses import barrier_loss
from summon.models.build import AnyModelConfig

ROUND_INPUTS = "round.safetensors"


@dataclass
class Candidate:
    """One weak-learner architecture FIND-WL may try, with its own optimisation settings."""

    model: AnyModelConfig
    name: str = ""  # how reports call it (default: its kind and size)
    epochs: int | None = None  # default: train.epochs
    lr: float | None = None  # default: train.lr

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.model.compose_from:
            raise ValueError("model.compose_from is set by the ensemble's training; leave it out of candidates")
        extra = [key for key in ("defer_output", "exits", "crf") if getattr(self.model, key, None) not in (None, False)]
        if extra or self.model.kind == "hf":
            raise ValueError(f"model: a member is a single-head sequence classifier (an encoder kind or ngram); "
                             f"remove {', '.join(extra) or 'kind hf'}")
        if not self.name:
            self.name = describe_model(self.model)


def describe_model(model: Any) -> str:
    """A short name for a candidate model config: ``ngram``, ``truncated_2``, ``random_2x128``..."""
    if model.kind == "truncated":
        return f"truncated_{model.first}" if model.first else f"truncated_{model.every or model.layers}"
    if model.kind == "random":
        return f"random_{model.num_layers or 'same'}x{model.hidden_size or 'same'}"
    return model.kind


@dataclass
class ProgressiveConfig:
    """Settings of the boosting rounds (see the module docstring); reconstructions are marked by their options."""

    candidates: list[Candidate] = field(default_factory=list)  # cheapest first
    rounds: int = 3  # T: most members in the ensemble
    gamma: float = 0.1  # γ: the weak-learning condition edge ≥ γ on held-out rows
    eta: float = 1.0  # η: rate of the multiplicative weights (and the step's 1/2η)
    clip: float = 10.0  # residuals clipped to ±clip before exponentiation
    centre_teacher: bool = True  # fit the teacher's logits minus their row mean (softmax-invariant)
    barrier: Literal["row", "total"] = "row"  # one log-barrier per row, or one on the batch's edge
    barrier_shift: float = 1.5  # s in −log(edge − γ + s); must exceed 1 + γ
    # h = 2·softmax(f) − 1 (one class near +1 at most) or tanh(f) per class (saturates into ties at ±1)
    bounded_output: Literal["softmax", "tanh"] = "softmax"
    composition: bool = True  # member t reads member t−1's last hidden layer (Figure 4); false: independent inputs
    # Where FIND-WL starts in round t: the cheapest candidate; the previous member's (members never shrink); or
    # candidate t (or the previous member's, if larger): the list is then a schedule of one size per round,
    # falling forward to larger candidates when the condition fails.
    search: Literal["from_cheapest", "from_previous", "from_round"] = "from_previous"
    on_failure: Literal["stop", "best"] = "best"  # no candidate meets γ: stop, or take the best positive edge
    holdout: float = 0.1  # share of the training rows held out for the condition and the step

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.eta <= 0 or self.clip <= 0:
            raise ValueError("eta and clip must be positive")
        if self.barrier_shift <= 1.0 + self.gamma:
            raise ValueError(f"barrier_shift must exceed 1 + gamma = {1.0 + self.gamma} (the barrier must be defined "
                             f"for every edge), got {self.barrier_shift}")
        if not 0.0 < self.holdout < 0.5:
            raise ValueError(f"holdout must be in (0, 0.5), got {self.holdout}")


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: ProgressiveConfig) -> dict[str, Any]:
    """One weak-learner step: the shifted log-barrier of the round's weak-learning condition."""
    if "log_w_plus" not in batch:
        raise ValueError("method 'progressive' trains a round's candidate: its rows need the round's weights "
                         f"({ROUND_INPUTS}); train the ensemble with `summon train` on a progressive recipe")
    logits = model(batch)
    loss, batch_edge = barrier_loss(logits, batch["log_w_plus"], batch["log_w_minus"], gamma=cfg.gamma,
                                    shift=cfg.barrier_shift, barrier=cfg.barrier, output=cfg.bounded_output)
    return {"loss": loss, "output": logits, "edge": batch_edge}


def epoch_start(ctx: Any) -> None:
    """Attach the round's inputs (``<output_dir>/round.safetensors``) to every training row, by row index."""
    path = Path(ctx.output_dir) / ROUND_INPUTS
    if not path.is_file():
        raise ValueError(f"{path}: missing. A progressive candidate run needs its round's weights; run the ensemble "
                         "recipe (method_args.candidates) rather than one candidate")
    arrays = load_file(str(path))
    features = ctx.train_set.features
    rows = arrays["log_w_plus"].shape[0]
    if rows != len(features):
        raise ValueError(f"{path}: weights for {rows} rows but the run has {len(features)} training rows; the data "
                         "changed since the round started. Delete the run folder and train again")
    for key, values in arrays.items():
        for i, feature in enumerate(features):
            feature[key] = values[i]
