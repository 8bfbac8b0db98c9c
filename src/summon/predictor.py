"""Predictors: a trained model with its featurizer and labels, and what it returns per input.

``Predictor.predict(texts)`` returns labels and probabilities; a tagger (softmax or CRF) returns tags per
word and entity spans with character offsets (raw text is split into words by
:func:`summon.data.words.split_words`). :func:`load_predictor` reads a plain saved predictor (see
:mod:`summon.saved`); ``summon.load`` dispatches every kind, staged ones included.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from summon.data.words import entity_spans, split_words
from summon.inference import predict_logits, softmax
from summon.measure.device import device_of, resolve_device
from summon.models.build import model_from_architecture
from summon.saved import (
    MANAGED,
    MANIFEST,
    WEIGHTS,
    check_file,
    load_featurizer,
    load_weights,
    read_manifest,
    save_predictor,
)

__all__ = ["MANIFEST", "WEIGHTS", "Prediction", "Predictor", "as_batch", "canonical_inputs", "load_predictor"]


@dataclass
class Prediction:
    """One input's prediction.

    For sequence tasks ``label``/``label_id``/``probs`` describe the input; for tagging ``tags`` holds one
    label per word and ``spans`` the entities with character offsets into the input text.
    """

    label: str | None = None
    label_id: int | None = None
    probs: list[float] | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    spans: list[dict[str, Any]] = field(default_factory=list)
    stage: int | None = None  # adaptive predictors: the stage (exit) that answered, 0-based
    cost: float | None = None  # adaptive predictors: cost of this answer as a fraction of the full model
    fallback: bool | None = None  # cascades: a later stage was asked but did not answer

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


class Predictor:
    """A trained model with its featurizer, labels and manifest."""

    def __init__(self, model: nn.Module, featurizer: Any, task: str, labels: list[str],
                 manifest: dict[str, Any] | None = None, path: Path | None = None):
        self.model = model.eval()
        self.featurizer = featurizer
        self.task = task
        self.labels = list(labels)
        self.manifest = manifest or {}
        self.path = path

    @property
    def device(self) -> torch.device:
        """Where the model runs (see :meth:`to`)."""
        return device_of(self.model)

    def to(self, device: str | torch.device | None) -> Predictor:
        """Move the model to ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``); returns self."""
        self.model.to(resolve_device(device))
        return self

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (from the manifest) identifying this predictor in caches.

        A loaded Hugging Face model's manifest carries its own (over its config and weight files); otherwise
        the saved weights' sha256, else a hash of the weights in memory.
        """
        if self.manifest.get("fingerprint"):
            return str(self.manifest["fingerprint"])
        files = self.manifest.get("files", {})
        if WEIGHTS in files:
            return files[WEIGHTS]["sha256"]
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def examples_from_inputs(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        """Canonical examples from raw inputs: strings, (text, pair) tuples, or word lists for tagging."""
        return canonical_inputs(self.task, inputs)

    @property
    def defer_output(self) -> bool:
        """Whether the model has a learned "defer" output after its class logits (easy-example students)."""
        return bool(self.manifest.get("architecture", {}).get("defer_output", False))

    def logits(self, examples: Sequence[dict[str, Any]], *, batch_size: int = 64, progress: bool | str = False,
               raw: bool = False):
        """Logits per canonical example ([C], or [num_words, C] for tagging); ``raw`` keeps a defer column."""
        features = self.featurizer.encode(examples, self.task)
        rows = predict_logits(self.model, features, self.task, pad_id=self.featurizer.pad_id,
                              batch_size=batch_size, progress=progress)
        if self.defer_output and not raw:
            rows = [row[..., : len(self.labels)] for row in rows]
        return rows

    def predict(self, inputs: Sequence[Any], *, batch_size: int = 64) -> list[Prediction]:
        """Predict labels and probabilities for raw inputs (see :meth:`examples_from_inputs`)."""
        inputs = as_batch(inputs)
        examples = self.examples_from_inputs(inputs)
        rows = self.logits(examples, batch_size=batch_size)
        if self.task == "token_classification":
            return [self._tagging(item, ex, row) for item, ex, row in zip(inputs, examples, rows, strict=True)]
        out = []
        for row in rows:
            probs = softmax(row)
            k = int(probs.argmax())
            out.append(Prediction(label=self.labels[k], label_id=k, probs=[float(p) for p in probs]))
        return out

    def iter_predict(self, inputs: Iterable[Any], *, batch_size: int = 64, window: int = 1024) -> Iterator[Prediction]:
        """Predictions for an input stream (a file larger than memory), ``window`` rows at a time."""
        iterator = iter(inputs)
        while chunk := list(itertools.islice(iterator, window)):
            yield from self.predict(chunk, batch_size=batch_size)

    def _tagging(self, item: Any, ex: dict[str, Any], row: np.ndarray) -> Prediction:
        tags = [self.labels[k] for k in row.argmax(axis=-1)]
        text = item if isinstance(item, str) else " ".join(ex["tokens"])
        return Prediction(tokens=ex["tokens"], tags=tags, spans=entity_spans(text, ex["tokens"], tags))

    def save(self, directory: str | Path, *, architecture: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write this predictor to ``directory`` (see :func:`save_predictor`)."""
        arch = architecture or self.manifest.get("architecture")
        if arch is None:
            raise ValueError("saving needs the model's architecture dict (from build_model)")
        keep = {k: v for k, v in self.manifest.items() if k not in MANAGED}
        return save_predictor(directory, self.model, self.featurizer, self.task, self.labels, arch,
                              extra={**keep, **(extra or {})})


def canonical_inputs(task: str, inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Canonical examples from raw inputs: strings, (text, pair) tuples, or word lists for tagging."""
    examples = []
    for i, item in enumerate(as_batch(inputs)):
        if task == "token_classification":
            tokens = split_words(item) if isinstance(item, str) else list(item)
            if not tokens:
                raise ValueError(f"input {i} is empty; give text to tag")
            examples.append({"tokens": tokens})
        elif task == "pair_classification":
            if isinstance(item, str) or not (isinstance(item, Sequence) and len(item) == 2
                                             and all(isinstance(t, str) for t in item)):
                raise ValueError(f"input {i}: a pair task needs (text, text_pair) tuples, got {item!r:.60}")
            examples.append({"text": item[0], "text_pair": item[1]})
        else:
            if not isinstance(item, str):
                raise ValueError(f"input {i}: expected a string, got {type(item).__name__}")
            examples.append({"text": item})
    return examples


def as_batch(inputs: Any) -> list[Any]:
    """One input (a string or a (text, pair) tuple) becomes a batch of one; a list stays as it is."""
    return [inputs] if isinstance(inputs, str | tuple) else list(inputs)


def load_predictor(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Predictor:
    """Load a plain saved predictor directory (weights checked against the manifest) onto ``device``."""
    directory = Path(path)
    manifest = read_manifest(directory)
    for name, expected in manifest.get("files", {}).items():
        check_file(directory, name, expected)
    model = model_from_architecture(manifest["architecture"])
    load_weights(model, directory / WEIGHTS)
    featurizer = load_featurizer(directory, manifest["featurizer"])
    model.to(resolve_device(device))
    return Predictor(model, featurizer, manifest["task"], manifest["labels"], manifest, path=directory)
