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

Taggers (:class:`TokenReadout`): raw stage logits are ``[B, W, K]`` per word, NaN past each row's words; a
per-word score (``max_prob``, ``margin``, ``entropy``) is reduced to one per sentence (``min``, ``mean`` or
``path``: :func:`~summon.adaptive.policies.sentence_score`), and the whole sentence leaves at one exit.

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
from summon.adaptive.policies import POLICIES, TOKEN_POLICIES, TOKEN_REDUCTIONS, max_prob, sentence_score
from summon.core.registry import suggest

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

    # --- what a row's answer is: one [K] vector (the executor keeps answers through these four) -----------

    def blank(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.num_labels), np.float32)

    def rows_of(self, logits: torch.Tensor) -> list[np.ndarray]:
        return list(logits.float().cpu().numpy())

    def store(self, out: np.ndarray, rows: np.ndarray, logits: torch.Tensor) -> None:
        out[rows] = logits.float().cpu().numpy()

    def stack(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(rows) if len(rows) else np.zeros((0, self.num_labels), np.float32)

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


@dataclass
class TokenReadout:
    """The read-out of a tagger's exit: per-word temperature scaling, a per-word score and its reduction to one
    score per sentence (``reduce``). Raw logits are ``[B, W, K]``, NaN at the positions past each row's words;
    a row's answer is its ``[words, K]`` array (what :meth:`rows_of` cuts out)."""

    policy: str
    temperatures: Sequence[float]
    num_labels: int
    reduce: str = "min"
    needs_lengths = False

    def __post_init__(self) -> None:
        if self.policy not in TOKEN_POLICIES:
            raise ValueError(f"scorer {self.policy!r} scores whole-sentence answers; a tagger's exits score each word "
                             f"with one of {', '.join(TOKEN_POLICIES)} and reduce over the sentence (token_reduce: "
                             f"{', '.join(TOKEN_REDUCTIONS)})")
        if self.reduce not in TOKEN_REDUCTIONS:
            raise ValueError(f"unknown token_reduce {self.reduce!r}; choose from {', '.join(TOKEN_REDUCTIONS)}")

    @property
    def num_stages(self) -> int:
        return len(self.temperatures)

    def __call__(self, stage: int, raw: torch.Tensor, carry: torch.Tensor | None = None,
                 lengths: np.ndarray | Sequence[int] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Calibrated word logits ``[B, W, K]`` (NaN padding kept), the sentence score ``[B]`` and no carry."""
        if raw.ndim != 3 or raw.shape[-1] != self.num_labels:
            raise ValueError(f"stage {stage} returned logits of shape {tuple(raw.shape)}; a tagger's exit gives "
                             f"[rows, words, {self.num_labels}]")
        mask = ~torch.isnan(raw[..., 0])
        scaled = raw.double() / float(self.temperatures[stage])
        word_scores, _ = POLICIES[self.policy](torch.nan_to_num(scaled).softmax(dim=-1), None)
        return scaled, sentence_score(word_scores, mask, self.reduce), None

    def blank(self, rows: int) -> np.ndarray:
        return np.empty(rows, dtype=object)

    def rows_of(self, logits: torch.Tensor) -> list[np.ndarray]:
        values = logits.float().cpu().numpy()
        return [row[~np.isnan(row[:, 0])] for row in values]

    def store(self, out: np.ndarray, rows: np.ndarray, logits: torch.Tensor) -> None:
        for row, value in zip(rows, self.rows_of(logits), strict=True):
            out[row] = value

    def stack(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        out = self.blank(len(rows))
        for i, row in enumerate(rows):
            out[i] = row
        return out


def pad_words(rows: Sequence[np.ndarray], num_labels: int) -> torch.Tensor:
    """Per-row ``[words, K]`` arrays as one ``[N, W, K]`` tensor, NaN past each row's words."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width, num_labels), float("nan"), dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(np.asarray(row, dtype=np.float64))
    return out


def token_view(raws: Sequence[Sequence[np.ndarray]], readout: TokenReadout,
               gold: Sequence[np.ndarray] | None = None, *, chunk: int = 256) -> dict[str, np.ndarray]:
    """Every stage's read-out of a tagger on every sentence, as the executor computes it.

    A sentence's answer at a stage is its whole tag sequence, so the threshold table's "prediction" of a row is
    an id of that sequence, equal between two stages (or a stage and the gold tags) exactly when every tag is.
    Disagreement with the last exit is then the share of sentences whose tags change, and accuracy against gold
    the share tagged entirely right: both per-row 0/1 losses, so Learn-then-Test applies unchanged.

    Returns ``scores`` and ``preds`` (sequence ids) ``[N, S]``, ``gold`` ids ``[N]`` (when ``gold`` is given) and
    ``tags``: per stage, each row's predicted tag ids.
    """
    n, stages = (len(raws[0]) if raws else 0), len(raws)
    scores = np.zeros((n, stages))
    tags: list[list[np.ndarray]] = [[] for _ in range(stages)]
    for start in range(0, n, chunk):
        for k in range(stages):
            part = [raws[k][i] for i in range(start, min(n, start + chunk))]
            _, score, _ = readout(k, pad_words(part, readout.num_labels))
            scores[start:start + len(part), k] = score.numpy()
            tags[k] += [np.asarray(row).argmax(axis=-1) if len(row) else np.zeros(0, np.int64) for row in part]
    preds, gold_ids = sequence_ids(tags, gold)
    out = {"scores": scores, "preds": preds, "tags": tags}
    if gold_ids is not None:
        out["gold"] = gold_ids
    return out


def sequence_ids(tags: Sequence[Sequence[np.ndarray]], gold: Sequence[np.ndarray] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row, one integer per distinct tag sequence among its stages (and its gold tags): ``[N, S]``, ``[N]``."""
    stages, n = len(tags), (len(tags[0]) if tags else 0)
    preds = np.zeros((n, stages), np.int64)
    gold_ids = None if gold is None else np.zeros(n, np.int64)
    for i in range(n):
        seen: dict[bytes, int] = {}
        for k in range(stages):
            preds[i, k] = seen.setdefault(np.asarray(tags[k][i], np.int64).tobytes(), len(seen))
        if gold_ids is not None:
            gold_ids[i] = seen.setdefault(np.asarray(gold[i], np.int64).tobytes(), len(seen))
    return preds, gold_ids
