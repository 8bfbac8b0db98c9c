"""Hugging Face classifiers in and out: load a fine-tuned HF model as a summon predictor, export summon models.

In: :func:`load_hf_predictor` turns a folder written by ``save_pretrained`` (model and tokenizer) or a hub id
into a :class:`~summon.predictors.predictor.Predictor` with the task and labels from its config (``id2label``), so it
can be a teacher (``teacher:`` in a recipe), a cascade stage, or the source of a student or of exits.
:func:`load_plain` loads either kind of plain (non-adaptive) predictor folder.

Out: :func:`export_hf` writes a summon teacher or transformer student as a standard folder that
``AutoModelForSequenceClassification.from_pretrained`` (or ``AutoModelForTokenClassification``) loads with
the same logits; what has no standard equivalent raises a ``ValueError`` saying what can be exported.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import cached_file

from summon.core.files import check_destination, follow_umask
from summon.data.features import TokenizerFeaturizer
from summon.measure.device import resolve_device
from summon.models.hf import (
    HF_PREFIX,
    export_problem,
    forward_inputs,
    hf_architecture,
    load_hf_task_model,
    resolve_labels,
    strip_prefix,
    to_hf_task_model,
)
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import MANIFEST, read_json_manifest, sha256

__all__ = ["HF_FORMAT", "export_hf", "is_hf_model_dir", "load_hf_predictor", "load_plain"]

logger = logging.getLogger(__name__)

HF_FORMAT = "huggingface"  # the "format" of the in-memory manifest of a loaded Hugging Face model
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_LIMIT = 512  # sub-tokens per input when the tokenizer states no usable maximum


def is_hf_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face model folder: it has ``config.json`` and no summon ``manifest.json``."""
    directory = Path(path)
    return directory.is_dir() and (directory / "config.json").is_file() and not (directory / MANIFEST).exists()


def load_hf_predictor(path_or_id: str | os.PathLike, *, device: str | torch.device | None = None,
                      max_length: int | None = None, task: str | None = None,
                      labels: Sequence[str] | None = None) -> Predictor:
    """A fine-tuned Hugging Face sequence or token classifier as a summon predictor, used as it is.

    Args:
        path_or_id: a folder written by ``save_pretrained`` (model and tokenizer), or a hub id (``hf:`` prefix
            allowed; offline, only cached models load).
        device: where to run it (``"auto"``, ``"cpu"``, ``"cuda"``; default CPU).
        max_length: sub-tokens per input; default the tokenizer's ``model_max_length`` (at most 512).
        task: ``classification`` (default for sequence classifiers), ``pair_classification`` (the model reads
            text pairs) or ``token_classification``; default from ``config.architectures``.
        labels: the labels the caller expects (e.g. the data's); generic ``LABEL_i`` names take them, other
            names must match up to case (see :func:`summon.models.hf.resolve_labels`).

    Returns:
        A :class:`Predictor` whose ``model(batch)`` returns logits [B, C] (sequence) or [B, L, C] per sub-token
        (tagging), with a :class:`TokenizerFeaturizer` over the model's tokenizer and an in-memory manifest:
        ``format`` ``"huggingface"``, ``architecture`` ``{"type": "hf", ...}`` and a weights ``fingerprint``
        (keys of the teacher-output cache).

    Raises:
        ValueError: If the model cannot be loaded or is not a single-label sequence or token classifier.
    """
    source = strip_prefix(os.fspath(path_or_id))
    model, tokenizer = load_hf_task_model(source, task=task)
    names = resolve_labels(model.config, labels, source)
    limit = tokenizer.model_max_length if 1 < tokenizer.model_max_length <= 100_000 else _LIMIT
    featurizer = TokenizerFeaturizer(tokenizer, max_length=max_length or min(limit, _LIMIT))
    manifest: dict[str, Any] = {
        "format": HF_FORMAT, "hf_source": source, "task": model.task, "labels": names,
        "architecture": hf_architecture(model), "featurizer": featurizer.to_config(),
    }
    fingerprint = _fingerprint(source)
    if fingerprint:
        manifest["fingerprint"] = fingerprint
    model.to(resolve_device(device))
    path = Path(source) if Path(source).is_dir() else None
    return Predictor(model, featurizer, model.task, names, manifest, path=path)


