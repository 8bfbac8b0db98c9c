"""Saved predictors: one directory per trained model, loaded without unpickling anything.

Layout::

    manifest.json        task, labels, architecture, featurizer, costs, metrics, file sizes and hashes
    model.safetensors    the weights
    tokenizer/           the Hugging Face tokenizer (encoder models only)

``summon.load(path).predict(texts)`` returns labels and probabilities; a tagger (softmax or CRF) returns
tags per word and entity spans with character offsets (raw text is split into words by :func:`split_words`). A missing, truncated or
mismatched file raises a ``ValueError`` naming the file and what to do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

import summon
from summon.data.features import NgramFeaturizer, TokenizerFeaturizer
from summon.inference import predict_logits, softmax
from summon.models.build import model_from_architecture

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "summon-predictor"
FORMAT_VERSION = 1


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
    def fingerprint(self) -> str:
        """Hash of the weights (from the manifest) identifying this predictor in caches."""
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
        keep = {k: v for k, v in self.manifest.items() if k not in _MANAGED}
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


_WORDS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Words of raw text for tagging, CoNLL style: runs of letters and digits (joined by ``'`` or ``-``)
    and each punctuation mark on its own, so ``"Paris, EU-wide"`` gives ``Paris , EU-wide``.

    A simple regular expression, not a trained tokenizer: abbreviations such as ``U.S.`` come out as
    ``U . S .``. Pass pre-split word lists to :meth:`Predictor.predict` to use another tokenizer.
    """
    return _WORDS.findall(text)


def as_batch(inputs: Any) -> list[Any]:
    """One input (a string or a (text, pair) tuple) becomes a batch of one; a list stays as it is."""
    return [inputs] if isinstance(inputs, str | tuple) else list(inputs)


_MANAGED = {"format", "format_version", "summon_version", "task", "labels", "architecture", "featurizer",
            "files", "created"}


def entity_spans(text: str, tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """BIO tags -> entity spans with character offsets into ``text`` (tokens are found left to right)."""
    offsets, cursor = [], 0
    for tok in tokens:
        start = text.find(tok, cursor)
        start = cursor if start < 0 else start
        offsets.append((start, start + len(tok)))
        cursor = start + len(tok)
    spans: list[dict[str, Any]] = []
    for i, tag in enumerate(tags):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        continues = tag.startswith("I-") and spans and spans[-1]["label"] == kind and spans[-1]["_end"] == i
        if kind is None:
            continue
        if continues:
            spans[-1]["end"] = offsets[i][1]
            spans[-1]["_end"] = i + 1
        else:
            spans.append({"label": kind, "start": offsets[i][0], "end": offsets[i][1], "_end": i + 1})
    for span in spans:
        span.pop("_end")
        span["text"] = text[span["start"]:span["end"]]
    return spans


# --- saving ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_predictor(directory: str | Path, model: nn.Module, featurizer: Any, task: str, labels: Sequence[str],
                   architecture: dict[str, Any], *, extra: dict[str, Any] | None = None) -> Path:
    """Write weights, tokenizer and manifest into ``directory`` atomically (a temp folder, then a rename).

    ``extra`` adds manifest keys such as ``metrics``, ``costs`` and ``training``.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(_unwrap(model), str(staging / WEIGHTS))
    featurizer.save(staging)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "summon_version": summon.__version__,
        "task": task, "labels": list(labels), "architecture": architecture, "featurizer": featurizer.to_config(),
        "files": {WEIGHTS: {"bytes": (staging / WEIGHTS).stat().st_size, "sha256": _sha256(staging / WEIGHTS)}},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(_jsonable(manifest), indent=2) + "\n", encoding="utf-8")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def update_manifest(directory: str | Path, **entries: Any) -> dict[str, Any]:
    """Merge ``entries`` (e.g. ``metrics=...``, ``costs=...``) into a saved predictor's manifest."""
    path = Path(directory) / MANIFEST
    manifest = read_manifest(Path(directory))
    manifest.update(_jsonable(entries))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return manifest


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# --- loading --------------------------------------------------------------------------------------


def _cascade_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a cascade directory, or None for anything else (read_manifest then explains)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("format") == "summon-cascade":
        return manifest
    return None


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such predictor directory. Train one with `summon train RECIPE.yaml`.")
    if not path.is_file():
        raise ValueError(f"{path}: missing. {directory} is not a saved summon predictor (no manifest.json).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable manifest ({err}). The save was interrupted or the file edited; "
                         "re-save the predictor.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        seen = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: not a summon predictor manifest (format {seen!r}).")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest['format_version']} is newer than this summon "
                         f"({summon.__version__}) reads; upgrade summon.")
    return manifest


def _check_file(directory: Path, name: str, expected: dict[str, Any]) -> Path:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{path}: missing. Copy the whole predictor directory, or re-save it.")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise ValueError(f"{path}: {size} bytes but the manifest says {expected['bytes']}: the file is truncated "
                         "or replaced. Copy it again from the original predictor.")
    if _sha256(path) != expected["sha256"]:
        raise ValueError(f"{path}: contents do not match the manifest's sha256: the file was changed or belongs to "
                         "another predictor. Copy it again from the original.")
    return path


def _load_featurizer(directory: Path, config: dict[str, Any]) -> Any:
    if config.get("kind") == "ngram":
        params = {k: v for k, v in config.items() if k != "kind"}
        return NgramFeaturizer(**params)
    if config.get("kind") == "tokenizer":
        from transformers import AutoTokenizer

        folder = directory / "tokenizer"
        if not folder.is_dir():
            raise ValueError(f"{folder}: missing tokenizer folder. Copy the whole predictor directory.")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        params = {k: v for k, v in config.items() if k != "kind"}
        return TokenizerFeaturizer(tokenizer, **params)
    raise ValueError(f"{directory / MANIFEST}: unknown featurizer {config.get('kind')!r}.")


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}). Copy it again.") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    # save_model drops duplicate names of tied tensors; those may be absent from the file.
    missing = [k for k in missing if not _is_tied_copy(model, k, state)]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch {shapes[:5]}" if shapes else ""]))
        raise ValueError(f"{path}: weights do not fit the architecture in manifest.json ({detail}). "
                         "The weights and manifest come from different models; re-save the predictor.")
    model.load_state_dict(state, strict=False)


def _is_tied_copy(model: nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    tensors = model.state_dict(keep_vars=True)
    target = tensors[key]
    return any(other in state and tensors[other] is target for other in tensors if other != key)


def load(path: str | os.PathLike) -> Predictor:
    """Load a saved predictor (or cascade) directory. Nothing is unpickled: weights are safetensors, the rest JSON."""
    directory = Path(path)
    cascade = _cascade_manifest(directory)
    if cascade is not None:
        from summon.adaptive.cascade import load_cascade

        return load_cascade(directory, cascade)
    manifest = read_manifest(directory)
    for name, expected in manifest.get("files", {}).items():
        _check_file(directory, name, expected)
    model = model_from_architecture(manifest["architecture"])
    _load_weights(model, directory / WEIGHTS)
    featurizer = _load_featurizer(directory, manifest["featurizer"])
    cls = Predictor
    if hasattr(model, "num_stages"):  # a staged model (exits): one run-time knob over its stages
        from summon.adaptive.predictor import AdaptivePredictor

        cls = AdaptivePredictor
    return cls(model, featurizer, manifest["task"], manifest["labels"], manifest, path=directory)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-system-safe version of ``text`` for folder names."""
    return _SAFE_NAME.sub("_", text).strip("_") or "model"
