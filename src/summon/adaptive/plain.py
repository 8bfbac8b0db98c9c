"""The plain predictor as a staged kind: one stage, the whole model.

A fine-tuned teacher, an n-gram student or a Hugging Face classifier is a staged predictor with one stage, so
every layer above the kinds registry (evaluation, serving, the command line, ``summon auto``) runs it through
the same executor, read-out, predictions, cost measurement and report as early exit or a cascade, and asks no
"plain or staged?" question. What a single stage leaves out is decided in the shared core: a knob has nothing
to choose between (refused in :mod:`summon.adaptive.knob`), calibration has no threshold to fit (refused in
:meth:`~summon.adaptive.staged.StagedBase.calibrate`), and answering at the only stage costs the whole model
(cost fraction 1).

A model with a learned "defer" output (an easy-example student) answers with its class logits: the defer column
is a cascade's business (:mod:`summon.adaptive.cascade` reads it through :meth:`Predictor.logits`).
Taggers answer ``[words, K]`` per sentence through the token read-out, a CRF tagger with its Viterbi path as
one-hot rows (:meth:`~summon.models.tagger.CRFTagger.word_scores`); words cut by truncation are tagged with label 0,
as the early-exit tagger tags them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from summon.adaptive.scoring import Readout, TokenReadout
from summon.adaptive.staged import StagedBase
from summon.adaptive.token_exit import fill_words, word_logits
from summon.measure.cost import count_parameters
from summon.measure.device import device_of
from summon.measure.profile import ModelRunner
from summon.measure.stage_costs import StageCosts, measure_costs
from summon.predictors.predictor import Predictor

TAGGING = "token_classification"


@dataclass
class PlainRunner(ModelRunner):
    """Drives a whole model as one stage for :func:`~summon.adaptive.executor.execute`: the bare model's runner
    (collate, move to the device, forward) with the predictor's read-out."""

    task: str
    num_labels: int

    def run(self, stage: int, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The model's answer for a batch: class logits ``[B, K]`` (a defer column dropped), or for a tagger
        word logits ``[B, W, K]`` (NaN past each row's words)."""
        batch, logits = super().run(stage, batch)
        if self.task != TAGGING:
            return batch, logits[..., : self.num_labels]
        kept, words = batch["word_mask"].sum(dim=1), batch["num_words"]
        if hasattr(self.model, "word_scores"):  # a CRF: the decoded path, one-hot per kept word
            return batch, fill_words(self.model.word_scores(batch, logits), kept, words)
        return batch, word_logits(logits, batch["word_starts"], kept, words)


class PlainPredictor(StagedBase, Predictor):
    """A :class:`~summon.predictors.predictor.Predictor` seen as a staged predictor with one stage (the module docstring)."""

    kind = "plain"

    @classmethod
    def of(cls, predictor: Predictor) -> PlainPredictor:
        """The same model, featurizer, labels, manifest and path as a one-stage kind (nothing is copied)."""
        if isinstance(predictor, cls):
            return predictor
        return cls(predictor.model, predictor.featurizer, predictor.task, predictor.labels, predictor.manifest,
                   path=predictor.path, float_model=predictor.float_model)

    @property
    def num_stages(self) -> int:
        return 1

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def runner(self) -> PlainRunner:
        self.model.eval()
        return PlainRunner(self.model, self.featurizer.pad_id, device_of(self.model), self.task, len(self.labels))

    def readout(self) -> Readout:
        cls = TokenReadout if self.task == TAGGING else Readout
        return cls("max_prob", [1.0], len(self.labels))

    def inputs(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return self.featurizer.encode(list(examples), self.task)

    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """The model on every row: ``[N, K]`` logits (taggers: one ``[words, K]`` array per row)."""
        return self.run(items, np.inf, batch_size=batch_size).logits

    def reference_logits(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        """The model's raw logits, a defer column included (what a cascade reads from a remote stage)."""
        return self.logits(examples, raw=True)

    def measure_costs(self, examples: Sequence[dict[str, Any]], *, latency: bool = True) -> StageCosts:
        """Cost of the one stage (:func:`~summon.measure.stage_costs.measure_costs`); the reference is the model
        itself."""
        return measure_costs(self.runner(), examples, inputs=self.inputs, latency=latency, device=device_of(self.model))