def load_plain(source: str | os.PathLike, *, device: str | torch.device | None = None, task: str | None = None,
               labels: Sequence[str] | None = None) -> Predictor:
    """Load a plain (single-model) predictor: a summon predictor folder or a Hugging Face classifier.

    Args:
        source: a folder holding summon's ``manifest.json``; a Hugging Face model folder (``config.json``, no
            manifest); or ``hf:HUB_ID``.
        device: where to run it.
        task, labels: used for Hugging Face models only (see :func:`load_hf_predictor`): the task a sequence
            classifier serves and the label names to give generic ``LABEL_i`` labels. A summon predictor
            keeps its own; callers compare them.

    Raises:
        ValueError: If ``source`` is none of these, naming what was found.
    """
    text = os.fspath(source)
    if text.startswith(HF_PREFIX) or is_hf_model_dir(text):
        return load_hf_predictor(text, device=device, task=task, labels=labels)
    directory = Path(text)
    if not directory.exists() and "/" in text and len(Path(text).parts) == 2 and not text.startswith((".", "/")):
        raise ValueError(f"{text}: no such folder. For a model on the Hugging Face hub write hf:{text}")
    manifest = read_json_manifest(directory) if directory.is_dir() else None
    fmt = str(manifest.get("format")) if manifest is not None else ""
    if fmt.startswith("summon-") and fmt != "summon-predictor":
        raise ValueError(f"{directory} holds a {manifest.get('format')!r}, not a plain predictor; load it with "
                         "summon.load, or give one of its stages")
    return load_predictor(directory, device=device)


def _fingerprint(source: str) -> str | None:
    """sha256 over the config and weight files of a local or cached model folder; None when not found."""
    folder = Path(source)
    if not folder.is_dir():
        try:
            found = cached_file(source, "config.json", local_files_only=True)
        except (OSError, ValueError):
            found = None
        if not found:
            return None
        folder = Path(found).parent
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256(path)}\n".encode())
    return digest.hexdigest()


def export_hf(predictor: Predictor, out: str | os.PathLike, *, option: str = "out") -> Path:
    """Write ``predictor`` as a standard Hugging Face classifier folder (weights, config, tokenizer).

    ``AutoModelForSequenceClassification.from_pretrained(out)`` (``AutoModelForTokenClassification`` for
    taggers) then gives the same logits as the summon model, with ``id2label``/``label2id`` from its labels;
    the tokenizer is saved beside it with summon's ``max_length`` as ``model_max_length``.

    Exportable: a teacher or transformer student of a BERT, RoBERTa, XLM-R or MPNet encoder with
    ``model.pooling: pooler`` (sequence tasks), any transformer tagger without a CRF (all six families), and
    a model trained from a Hugging Face classifier (``model.kind: hf`` without exits).

    Args:
        predictor: a plain predictor (see :func:`load_plain`).
        out: the folder to write: a new or empty one, never the predictor's own folder nor inside it
            (:func:`~summon.core.files.check_destination`); its files get the mode the user's umask gives.
        option: how the caller names ``out`` in messages (``summon export`` says ``OUT``).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: For what has no standard equivalent: n-gram students, early-exit models, CRF taggers,
            defer outputs, mean or CLS pooling, pooler pooling on ELECTRA/DistilBERT encoders, or an int8
            predictor; the message says what can be exported and how to train it. For an ``out`` that holds
            anything (or is a file, or is the predictor's folder), before anything is written.
    """
    if not all(hasattr(predictor, attr) for attr in ("model", "featurizer", "manifest")):
        raise ValueError(f"cannot export a {type(predictor).__name__}: it has no single model (a cascade or an "
                         "ensemble runs several); export one of its plain stages instead")
    arch = predictor.manifest.get("architecture") or {}
    problem = export_problem(arch)
    if predictor.quantization is not None:
        problem = ("it is int8 (dynamic qint8 linear layers), which a Hugging Face classifier folder does not hold; "
                   "export the fp32 predictor it was made from")
    if problem:
        raise ValueError(f"cannot export {predictor.path or 'this predictor'} to Hugging Face format: {problem}.")
    source = predictor.path if predictor.path and not str(predictor.path).startswith(HF_PREFIX) else None
    check_destination(out, what="the Hugging Face export", option=option,
                      sources={source: "the predictor being exported"} if source else {})
    hf_model = to_hf_task_model(predictor.model, arch, predictor.labels)
    tokenizer = copy.deepcopy(predictor.featurizer.tokenizer)
    tokenizer.model_max_length = predictor.featurizer.max_length
    accepted = forward_inputs(hf_model)  # DistilBERT takes no token types: tokenizer(...) -> model(**enc) works
    tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name in accepted]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    follow_umask(out)  # save_pretrained's safetensors file is written owner-only
    return out
