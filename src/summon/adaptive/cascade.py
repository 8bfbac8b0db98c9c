"""Cascades that summon the teacher only when in doubt (Rawat et al. 2021, *When in Doubt, Summon the Titans*).

A cascade is a chain of separate models — e.g. bag of n-grams -> 2-layer transformer -> teacher — each a
stage of the staged core (:mod:`summon.adaptive.staged`): it answers the rows whose confidence score
reaches the threshold and defers the rest to the next stage. It runs on the shared executor: stage-major,
the deferred rows gathered into full batches for the next stage, each stage tokenising with its own
featurizer (the pieces handed on are the canonical examples themselves). Every prediction says which stage answered,
what it cost, and whether it is a fallback (a later stage was asked but did not answer, e.g. a remote
teacher timed out, so the last stage that did answer gave it).

Deferral scores are those of :mod:`summon.adaptive.scoring` (``max_prob``, ``margin``, ``entropy``,
``patience``, the learned ``defer`` output, a ``gate``, or ``learned``). ``learned``
(:mod:`summon.adaptive.learned`) generalises the ``gate``: a logistic model per stage of "this stage's answer is
the last stage's" (or the gold label), over this and the previous stage's calibrated scores, how many stages in a
row agree and the input length, fitted after training on the calibration's temperature rows. The ``defer``
output is another thing — a column the student was trained to emit — and stays as it is; ``gate`` too, so
cascades calibrated with either load and run unchanged. Thresholds, temperatures and costs come from
held-out data through the one calibration (:mod:`summon.adaptive.calibration`), exactly as for early exit.
The reference "full model" is the last stage alone: cost fractions are relative to it, and drops are
measured against its answers.

A saved cascade references its local stages by path and records each one's fingerprint
(:attr:`~summon.predictors.predictor.Predictor.fingerprint`): a stage replaced since (retrained, copied over) is refused on
load, since the cascade's costs, temperatures and thresholds were measured on the old one. A stage path that
leads back to the cascade's own folder or to another staged predictor is refused too (it would recurse).
Cascades saved before fingerprints were recorded load as they are.

An int8 cascade (:meth:`CascadePredictor.quantized`, ``summon quantize``) references the same fp32 stage folders
(fingerprints unchanged) and carries a ``quantization`` section: loading quantises every local stage's linear
layers again (on the CPU). A remote stage is left as it is served.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from summon.adaptive.cascade_stages import LocalStage, split_defer
from summon.adaptive.remote import RemoteStage
from summon.adaptive.staged import StagedBase
from summon.core.files import check_destination
from summon.core.version import __version__
from summon.measure.cost import count_parameters
from summon.measure.stage_costs import COST_BATCH, COST_ROWS, StageCosts, StageMeasurement, measure_costs
from summon.models.quantize import Quantization, manifest_quantization, quantized_device
from summon.predictors.huggingface import HF_PREFIX, load_plain
from summon.predictors.predictor import MANIFEST, int8_copy_manifest, quantize_loaded
from summon.predictors.saved import FORMAT, header_problems, read_json_manifest

logger = logging.getLogger(__name__)

CASCADE_FORMAT = "summon-cascade"


def example_length(example: dict[str, Any]) -> int:
    """Characters of a canonical example (words for tagging): sorts rows so batches pad little."""
    if "tokens" in example:
        return len(example["tokens"])
    return len(example.get("text") or "") + len(example.get("text_pair") or "")


@dataclass
class CascadeRunner:
    """Drives a cascade for :func:`~summon.adaptive.executor.execute`: each stage on its own inputs."""

    stages: Sequence[Any]
    stage_batch: int | None = None  # rows a local stage runs together (None: all it is given)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def length(self, example: dict[str, Any]) -> int:
        return example_length(example)

    def begin(self, stage: int, pieces: Sequence[Any]) -> list[Any]:
        return list(pieces)

    def run(self, stage: int, examples: list[Any]) -> tuple[list[Any], torch.Tensor]:
        return examples, torch.from_numpy(self.stages[stage].logits(examples, self.stage_batch or len(examples)))

    def unpack(self, stage: int, examples: list[Any], rows: Sequence[int]) -> list[tuple[Any, int]]:
        return [(examples[i], example_length(examples[i])) for i in rows]

    def follow(self, stage: int, examples: list[Any]) -> list[Any]:
        return examples

    def measure(self, stage: int, examples: Sequence[Any], *, latency: bool = True,
                **rule: Any) -> StageMeasurement | None:
        """What a stage that measures itself (remote) reports; None for a local stage (counted and timed here)."""
        own = getattr(self.stages[stage], "measure", None)
        return None if own is None else own(examples, latency=latency, **rule)


class CascadePredictor(StagedBase):
    """A chain of stages with one run-time knob; build it from stages or load it from a cascade directory."""

    kind = "cascade"
    reports_fallback = True  # a remote stage may time out: say which answers came from an earlier stage

    def __init__(self, stages: Sequence[Any], task: str, labels: Sequence[str], manifest: dict | None = None,
                 path: Path | None = None):
        if len(stages) < 2:
            raise ValueError("a cascade needs at least two stages (e.g. a student and its teacher)")
        for stage in stages:
            if list(stage.labels) != list(labels):
                raise ValueError(f"stage '{stage.name}' predicts {stage.labels}, the cascade {list(labels)}")
        self.stages = list(stages)
        self.task, self.labels = task, list(labels)
        self.manifest = manifest or {}
        self.path = path

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def num_parameters(self) -> int:
        """Parameters of the local stages (a remote stage's are not known here)."""
        return sum(count_parameters(s.predictor.model) for s in self.stages if isinstance(s, LocalStage))

    @property
    def device(self) -> torch.device:
        """The device of the first local stage (the CPU when every stage is remote)."""
        local = [s for s in self.stages if isinstance(s, LocalStage)]
        return local[0].predictor.device if local else torch.device("cpu")

    def runner(self) -> CascadeRunner:
        return CascadeRunner(self.stages)

    def inputs(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return list(examples)

    def run_full(self, items: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """The last stage alone on every row (the reference model): class logits ``[N, K]``."""
        classes, _ = split_defer(self.stages[-1].logits(list(items), batch_size), len(self.labels))
        return classes

    def measure_costs(self, examples: Sequence[dict[str, Any]], *, latency: bool = True) -> StageCosts:
        """Cumulative cost of answering at each stage (every earlier stage ran too), relative to the last stage
        alone (:func:`~summon.measure.stage_costs.measure_costs`). Every stage is handed the counted examples at
        once and batches them as it runs: by its own token lengths, 32 a batch; a remote stage reports its own
        costs."""
        return measure_costs(CascadeRunner(self.stages, stage_batch=COST_BATCH), examples, inputs=self.inputs,
                             reference=-1, separate_models=True, latency=latency, device=self.device,
                             batch_size=COST_ROWS)

    def quantized(self, quantization: Quantization | None = None) -> CascadePredictor:
        """An int8 copy: every local stage's linear layers dynamic int8 (on the CPU), a remote stage left as it is
        (a warning names it: quantise that model where it is served), and no calibration (the fp32 one is never
        carried over: calibrate the copy). This cascade is left as it is.

        Saved, the copy references the same stage folders (fp32 weights, fingerprints unchanged) with a
        ``quantization`` section; loading quantises the local stages again.

        Raises:
            ValueError: If this cascade is int8 already.
        """
        spec, manifest = int8_copy_manifest(self, "cascade", quantization)
        stages = [_quantized_stage(i, stage, spec) for i, stage in enumerate(self.stages)]
        return CascadePredictor(stages, self.task, self.labels, manifest)

    def save(self, directory: str | Path) -> Path:
        """Write the cascade manifest; local stages are referenced by path (relative when inside ``directory``) with
        their fingerprints, so a stage replaced later is refused on load.

        ``directory`` follows the one rule of :func:`~summon.core.files.check_destination` (a new or empty folder,
        not a stage's folder, nor inside or holding one); the cascade's own folder (:attr:`path`) is the exception:
        saving there again rewrites its manifest, keeping the calibration it replaces.
        """
        directory = Path(directory)
        if self.path is None or Path(self.path).resolve() != directory.resolve():
            check_destination(directory, what="the cascade", option="folder for the cascade",
                              sources=stage_folders(self.stages))
        directory.mkdir(parents=True, exist_ok=True)
        stages = [_stage_entry(stage, directory) for stage in self.stages]
        manifest = {**{k: v for k, v in self.manifest.items() if k not in ("stages",)},
                    "format": CASCADE_FORMAT, "format_version": 1, "summon_version": __version__,
                    "task": self.task, "labels": self.labels, "stages": stages,
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        previous = (read_json_manifest(directory) or {}).get("adaptive")
        if previous and previous != manifest.get("adaptive"):
            manifest["adaptive_previous"] = previous  # never drop a calibration without keeping it
            logger.warning("%s held a calibration; it is kept under 'adaptive_previous'", directory)
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, directory / MANIFEST)
        self.manifest, self.path = manifest, directory
        return directory


def _quantized_stage(index: int, stage: Any, quantization: Quantization) -> Any:
    """An int8 copy of a local stage; a remote stage, or a stage int8 already, as it is."""
    if not isinstance(stage, LocalStage):
        logger.warning("cascade stage %d ('%s') is remote (%s): left as it is; quantize that model where it is served",
                       index, stage.name, getattr(stage, "url", "elsewhere"))
        return stage
    if stage.predictor.quantization is not None:
        logger.info("cascade stage %d ('%s') is int8 already", index, stage.name)
        return stage
    return LocalStage(stage.name, stage.predictor.quantized(quantization), stage.path)


def stage_folders(stages: Sequence[Any]) -> dict[Path, str]:
    """The local stages' folders (hub ids and remote stages left out), each described for a refusal."""
    return {Path(stage.path): f"the folder of stage '{stage.name}'" for stage in stages
            if isinstance(stage, LocalStage) and stage.path and not str(stage.path).startswith(HF_PREFIX)}


def _stage_entry(stage: Any, directory: Path) -> dict[str, Any]:
    entry = stage.describe()
    if entry.get("type") != "local":
        return entry
    if not entry.get("path"):
        raise ValueError(f"stage '{stage.name}' was built in memory: save it (Predictor.save) and build the "
                         "cascade from its directory")
    if not entry["path"].startswith(HF_PREFIX):  # a hub id stays as given
        entry["path"] = os.path.relpath(Path(entry["path"]).resolve(), directory.resolve())
    entry["fingerprint"] = stage.predictor.fingerprint  # checked on load: a replaced stage is refused
    return entry


def load_cascade(directory: Path, manifest: dict[str, Any], *, device: Any = None,
                 stages: Mapping[int, Any] | None = None) -> CascadePredictor:
    """A cascade from its manifest: local stages loaded from their (relative) paths onto ``device``.

    ``stages`` (index -> stage) are used instead of loading those entries: a transport that runs a stage
    elsewhere (a teacher in its own Ray Serve deployment) gives the stage that reaches it, and that stage's
    weights are never loaded here. Negative indices count from the end.

    Raises:
        ValueError: If the manifest lacks its task, labels or stages; a stage path leads back to this cascade
            or to another staged predictor; or a local stage's fingerprint differs from the one saved.
    """
    entries = _checked_entries(directory, manifest)
    given = {i % len(entries): stage for i, stage in (stages or {}).items()}
    loaded = [given[i] if i in given else load_stage(directory, manifest, i, device=device)
              for i in range(len(entries))]
    return CascadePredictor(loaded, manifest["task"], manifest["labels"], manifest, path=directory)


def load_stage(directory: Path, manifest: dict[str, Any], index: int, *, device: Any = None) -> Any:
    """Stage ``index`` of a saved cascade alone (negative: from the end), checked as :func:`load_cascade` checks
    it (a local stage's fingerprint): a :class:`LocalStage` or a :class:`RemoteStage`."""
    entries = _checked_entries(directory, manifest)
    if not -len(entries) <= index < len(entries):
        raise ValueError(f"{directory / MANIFEST}: no stage {index}; the cascade has {len(entries)} stages")
    index %= len(entries)
    entry = entries[index]
    if entry.get("type") == "local":
        return _load_local_stage(directory, index, entry, manifest, device)
    if entry.get("type") == "remote":
        return RemoteStage.from_dict(entry)
    raise ValueError(f"{directory / MANIFEST}: stage {index} has unknown type {entry.get('type')!r}")


def _checked_entries(directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    manifest_quantization(manifest, directory / MANIFEST)  # a bad section is refused before any stage loads
    problems = header_problems(manifest)
    entries = manifest.get("stages")
    if not isinstance(entries, list) or len(entries) < 2 or not all(isinstance(e, dict) for e in entries):
        problems.append("'stages' must list at least two stage entries")
    if problems:
        raise ValueError(f"{directory / MANIFEST}: {'; '.join(problems)}. Rebuild the cascade "
                         "(summon cascade STAGE... --out DIR)")
    return entries


def _load_local_stage(directory: Path, i: int, entry: dict[str, Any], manifest: dict[str, Any],
                      device: Any) -> LocalStage:
    """Stage ``i`` loaded from its path, and refused when it is not the model the cascade was saved with; int8
    (on the CPU) when the cascade's manifest says so."""
    name = entry.get("name") or f"stage{i}"
    source = _stage_source(directory, i, name, entry)
    quantization = manifest_quantization(manifest, directory / MANIFEST)
    if quantization is not None:
        device = quantized_device(device, directory / MANIFEST)
    predictor = load_plain(source, device=device, task=manifest["task"], labels=manifest["labels"])
    expected = entry.get("fingerprint")
    if expected and predictor.fingerprint != expected:
        raise ValueError(f"{directory / MANIFEST}: stage {i} ('{name}', {source}) is not the model this cascade was "
                         "saved with (its fingerprint differs): the cascade's costs, temperatures and thresholds "
                         "belong to the old one. Rebuild the cascade from its stages (summon cascade ... --out) and "
                         "recalibrate it (summon calibrate)")
    if quantization is not None and predictor.quantization is None:
        predictor = quantize_loaded(predictor, quantization)
    return LocalStage(name, predictor, str(source))


def _stage_source(directory: Path, i: int, name: str, entry: dict[str, Any]) -> str | Path:
    """Where stage ``i`` lives: a hub id, or a folder that is neither this cascade nor another staged predictor."""
    where = directory / MANIFEST
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: stage {i} ('{name}') has no 'path'. Rebuild the cascade")
    if path.startswith(HF_PREFIX):
        return path
    try:
        source = (directory / path).resolve()
        itself = source == directory.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ValueError(f"{where}: stage {i} ('{name}') path {path!r} cannot be resolved ({err})") from None
    if itself:
        raise ValueError(f"{where}: stage {i} ('{name}') points to the cascade's own folder: a cascade cannot be its "
                         "own stage (loading it would recurse). Point the stage at a plain predictor folder, or "
                         "rebuild the cascade")
    fmt = str((read_json_manifest(source) or {}).get("format", "")) if source.is_dir() else ""
    if fmt.startswith("summon-") and fmt != FORMAT:
        raise ValueError(f"{where}: stage {i} ('{name}') at {source} is a {fmt!r}, not a plain predictor: a cascade "
                         "inside a cascade would nest or loop back. Point the stage at a plain predictor folder, or "
                         "rebuild the cascade")
    return source


def build_cascade(stage_specs: Sequence[str], *, timeout: float = 10.0, device: Any = None) -> CascadePredictor:
    """Stages from predictor directories or ``http(s)://`` URLs of logits servers, cheapest first."""
    stages = []
    for i, spec in enumerate(stage_specs):
        name = f"stage{i}"
        if spec.startswith(("http://", "https://")):
            stages.append(RemoteStage.connect(spec, name=name, timeout=timeout))
            continue
        manifest = read_json_manifest(Path(spec)) or {}
        if manifest.get("architecture", {}).get("type") == "exits":
            raise ValueError(f"{spec} has exits; a cascade stage is a plain predictor (a summon predictor folder, a "
                             "Hugging Face classifier folder or hf:ID) or a logits-server URL")
        labels = stages[0].labels if stages else None
        predictor = load_plain(spec, device=device, labels=labels)
        where = spec if spec.startswith(HF_PREFIX) else str(Path(spec).resolve())
        stages.append(LocalStage(name, predictor, where))
    first = stages[0]
    task = first.predictor.task if isinstance(first, LocalStage) else first.task
    return CascadePredictor(stages, task, first.labels)
