"""Early exit as a staged predictor (The Right Tool for the Job, Schwartz et al. 2020).

A model with classifier exits (:class:`~summon.models.exits.MultiExitClassifier`) is a chain of stages: stage
``k`` runs the encoder layers up to exit ``k`` and reads that exit's head. ``summon.load(path)`` returns an
:class:`EarlyExitPredictor`; after calibration (``summon calibrate``), ``predict(texts, budget=0.4)``,
``max_drop=0.01``, ``guaranteed=0.01`` or ``threshold=0.9`` move the operating point at run time, with no
retraining, and each prediction says which exit answered and what it cost.

The executor hands rows between stages as their unpadded hidden states, regrouped into full batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from summon.adaptive.staged import StagedBase
from summon.data.batching import length_sorted_batches, to_device
from summon.data.features import collate
from summon.measure.cost import count_parameters
from summon.measure.device import device_of
from summon.measure.stage_costs import StageCosts, measure_costs
from summon.models.inference import predict_logits
from summon.predictors.predictor import Predictor


@dataclass
class ExitRunner:
    """Drives a model with exits for :func:`~summon.adaptive.executor.execute`."""

    model: Any
    pad_id: int
    device: torch.device

    @property
    def num_stages(self) -> int:
        return self.model.num_stages

    def length(self, feature: dict[str, Any]) -> int:
        return len(feature["input_ids"])

    def begin(self, stage: int, pieces: Sequence[Any]) -> Any:
        if stage == 0:
            return self.model.begin(to_device(collate(list(pieces), self.pad_id), self.device))
        return self.model.pack(pieces)

    def run(self, stage: int, state: Any) -> tuple[Any, torch.Tensor]:
        state = self.model.run_to(stage, state)
        return state, self.model.exit_logits(stage, state)

    def unpack(self, stage: int, state: Any, rows: Sequence[int]) -> list[tuple[Any, int]]:
        return self.model.unpack(state, torch.tensor(list(rows), device=state.mask.device))

    def follow(self, stage: int, state: Any) -> Any:
        """A batch that goes on whole continues from its hidden states as they are."""
        return state


class EarlyExitPredictor(StagedBase, Predictor):
    """A :class:`~summon.predictors.predictor.Predictor` whose model answers in stages, one per exit."""

    kind = "early_exit"

    @property
    def num_stages(self) -> int:
        return self.model.num_stages

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def runner(self) -> ExitRunner:
        self.model.eval()
        return ExitRunner(self.model, self.featurizer.pad_id, device_of(self.model))

    def inputs(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return self.featurizer.encode(list(examples), self.task)

    def stage_logits(self, examples: Sequence[dict[str, Any]], *, batch_size: int = 64,
                     progress: bool | str = False) -> list[np.ndarray]:
        """Every exit's raw logits at full depth, ``[N, C]`` per exit, from the model's own forward."""
        rows = predict_logits(self.model, self.inputs(examples), self.task, pad_id=self.featurizer.pad_id,
                              batch_size=batch_size, progress=progress)
        stacked = np.stack(rows) if rows else np.zeros((0, self.num_stages, len(self.labels)), np.float32)
        return [stacked[:, k] for k in range(self.num_stages)]

    @torch.inference_mode()
    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """The full model without exits (every layer, last head only), in length-sorted batches."""
        device = device_of(self.model)
        out = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        self.model.eval()
        for idx in length_sorted_batches(items, batch_size):
            batch = to_device(collate([items[i] for i in idx], self.featurizer.pad_id), device)
            out[idx] = self.model.full_logits(batch).float().cpu().numpy()
        return out

    def measure_costs(self, examples: Sequence[dict[str, Any]], *, latency: bool = True) -> StageCosts:
        """Cost of answering at each exit (:func:`~summon.measure.stage_costs.measure_costs`); the reference is the
        model without exits, every layer and only the last head (:meth:`run_full`)."""
        return measure_costs(self.runner(), examples, inputs=self.inputs, reference=self._reference, latency=latency,
                             device=device_of(self.model))

    def _reference(self, items: Sequence[Any]) -> np.ndarray:
        return self.run_full(items, batch_size=len(items))

