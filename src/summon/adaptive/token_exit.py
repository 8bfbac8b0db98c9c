"""Early exit for taggers: a sentence leaves a token classifier at the first exit confident about all its words.

The exits are :class:`~summon.models.exits.MultiExitClassifier` with a token head after each chosen layer,
trained jointly like the sentence exits (method ``early_exit``; ``recipes/conll2003_ner_early_exit.yaml``).
A sentence's score at an exit reduces its words' calibrated scores (``token_reduce``: ``min`` by default, the
``mean``, or ``path``, the probability of the best tag path of the exit's softmax head); temperatures are
fitted per exit on word-level NLL (:func:`~summon.adaptive.calibration.fit_token_calibration`). The knob, the
threshold table, the Learn-then-Test guarantee (on the share of sentences whose tags differ from the last
exit's), the batched executor with regrouping and the saved format are the shared core's.

Our reconstruction, not a paper's: The Right Tool for the Job exits whole sentences of classification tasks
only. A CRF per exit (its best-path probability as the score) is not built: each exit here is a softmax head.

Words cut by truncation are tagged with label 0 at every exit, as the plain tagger tags them, and with certainty
(logit 0 for label 0, -1e4 for the others), so they never hold a sentence back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from summon.adaptive.calibration import Calibration, CalibrationSpec, fit_token_calibration
from summon.adaptive.early_exit import EarlyExitPredictor, ExitRunner
from summon.adaptive.scoring import TokenReadout
from summon.adaptive.staged import StagedBase
from summon.data.batching import length_sorted_batches, to_device
from summon.data.features import collate
from summon.data.spec import TaskData
from summon.measure.device import device_of
from summon.models.backbone import EncoderState

CUT_LOGIT = -1e4  # other labels' logit at a word cut off by truncation (label 0 gets 0)


@dataclass
class TaggerState:
    """An encoder state and where each row's kept words start: ``starts`` ``[B, W]``, ``kept`` and ``words``
    ``[B]`` (words kept after truncation, and words in the input)."""

    encoder: EncoderState
    starts: torch.Tensor
    kept: torch.Tensor
    words: torch.Tensor


def word_logits(token: torch.Tensor, starts: torch.Tensor, kept: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Sub-token logits ``[B, L, K]`` -> each word's first sub-token's ``[B, W, K]`` over all the input's words:
    truncated words certain of label 0, positions past a row's words NaN."""
    labels = token.shape[-1]
    got = token.gather(1, starts.unsqueeze(-1).expand(-1, -1, labels)) if token.shape[0] else token[:, :0]
    return fill_words(got, kept, words)


def fill_words(scores: torch.Tensor, kept: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Scores of the kept words ``[B, W', K]`` (row ``b``'s first ``kept[b]`` valid) -> ``[B, W, K]`` over all
    the input's words (``W`` = the most words of a row): words cut by truncation certain of label 0 (logit 0, the
    others :data:`CUT_LOGIT`), positions past a row's words NaN."""
    rows, labels = scores.shape[0], scores.shape[-1]
    width = int(words.max()) if rows else 0
    out = torch.full((rows, width, labels), float("nan"), dtype=scores.dtype, device=scores.device)
    if width == 0:
        return out
    positions = torch.arange(scores.shape[1], device=scores.device)
    keep = positions[None, :] < kept[:, None]
    out[:, :scores.shape[1]][keep] = scores[keep]
    every = torch.arange(width, device=scores.device)[None, :]
    cut = (every >= kept[:, None]) & (every < words[:, None])
    if bool(cut.any()):
        certain = torch.full((labels,), CUT_LOGIT, dtype=scores.dtype, device=scores.device)
        certain[0] = 0.0
        out[cut] = certain
    return out


@dataclass
class TokenExitRunner(ExitRunner):
    """Drives a tagger with exits for the shared executor: pieces carry their word starts between stages."""

    def begin(self, stage: int, pieces: Sequence[Any]) -> TaggerState:
        if stage == 0:
            batch = to_device(collate(list(pieces), self.pad_id), self.device)
            return TaggerState(self.model.begin(batch), batch["word_starts"], batch["word_mask"].sum(dim=1),
                               batch["num_words"])
        starts = torch.nn.utils.rnn.pad_sequence([p[1] for p in pieces], batch_first=True)
        return TaggerState(self.model.pack([p[0] for p in pieces]), starts,
                           torch.tensor([p[2] for p in pieces], device=starts.device),
                           torch.tensor([p[3] for p in pieces], device=starts.device))

    def run(self, stage: int, state: TaggerState) -> tuple[TaggerState, torch.Tensor]:
        encoder = self.model.run_to(stage, state.encoder)
        state = TaggerState(encoder, state.starts, state.kept, state.words)
        return state, word_logits(self.model.exit_logits(stage, encoder), state.starts, state.kept, state.words)

    def unpack(self, stage: int, state: TaggerState, rows: Sequence[int]) -> list[tuple[Any, int]]:
        pieces = self.model.unpack(state.encoder, torch.tensor(list(rows), device=state.encoder.mask.device))
        kept, words = state.kept.tolist(), state.words.tolist()
        return [((encoder, state.starts[r, :kept[r]], kept[r], words[r]), length)
                for (encoder, length), r in zip(pieces, rows, strict=True)]


class TokenExitPredictor(EarlyExitPredictor):
    """A tagger whose sentences leave at the first exit sure of every word (see the module docstring)."""

    kind = "token_early_exit"

    def runner(self) -> TokenExitRunner:
        self.model.eval()
        return TokenExitRunner(self.model, self.featurizer.pad_id, device_of(self.model))

    def readout(self) -> TokenReadout:
        calibration = self.calibration
        if calibration is None:
            return TokenReadout("max_prob", [1.0] * self.num_stages, len(self.labels))
        return calibration.readout(len(self.labels))

    stage_logits = StagedBase.stage_logits  # through the executor: per stage, one [words, K] array per sentence

    @torch.inference_mode()
    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """The full tagger without exits (every layer, the last head only): one ``[words, K]`` array per row."""
        readout, device = self.readout(), device_of(self.model)
        out = readout.blank(len(items))
        self.model.eval()
        for idx in length_sorted_batches(items, batch_size):
            batch = to_device(collate([items[i] for i in idx], self.featurizer.pad_id), device)
            token = self.model.full_logits(batch)
            raw = word_logits(token, batch["word_starts"], batch["word_mask"].sum(dim=1), batch["num_words"])
            readout.store(out, np.asarray(idx), raw)
        return out

    def calibrate(self, data: TaskData, spec: CalibrationSpec | None = None, *, latency: bool = True,
                  batch_size: int = 64) -> Calibration:
        """Word-level temperatures, stage costs and the sentence-level threshold table on held-out ``data``."""
        spec = spec or CalibrationSpec()
        if not data.has_labels:
            raise ValueError(f"{data.source}: calibration needs gold tags (temperatures are fitted by NLL)")
        raws = self.stage_logits(data.examples, batch_size=batch_size, progress="calibration pass")
        gold = [np.asarray(ex["tags"], dtype=np.int64) for ex in data.examples]
        costs = self.measure_costs(data.examples, latency=latency or spec.cost_unit == "ms")
        calibration = fit_token_calibration(raws, gold, costs, spec, num_labels=len(self.labels), data=data.source)
        self.calibration = calibration
        return calibration
