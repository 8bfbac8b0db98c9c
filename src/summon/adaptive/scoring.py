"""The read-out of a stage: raw logits in, calibrated class logits and a confidence score out.

One :class:`Readout` serves calibration, threshold tables, evaluation and execution, so the score a row
gets while the thresholds are chosen is the score it gets when it runs. Raw stage logits are ``[B, K]``,
or ``[B, K + 1]`` for a stage with a learned "defer" output (its last column).

Scores, all "high = answer here":

* ``max_prob``, ``margin``, ``entropy``, ``patience``: the policies of :mod:`summon.adaptive.policies` on
  the stage's calibrated class probabilities;
* ``defer``: one minus the probability of the learned defer output (students trained with the
  learning-to-defer loss of :mod:`summon.methods.easy_kd`);
* ``gate``: a logistic model of "this stage agrees with the last one" (:mod:`summon.adaptive.gate`);
* ``learned``: a logistic model per stage of "this stage's answer is the final one" over this and the
  previous stage's scores, the agreement run and the input length (:mod:`summon.adaptive.learned`; it
  generalises ``gate``). Its carry follows each row like patience's, and it reads the rows' lengths
  (``runner.length``) at stage 0.

The last stage always answers; its score is reported only (``defer``, ``gate`` and ``learned`` fall back to
``max_prob`` there, having no defer output or model of their own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from summon.adaptive.gate import Gate
from summon.adaptive.learned import LearnedScores, stage_features
from summon.adaptive.policies import POLICIES, max_prob
from summon.registry import suggest

SCORERS = (*POLICIES, "defer", "gate", "learned")


def check_scorer(name: str) -> str:
    if name not in SCORERS:
        raise ValueError(f"unknown confidence score '{name}'.{suggest(name, list(SCORERS))} "
                         f"Choose from {', '.join(SCORERS)}")
    return name


@dataclass
class Readout:
    """Temperatures, the scorer and its fitted models (``gate``: the gates; ``learned``: the learned scores)."""

    policy: str
    temperatures: Sequence[float]
    num_labels: int
    gates: Sequence[Gate | None] | None = None
    learned: LearnedScores | None = None

    def __post_init__(self) -> None:
        check_scorer(self.policy)
        if self.policy == "gate" and not any(self.gates or []):
            raise ValueError("scorer 'gate' needs fitted gates; calibrate with policy 'gate'")
        if self.policy == "learned":
            if self.learned is None:
                raise ValueError("scorer 'learned' needs fitted scores; calibrate with policy 'learned'")
            if len(self.learned.stages) != len(self.temperatures):
                raise ValueError(f"{len(self.learned.stages)} learned score models for {len(self.temperatures)} "
                                 "stages; recalibrate with policy 'learned'")

    @property
    def num_stages(self) -> int:
        return len(self.temperatures)

    @property
    def needs_lengths(self) -> bool:
        """Whether stage 0 needs the rows' lengths (``learned`` with its ``log_length`` feature)."""
        return self.policy == "learned" and self.learned is not None and self.learned.uses_length

    def __call__(self, stage: int, raw: torch.Tensor, carry: torch.Tensor | None = None,
                 lengths: np.ndarray | Sequence[int] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Calibrated class logits ``[B, K]`` (float64), score ``[B]`` and the policy's carry for the next stage.

        ``lengths`` ``[B]`` (``runner.length`` of each row) is read at the first stage by ``learned`` only.
        """
        k = self.num_labels
        if raw.shape[-1] not in (k, k + 1):
            raise ValueError(f"stage {stage} returned {raw.shape[-1]} logits per row for {k} labels")
        raw = raw.double()
        t = float(self.temperatures[stage])
        scaled = raw[:, :k] / t
        probs = scaled.softmax(dim=-1)
        last = stage == self.num_stages - 1
        if self.policy == "defer" and not last:
            if raw.shape[-1] != k + 1:
                raise ValueError("scorer 'defer' needs a stage with a defer output (a student trained with "
                                 f"easy_kd variant 'defer'); stage {stage} has none")
            score = 1.0 - (raw / t).softmax(dim=-1)[:, k]
        elif self.policy == "gate" and not last:
            gate = self.gates[stage] if self.gates else None
            if gate is None:
                raise ValueError(f"scorer 'gate' has no gate for stage {stage}; recalibrate with policy 'gate'")
            score = gate(probs.cpu()).to(probs.device)
        elif self.policy == "learned":
            if carry is None and lengths is None and self.needs_lengths:
                raise ValueError("scorer 'learned' needs the rows' lengths at the first stage (its log_length "
                                 "feature): pass lengths=")
            features, carry = stage_features(probs, carry, lengths)
            learned = self.learned.score(stage, features) if not last else None
            score = max_prob(probs)[0] if learned is None else learned
        elif self.policy in ("defer", "gate"):
            score, _ = max_prob(probs)
        else:
            score, carry = POLICIES[self.policy](probs, carry)
        return scaled, score.double(), carry


def score_all(raws: Sequence[np.ndarray], readout: Readout, lengths: np.ndarray | Sequence[int] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stage's read-out on every row, as the executor would compute it.

    Args:
        raws: one array ``[N, K or K + 1]`` of raw logits per stage.
        lengths: ``[N]`` row lengths as ``runner.length`` gives them (the ``learned`` scorer needs them;
            :func:`summon.adaptive.staged.row_lengths`).

    Returns:
        scores ``[N, S]``, predictions ``[N, S]`` and calibrated probabilities ``[N, S, K]``.
    """
    carry = None
    scores, preds, probs = [], [], []
    for k, raw in enumerate(raws):
        scaled, score, carry = readout(k, torch.as_tensor(np.asarray(raw)), carry, lengths if k == 0 else None)
        p = scaled.softmax(dim=-1)
        scores.append(score.cpu().numpy())
        preds.append(p.argmax(dim=-1).cpu().numpy())
        probs.append(p.cpu().numpy())
    return np.stack(scores, axis=1), np.stack(preds, axis=1), np.stack(probs, axis=1)
