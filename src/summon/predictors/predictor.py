"""Predictors: a trained model with its featurizer and labels, and what it returns per input.

``Predictor.predict(texts)`` returns labels and probabilities; a tagger (softmax or CRF) returns tags per
word and entity spans with character offsets (raw text is split into words by
:func:`summon.data.words.split_words`). :func:`load_predictor` reads a plain saved predictor (see
:mod:`summon.predictors.saved`); ``summon.load`` dispatches every kind, staged ones included.
``Predictor.quantized()`` gives an int8 copy (:mod:`summon.models.quantize`), saved with its fp32 weights.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from summon.core.text import check_unicode
from summon.data.words import entity_spans, split_words
from summon.measure.device import device_of, resolve_device
from summon.measure.metrics import softmax
from summon.models.inference import predict_logits
from summon.models.quantize import (
    SECTION,
    Quantization,
    manifest_quantization,
    quantize_model,
    quantized_device,
)
from summon.predictors.saved import (
    MANAGED,
    MANIFEST,
    WEIGHTS,
    check_file,
    check_files,
    load_featurizer,
    load_model,
    read_manifest,
    save_predictor,
)

__all__ = ["MANIFEST", "WEIGHTS", "Prediction", "Predictor", "as_batch", "as_stream", "canonical_inputs", "check_unicode",
           "int8_copy_manifest", "load_predictor", "quantize_loaded"]

NOT_CARRIED = ("adaptive", "adaptive_previous")  # a calibration measured on fp32 stages: an int8 copy drops it


def int8_copy_manifest(owner: Any, what: str, quantization: Quantization | None) -> tuple[Quantization, dict[str, Any]]:
    """The quantization and the manifest of an int8 copy of ``owner`` (a predictor, cascade or ensemble: its
    manifest without the fp32 calibration, with the ``quantization`` section).

    Raises:
        ValueError: If ``owner`` is int8 already.
    """
    if owner.quantization is not None:
        raise ValueError(f"{owner.path or f'this {what}'} is int8 already ({owner.quantization.describe()}); "
                         f"quantize the fp32 {what} it was made from")
    spec = quantization or Quantization.of()
    manifest = {k: v for k, v in owner.manifest.items() if k not in NOT_CARRIED}
    manifest[SECTION] = spec.to_dict()
    return spec, manifest


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
    """A trained model with its featurizer, labels and manifest.

    ``float_model`` is, for an int8 predictor made in memory (:meth:`quantized`), the fp32 model it was made
    from: what :meth:`save` writes. An int8 predictor loaded from a folder reads its fp32 weights from ``path``
    again when it is saved.
    """

    def __init__(self, model: nn.Module, featurizer: Any, task: str, labels: list[str],
                 manifest: dict[str, Any] | None = None, path: Path | None = None, *,
                 float_model: nn.Module | None = None):
        self.model = model.eval()
        self.featurizer = featurizer
        self.task = task
        self.labels = list(labels)
        self.manifest = manifest or {}
        self.path = path
        self.float_model = float_model

    @property
    def device(self) -> torch.device:
        """Where the model runs (see :meth:`to`)."""
        return device_of(self.model)

    def to(self, device: str | torch.device | None) -> Predictor:
        """Move the model to ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``); returns self.

        An int8 predictor stays on the CPU (``"auto"`` and ``"cpu"``); any other device raises a ``ValueError``.
        """
        if self.quantization is not None:
            quantized_device(device, self.path or "this int8 predictor")
            return self
        self.model.to(resolve_device(device))
        return self

    @property
    def quantization(self) -> Quantization | None:
        """How the model is quantised (the manifest's ``quantization`` section), or None for fp32."""
        where = Path(self.path) / MANIFEST if self.path else MANIFEST
        return manifest_quantization(self.manifest, where)

    def quantized(self, quantization: Quantization | None = None) -> Predictor:
        """An int8 copy: every ``nn.Linear`` a dynamic int8 one (:func:`~summon.models.quantize.quantize_model`),
        on the CPU; this predictor is left as it is.

        The copy is of the same class (an early-exit predictor stays one) with ``path`` None and no calibration:
        temperatures, costs and thresholds were measured on the fp32 model, so they are never carried over
        (calibrate the copy on held-out data). FLOPs are counted as for the fp32 model; saving writes the fp32
        weights and the ``quantization`` section (loading quantises again).

        Raises:
            ValueError: If this predictor is int8 already.
        """
        spec, manifest = int8_copy_manifest(self, "predictor", quantization)
        return type(self)(quantize_model(self.model, spec), self.featurizer, self.task, self.labels, manifest,
                          float_model=self.model)

    def fp32_model(self) -> nn.Module:
        """The model whose weights :meth:`save` writes: the model itself, or for an int8 predictor the fp32 one it
        was made from (kept when quantised in memory; read again from ``path`` when loaded, checked against the
        manifest's size and sha256)."""
        if self.quantization is None:
            return self.model
        if self.float_model is not None:
            return self.float_model
        if self.path is None or WEIGHTS not in self.manifest.get("files", {}):
            raise ValueError("this int8 predictor has no fp32 weights to save (it was neither made by quantized() "
                             "nor loaded from a folder); quantize the fp32 predictor again")
        check_file(Path(self.path), WEIGHTS, self.manifest["files"][WEIGHTS])
        return load_model(Path(self.path), self.manifest)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (from the manifest) identifying this predictor in caches and in saved cascades.

        A loaded Hugging Face model's manifest carries its own (over its config and weight files); otherwise
        the saved weights' sha256, else a hash of the weights in memory. A cascade records it per stage and
        refuses a stage whose fingerprint has changed since (see :mod:`summon.adaptive.cascade`). An int8
        predictor has the fingerprint of its fp32 weights (the int8 ones follow from them).
        """
        if self.manifest.get("fingerprint"):
            return str(self.manifest["fingerprint"])
        files = self.manifest.get("files", {})
        if WEIGHTS in files:
            return files[WEIGHTS]["sha256"]
        digest = hashlib.sha256()
        for name, tensor in sorted(self.fp32_model().state_dict().items()):
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
               raw: bool = False, features: Sequence[dict[str, Any]] | None = None):
        """Logits per canonical example ([C], or [num_words, C] for tagging); ``raw`` keeps a defer column.
        ``features`` (``featurizer.encode(examples, task)``, made earlier) saves encoding them again."""
        features = self.featurizer.encode(examples, self.task) if features is None else features
        rows = predict_logits(self.model, features, self.task, pad_id=self.featurizer.pad_id,
                              batch_size=batch_size, progress=progress)
        if self.defer_output and not raw:
            rows = [row[..., : len(self.labels)] for row in rows]
        return rows

    def predict(self, inputs: Sequence[Any], *, batch_size: int = 64,
                features: Sequence[dict[str, Any]] | None = None) -> list[Prediction]:
        """Predict labels and probabilities for raw inputs (see :meth:`examples_from_inputs`); ``features``
        as :meth:`logits` takes them (a server that counted tokens at admission)."""
        inputs = as_batch(inputs)
        examples = self.examples_from_inputs(inputs)
        rows = self.logits(examples, batch_size=batch_size, features=features)
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
        iterator = as_stream(inputs)
        while chunk := list(itertools.islice(iterator, window)):
            yield from self.predict(chunk, batch_size=batch_size)

    def _tagging(self, item: Any, ex: dict[str, Any], row: np.ndarray) -> Prediction:
        tags = [self.labels[k] for k in row.argmax(axis=-1)]
        text = item if isinstance(item, str) else " ".join(ex["tokens"])
        return Prediction(tokens=ex["tokens"], tags=tags, spans=entity_spans(text, ex["tokens"], tags))

    def save(self, directory: str | Path, *, architecture: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write this predictor to ``directory`` (see :func:`save_predictor`); an int8 one as its fp32 weights
        and its ``quantization`` section (:meth:`fp32_model`)."""
        arch = architecture or self.manifest.get("architecture")
        if arch is None:
            raise ValueError("saving needs the model's architecture dict (from build_model)")
        keep = {k: v for k, v in self.manifest.items() if k not in MANAGED}
        return save_predictor(directory, self.fp32_model(), self.featurizer, self.task, self.labels, arch,
                              extra={**keep, **(extra or {})})


def canonical_inputs(task: str, inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Canonical examples from raw inputs: strings, (text, pair) tuples, or word lists for tagging.

    The one place raw inputs are checked, for every predictor kind: the container (see :func:`as_batch`), each
    input's type against the task, and its text for invalid Unicode (see :func:`check_unicode`). Errors are
    ``ValueError``s that name the input's index.
    """
    examples = []
    for i, item in enumerate(as_batch(inputs)):
        if task == "token_classification":
            examples.append({"tokens": _input_words(item, i)})
        elif task == "pair_classification":
            examples.append(_input_pair(item, i))
        else:
            examples.append({"text": _input_text(item, i)})
    return examples


def _input_text(item: Any, i: int) -> str:
    """The text of one input of a single-text task."""
    if isinstance(item, str):
        return check_unicode(item, f"input {i}")
    hint = ""
    if isinstance(item, tuple | list) and len(item) == 2:
        hint = "; a (text, text_pair) pair is an input of a pair task, and this predictor classifies single texts"
    elif isinstance(item, Mapping):
        hint = "; pass the text itself (e.g. row['text']), not the row"
    elif isinstance(item, bytes | bytearray):
        hint = "; decode bytes first (.decode('utf-8'))"
    raise ValueError(f"input {i}: expected a string, got {type(item).__name__}{hint}")


def _input_pair(item: Any, i: int) -> dict[str, str]:
    """The two texts of one input of a pair task."""
    if isinstance(item, str) or not (isinstance(item, Sequence) and len(item) == 2
                                     and all(isinstance(t, str) for t in item)):
        raise ValueError(f"input {i}: a pair task needs (text, text_pair) tuples, got {item!r:.60}")
    return {"text": check_unicode(item[0], f"input {i}"), "text_pair": check_unicode(item[1], f"input {i}")}


def _input_words(item: Any, i: int) -> list[str]:
    """The words of one input of a tagging task: a text split into words, or a list of words."""
    if isinstance(item, str):
        tokens = split_words(check_unicode(item, f"input {i}"))
    elif isinstance(item, Sequence) and all(isinstance(t, str) for t in item):
        tokens = [check_unicode(t, f"input {i}") for t in item]
    else:
        raise ValueError(f"input {i}: a tagging task needs a text or a list of words (strings), got {item!r:.60}")
    if not tokens:
        raise ValueError(f"input {i} is empty; give text to tag")
    blank = next((k for k, token in enumerate(tokens) if not token.strip()), None)
    if blank is not None:  # no sub-token could carry its tag: the answer for it would be made up
        raise ValueError(f"input {i}: word {blank} is blank ({tokens[blank]!r}); give words with characters, or drop it")
    return tokens


def as_batch(inputs: Any) -> list[Any]:
    """One input (a string or a (text, pair) tuple) becomes a batch of one; a list (any iterable of inputs)
    stays as it is.

    Raises:
        TypeError: For a mapping (a dict, a DataFrame), bytes, or anything that is not iterable: iterating a
            mapping would predict its keys, and bytes their byte values.
    """
    if isinstance(inputs, str | tuple):
        return [inputs]
    return list(_iterable_of_inputs(inputs))


def as_stream(inputs: Any) -> Iterator[Any]:
    """An iterator over a stream of inputs (``iter_predict``), refused like :func:`as_batch` refuses, and for a
    single string or tuple too: iterating one would predict its characters or its parts."""
    if isinstance(inputs, str | tuple):
        raise TypeError(f"inputs: iter_predict takes an iterable of inputs, got one {type(inputs).__name__}; use "
                        "predict() for a single input, or wrap it in a list")
    return iter(_iterable_of_inputs(inputs))


def _iterable_of_inputs(inputs: Any) -> Iterable[Any]:
    """``inputs`` if it is an iterable of inputs; a mapping, bytes or a non-iterable is refused."""
    if isinstance(inputs, Mapping) or hasattr(inputs, "columns"):
        keys = ", ".join(repr(k) for k in itertools.islice(getattr(inputs, "keys", list)(), 4))
        raise TypeError(f"inputs: got a {type(inputs).__name__} ({f'keys {keys}' if keys else 'no keys'}) where a "
                        "list of inputs is expected (iterating it would predict its keys); pass the texts as a list, "
                        "e.g. [row['text'] for row in rows] or table['text'].tolist()")
    if isinstance(inputs, bytes | bytearray) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs: expected a list of inputs (strings; (text, text_pair) tuples for pair tasks; word "
                        f"lists for tagging) or one string, got {type(inputs).__name__}")
    return inputs


def load_predictor(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Predictor:
    """Load a plain saved predictor directory onto ``device``.

    The manifest is checked against the schema, every file it lists (weights, tokenizer files) against its
    size and sha256, and the labels against the model's outputs; any mismatch raises a ``ValueError`` naming
    the file or key (see :mod:`summon.predictors.saved`). An int8 predictor (a ``quantization`` section) is quantised
    again on the CPU: ``device`` ``None``/``"auto"``/``"cpu"`` loads it there, any other device is refused
    (:func:`~summon.models.quantize.quantized_device`).
    """
    directory = Path(path)
    manifest = read_manifest(directory)
    quantization = manifest_quantization(manifest, directory / MANIFEST)
    target = quantized_device(device, directory / MANIFEST) if quantization else resolve_device(device)
    check_files(directory, manifest)
    model = load_model(directory, manifest)
    featurizer = load_featurizer(directory, manifest["featurizer"])
    predictor = Predictor(model.to(target), featurizer, manifest["task"], manifest["labels"], manifest, path=directory)
    return quantize_loaded(predictor, quantization) if quantization else predictor


def quantize_loaded(predictor: Predictor, quantization: Quantization) -> Predictor:
    """Quantise a just-loaded fp32 predictor in place (a saved cascade or ensemble whose manifest asks for it);
    its fp32 weights stay readable at its ``path`` for saving. Returns it."""
    predictor.model = quantize_model(predictor.model, quantization, inplace=True)
    predictor.manifest = {**predictor.manifest, SECTION: quantization.to_dict()}
    return predictor
