"""A progressive ensemble (B-DISTIL, reconstructed) as an anytime staged predictor.

Stage ``k`` is the first ``k + 1`` members: it runs member ``k`` (with member ``k−1``'s last hidden layer when the
member is composed) and answers with the running sum ``F_k = Σ_{t≤k} α_t · h_t``, ``h_t`` the member's bounded
output (:func:`summon.losses.bounded`). The executor hands each
row on as its example, its running sum and its last hidden layer, so no member runs twice; rows regroup into
full batches between members like every staged kind. Calibration, the knob, ``summon eval`` and saving are the
staged core's; ``predict(texts, deadline_ms=...)`` stops at the last prefix whose measured latency fits.

The reference "full model" is the whole ensemble: cost fractions are relative to it.
Build one with ``summon train`` on a ``progressive`` recipe (:mod:`summon.training.progressive`).

An int8 ensemble (:meth:`ProgressivePredictor.quantized`, ``summon quantize``) holds its members' fp32 folders and
a ``quantization`` section in its manifest: loading quantises every member's linear layers again (on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from summon.adaptive.cascade import example_length
from summon.adaptive.executor import execute
from summon.adaptive.scoring import Readout
from summon.adaptive.staged import StagedBase
from summon.losses import OUTPUTS, bounded
from summon.measure.cost import count_parameters
from summon.measure.stage_costs import StageCosts, measure_costs
from summon.models.member import hidden_width, member_batch, member_forward
from summon.models.quantize import Quantization, manifest_quantization, quantized_device
from summon.predictors.predictor import Predictor, int8_copy_manifest, load_predictor, quantize_loaded
from summon.predictors.saved import ENSEMBLE_FORMAT, MANIFEST, read_json_manifest, save_ensemble

COST_BATCH = 64  # rows per batch when counting FLOPs (the executor's default batch)


@dataclass
class Member:
    """One member: its predictor (model and featurizer), its step and whether it reads its predecessor."""

    predictor: Predictor
    alpha: float
    composed: bool
    name: str = ""
    output: str = "tanh"  # how its raw outputs are bounded (ensembles saved before the option: tanh)


@dataclass
class _Piece:
    """A row between stages: its example, the running sum of the members' outputs and the last hidden layer."""

    example: dict[str, Any]
    total: torch.Tensor
    hidden: torch.Tensor


@dataclass
class ProgressiveRunner:
    """Drives an ensemble for :func:`~summon.adaptive.executor.execute` (stage-0 pieces are the examples)."""

    members: Sequence[Member]
    task: str

    @property
    def num_stages(self) -> int:
        return len(self.members)

    def length(self, item: Any) -> int:
        return example_length(item.example if isinstance(item, _Piece) else item)

    def begin(self, stage: int, pieces: Sequence[Any]) -> tuple[list[dict], dict[str, torch.Tensor], Any]:
        member = self.members[stage]
        device = member.predictor.device
        if stage == 0:
            examples, totals, previous = list(pieces), None, None
        else:
            examples = [p.example for p in pieces]
            totals = torch.stack([p.total for p in pieces]).to(device)
            previous = torch.stack([p.hidden for p in pieces]) if member.composed else None
        return examples, member_batch(member.predictor.featurizer, self.task, examples, previous, device), totals

    def run(self, stage: int, state: Any) -> tuple[Any, torch.Tensor]:
        examples, batch, totals = state
        member = self.members[stage]
        member.predictor.model.eval()
        logits, hidden = member_forward(member.predictor.model, batch)
        step = member.alpha * bounded(logits.float(), member.output)
        total = step if totals is None else totals + step
        return (examples, total, hidden), total

    def unpack(self, stage: int, state: Any, rows: Sequence[int]) -> list[tuple[Any, int]]:
        examples, total, hidden = state
        return [(_Piece(examples[i], total[i], hidden[i]), example_length(examples[i])) for i in rows]


