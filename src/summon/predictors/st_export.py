"""Export to the standard folder of mean- and CLS-pooled classifiers: a sentence-transformers model.

A Hugging Face ``...ForSequenceClassification`` pools with its encoder's pooler (dense + tanh on the first
token), so a summon model whose head pools with ``mean`` (every default recipe's) or ``cls`` has no
``AutoModelForSequenceClassification`` equivalent. It has a standard one in sentence-transformers' format:
the encoder at the folder's root (``AutoModel.from_pretrained(OUT)`` loads it, with ``id2label`` in its
config), then a ``Pooling`` module (mean over the attention mask, or the first token) and a ``Dense`` module
with the classifier's weights and no activation. ``SentenceTransformer(OUT).encode(texts)`` returns the same
logits as the summon model (pairs: ``encode([(a, b), ...])``). The folder is written with sentence-transformers'
own API, so it is in the format of the version installed.

:func:`export` picks the format for ``summon export --format auto`` (the default): ``hf`` where a standard
classifier holds the model, ``sentence-transformers`` where this module does.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from torch import nn

from summon.core.files import check_destination, follow_umask
from summon.models.hf import export_problem
from summon.predictors.huggingface import HF_PREFIX, export_hf
from summon.predictors.predictor import Predictor

__all__ = ["EXPORT_FORMATS", "ST_FORMAT", "export", "export_format", "export_sentence_transformers",
           "sentence_transformers_problem"]

ST_FORMAT = "sentence-transformers"
EXPORT_FORMATS = ("auto", "hf", ST_FORMAT)
_POOLINGS = {"mean": "mean", "cls": "cls"}  # summon's pooling -> sentence-transformers' pooling mode
_SEQUENCE_TASKS = ("classification", "pair_classification")


def sentence_transformers_problem(arch: dict[str, Any]) -> str | None:
    """Why a summon model of architecture ``arch`` has no sentence-transformers equivalent, or None."""
    if arch.get("type") != "encoder":
        return export_problem(arch) or "only summon's own encoder classifiers export to sentence-transformers"
    if arch.get("task") not in _SEQUENCE_TASKS:
        return "sentence-transformers holds sentence (and pair) classifiers, not taggers; export a tagger with --format hf"
    if arch.get("defer_output"):
        return "a learned defer output has no sentence-transformers equivalent; train without model.defer_output"
    if arch.get("pooling") not in _POOLINGS:
        return (f"its head pools with {arch.get('pooling')!r}, which sentence-transformers' Pooling has no mode for "
                "(it has mean and cls); export it with --format hf")
    return None


def export_format(predictor: Predictor, requested: str = "auto") -> str:
    """The format ``summon export --format requested`` writes ``predictor`` in: ``auto`` picks ``hf`` when a standard
    classifier holds the model, else ``sentence-transformers`` when that does, else ``hf`` (whose error says why)."""
    if requested not in EXPORT_FORMATS:
        raise ValueError(f"--format {requested!r}: unknown format; choose one of {', '.join(EXPORT_FORMATS)}")
    if requested != "auto":
        return requested
    arch = _architecture(predictor)
    if export_problem(arch) and not sentence_transformers_problem(arch):
        return ST_FORMAT
    return "hf"


def export(predictor: Predictor, out: str | os.PathLike, *, format: str = "auto", option: str = "out") -> Path:
    """Write ``predictor`` to ``out`` in ``format`` (see :func:`export_format`); returns ``out`` as a Path."""
    if export_format(predictor, format) == ST_FORMAT:
        return export_sentence_transformers(predictor, out, option=option)
    return export_hf(predictor, out, option=option)


def export_sentence_transformers(predictor: Predictor, out: str | os.PathLike, *, option: str = "out") -> Path:
    """Write a mean- or CLS-pooled summon classifier as a sentence-transformers folder (module docstring).

    Args:
        predictor: a plain predictor whose model is a summon encoder classifier.
        out: a new or empty folder (:func:`~summon.core.files.check_destination`), never the predictor's own.
        option: how the caller names ``out`` in messages.

    Raises:
        ValueError: For a model with no equivalent (n-gram, early exit, tagger, defer output, int8, pooler
            pooling: the message says which format holds it), before anything is written; when
            sentence-transformers is not installed, naming the package.
    """
    arch = _architecture(predictor)
    problem = sentence_transformers_problem(arch)
    if getattr(predictor, "quantization", None) is not None:
        problem = "it is int8 (dynamic qint8 linear layers); export the fp32 predictor it was made from"
    if problem:
        raise ValueError(f"cannot export {predictor.path or 'this predictor'} to sentence-transformers format: "
                         f"{problem}.")
    modules = _st_modules()
    source = predictor.path if predictor.path and not str(predictor.path).startswith(HF_PREFIX) else None
    check_destination(out, what="the sentence-transformers export", option=option,
                      sources={source: "the predictor being exported"} if source else {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_encoder(predictor, out)
    transformer_cls, pooling_cls, dense_cls, model_cls = modules
    hidden = predictor.model.backbone.model.config.hidden_size
    linear = predictor.model.head.classifier
    dense = dense_cls(hidden, linear.out_features, activation_function=nn.Identity(),
                      init_weight=linear.weight.detach().clone(), init_bias=linear.bias.detach().clone())
    model = model_cls(modules=[transformer_cls(str(out), max_seq_length=predictor.featurizer.max_length),
                               pooling_cls(hidden, pooling_mode=_POOLINGS[arch["pooling"]]), dense], device="cpu")
    model.save(str(out))
    follow_umask(out)
    return out


def _architecture(predictor: Predictor) -> dict[str, Any]:
    if not all(hasattr(predictor, attr) for attr in ("model", "featurizer", "manifest")):
        raise ValueError(f"cannot export a {type(predictor).__name__}: it has no single model (a cascade or an "
                         "ensemble runs several); export one of its plain stages instead")
    return predictor.manifest.get("architecture") or {}


def _write_encoder(predictor: Predictor, out: Path) -> None:
    """The encoder (labels in its config) and the tokenizer (summon's max_length) at ``out``'s root."""
    encoder = copy.deepcopy(predictor.model.backbone.model)
    labels = list(predictor.labels)
    encoder.config.id2label = dict(enumerate(labels))
    encoder.config.label2id = {name: i for i, name in enumerate(labels)}
    encoder.save_pretrained(str(out))
    tokenizer = copy.deepcopy(predictor.featurizer.tokenizer)
    tokenizer.model_max_length = predictor.featurizer.max_length
    tokenizer.save_pretrained(str(out))


def _st_modules() -> tuple[type, type, type, type]:
    """sentence-transformers' Transformer, Pooling, Dense and SentenceTransformer (the v6 paths, else v3-5's)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ValueError("exporting to sentence-transformers format needs the sentence-transformers package: "
                         "pip install sentence-transformers") from error
    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Dense, Pooling, Transformer
    return Transformer, Pooling, Dense, SentenceTransformer