class ProgressivePredictor(StagedBase):
    """An anytime ensemble: answer after any prefix of members, by the knob or a deadline."""

    kind = "progressive"

    def __init__(self, members: Sequence[Member], task: str, labels: Sequence[str], manifest: dict | None = None,
                 path: Path | None = None):
        if not members:
            raise ValueError("a progressive ensemble needs at least one member")
        for k, member in enumerate(members):
            if list(member.predictor.labels) != list(labels):
                raise ValueError(f"member {k} predicts {member.predictor.labels}, the ensemble {list(labels)}")
            if k == 0 and member.composed:
                raise ValueError("member 0 cannot read a previous member's hidden layer")
        self.members = list(members)
        self.task, self.labels = task, list(labels)
        self.manifest = manifest or {}
        self.path = path

    @property
    def num_stages(self) -> int:
        return len(self.members)

    def num_parameters(self) -> int:
        return sum(count_parameters(m.predictor.model) for m in self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].predictor.device

    def to(self, device: Any) -> ProgressivePredictor:
        for member in self.members:
            member.predictor.to(device)
        return self

    def runner(self) -> ProgressiveRunner:
        return ProgressiveRunner(self.members, self.task)

    def inputs(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return list(examples)

    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """Every member on every row: the full ensemble's logits ``[N, K]``."""
        plain = Readout("max_prob", [1.0] * self.num_stages, len(self.labels))
        return execute(self.runner(), items, plain, np.inf, batch_size=batch_size).logits

    def measure_costs(self, examples: Sequence[dict[str, Any]], *, latency: bool = True) -> StageCosts:
        """Cost of answering after each member (:func:`~summon.measure.stage_costs.measure_costs`, FLOPs counted
        in batches of 64 as the executor runs them); the reference is the whole ensemble."""
        return measure_costs(self.runner(), examples, inputs=self.inputs, separate_models=True, latency=latency,
                             device=self.device, batch_size=COST_BATCH)

    def quantized(self, quantization: Quantization | None = None) -> ProgressivePredictor:
        """An int8 copy: every member's linear layers dynamic int8 (on the CPU), with no calibration (the fp32 one
        is never carried over: calibrate the copy). This ensemble is left as it is.

        Each member keeps its ``path`` (its fp32 folder), so saving copies those folders as they are and writes a
        ``quantization`` section that has loading quantise them again.

        Raises:
            ValueError: If this ensemble is int8 already.
        """
        spec, manifest = int8_copy_manifest(self, "ensemble", quantization)
        members = []
        for member in self.members:
            predictor = member.predictor
            if predictor.quantization is None:
                predictor = predictor.quantized(spec)
                predictor.path = member.predictor.path  # its fp32 folder: what save() copies
            members.append(Member(predictor, member.alpha, member.composed, member.name, member.output))
        return ProgressivePredictor(members, self.task, self.labels, manifest)

    def save(self, directory: str | Path) -> Path:
        """Write the ensemble (members copied under ``members/<k>/``) with its calibration, if any."""
        if any(m.predictor.path is None for m in self.members):
            raise ValueError("a member was built in memory: save each member (Predictor.save) first")
        keep = {k: v for k, v in self.manifest.items() if k not in ("members", "format", "format_version",
                                                                    "summon_version", "task", "labels", "created")}
        entries = [(m.predictor.path, {"name": m.name, "alpha": m.alpha, "composed": m.composed, "output": m.output,
                                       "hidden_width": hidden_width(m.predictor.model)}) for m in self.members]
        path = save_ensemble(directory, entries, self.task, self.labels, extra=keep)
        loaded = load_progressive(path, read_json_manifest(path) or {})
        self.members, self.manifest, self.path = loaded.members, loaded.manifest, path
        return path


def load_progressive(directory: Path, manifest: dict[str, Any], *, device: Any = None) -> ProgressivePredictor:
    """An ensemble from its folder: each member loaded (files checked) and matched to the manifest's hash; int8
    (on the CPU) when the manifest has a ``quantization`` section."""
    where = directory / MANIFEST
    entries = manifest.get("members")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: 'members' must list at least one member folder; re-save the ensemble")
    quantization = manifest_quantization(manifest, where)
    if quantization is not None:
        device = quantized_device(device, where)
    members = []
    for k, entry in enumerate(entries):
        folder = directory / str(entry.get("path", f"members/{k}"))
        predictor = load_predictor(folder, device=device)
        if quantization is not None and predictor.quantization is None:
            predictor = quantize_loaded(predictor, quantization)
        weights = predictor.manifest.get("files", {}).get("model.safetensors", {}).get("sha256")
        if entry.get("sha256") and weights != entry["sha256"]:
            raise ValueError(f"{folder}: its weights are not the member {k} this ensemble was saved with (sha256 "
                             "differs from manifest.json); copy the whole ensemble folder again")
        output = entry.get("output", "tanh")
        if output not in OUTPUTS:
            raise ValueError(f"{where}: member {k} has output {output!r}; expected one of {', '.join(OUTPUTS)}")
        members.append(Member(predictor, float(entry["alpha"]), bool(entry.get("composed")), entry.get("name", ""),
                              output))
    for k, member in enumerate(members):
        arch = member.predictor.manifest.get("architecture", {})
        if (arch.get("type") == "composed") != member.composed:
            raise ValueError(f"{where}: member {k} is {'' if member.composed else 'not '}marked composed but its "
                             f"model is {'not ' if member.composed else ''}a composed one; re-save the ensemble")
        if k == 0 or not member.composed:
            continue
        width = hidden_width(members[k - 1].predictor.model)
        if arch.get("previous_width") != width:
            raise ValueError(f"{where}: member {k} reads a hidden layer of width {arch.get('previous_width')} but "
                             f"member {k - 1} hands on {width}")
    return ProgressivePredictor(members, manifest["task"], manifest["labels"], manifest, path=directory)


def is_progressive(manifest: dict[str, Any]) -> bool:
    return manifest.get("format") == ENSEMBLE_FORMAT
