"""Build models from a typed :class:`ModelConfig` and rebuild them from a saved architecture dict.

Kinds of model:
    ``pretrained``: a named encoder (see :mod:`summon.models.pretrained`) with a new task head.
    ``truncated``: a copy of an encoder keeping its first k layers, every k-th layer or chosen layers
        (DistilBERT / PKD-style students). The source is ``name`` or, by default, the teacher's encoder.
    ``random``: a freshly initialised encoder shaped like the source with smaller sizes.
    ``copy``: a copy of the source model itself, encoder and head (to attach exits to a fine-tuned teacher).
    ``ngram``: a fastText-like bag of hashed word n-grams (:class:`NgramClassifier`).

Any encoder kind takes ``crf`` (token classification: a :class:`~summon.models.tagger.CRFTagger`, a
linear-chain CRF over the words, or over sub-tokens with ``crf_over: subtokens``), ``exits`` (classifier heads after chosen layers, :mod:`summon.models.exits`) and
``freeze`` (parameter-name prefixes that do not train, e.g. ``[backbone]`` for DeeBERT's second stage).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from summon.data.features import NgramFeaturizer, TokenizerFeaturizer
from summon.models.backbone import Backbone, keep_layers, layer_selection
from summon.models.exits import MultiExitClassifier, resolve_exits
from summon.models.heads import EncoderClassifier, SequenceHead, TokenHead
from summon.models.ngram import NgramClassifier
from summon.models.pretrained import load_encoder
from summon.models.tagger import CRFTagger


@dataclass
class ModelConfig:
    """What model to train. Fields apply to the kinds named in their comments."""

    kind: Literal["pretrained", "truncated", "random", "copy", "ngram"] = "pretrained"
    name: str | None = None  # pretrained: required; truncated/random: source encoder (default: the teacher's)
    first: int | None = None  # truncated: keep the first k layers
    every: int | None = None  # truncated: keep every k-th layer
    layers: list[int] | None = None  # truncated: keep these 0-based layers
    num_layers: int | None = None  # random: sizes that replace the source's
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    pooling: Literal["mean", "cls", "pooler"] = "mean"  # encoders: how a sequence head pools tokens
    dropout: float = 0.1  # the head's dropout
    encoder_dropout: float | None = None  # replaces every dropout rate inside the encoder (default: its config's)
    max_length: int = 128  # sub-tokens per input (encoders) / n-grams per input x 16 (ngram)
    num_buckets: int = 1 << 20  # ngram: hash buckets
    embed_dim: int = 64  # ngram: embedding width
    hidden_dim: int = 0  # ngram: optional hidden layer
    ngram_max: int = 2  # ngram: longest n-gram
    init_seed: int = 0  # random init of new weights (heads, random encoders, n-gram embeddings)
    exits: list[int] | Literal["all"] | None = None  # encoders: exit heads after these layers (1-based) or all
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes to freeze, e.g. [backbone]
    defer_output: bool = False  # one extra "defer" logit after the classes (learning-to-defer students)
    crf: bool = False  # token classification: a linear-chain CRF on the emissions (see summon.models.tagger)
    crf_over: Literal["words", "subtokens"] = "words"  # crf: chain the words, or sub-tokens with an X label

    def __post_init__(self) -> None:
        if self.kind == "pretrained" and not self.name:
            raise ValueError("kind 'pretrained' needs 'name' (e.g. minilm-l6, mpnet-base, a folder or a hub id)")
        if self.kind == "truncated" and sum(x is not None for x in (self.first, self.every, self.layers)) != 1:
            raise ValueError("kind 'truncated' needs exactly one of 'first', 'every' or 'layers'")
        for key in ("dropout", "encoder_dropout"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"'{key}' must be in [0, 1), got {value}")
        if self.max_length < 2:
            raise ValueError(f"'max_length' must be at least 2, got {self.max_length}")


@dataclass
class Source:
    """The model students are made from (usually the teacher): its encoder, tokenizer and head."""

    encoder: nn.Module
    tokenizer: Any
    head: nn.Module | None = None
    crf: nn.Module | None = None  # a CRF tagger's transitions, start and end (copied by kind 'copy')

    @classmethod
    def of(cls, model: nn.Module, tokenizer: Any) -> Source | None:
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            return None  # an n-gram model has no encoder to copy
        head = getattr(model, "head", None)
        if head is None and hasattr(model, "heads"):
            head = model.heads[-1]
        return cls(backbone.model, tokenizer, head, getattr(model, "crf", None))


@dataclass
class Built:
    """A model, its featurizer and the architecture dict that rebuilds it."""

    model: nn.Module
    featurizer: Any
    architecture: dict[str, Any]


def build_model(cfg: ModelConfig, task: str, num_labels: int, *, source: Source | None = None) -> Built:
    """Build a fresh model for ``task``.

    Args:
        cfg: the model config.
        task: classification, pair_classification or token_classification.
        num_labels: size of the label set.
        source: the model to truncate, copy or shape a random model after when ``cfg.name`` is unset
            (the teacher, for distillation).
    """
    if cfg.defer_output and (cfg.exits is not None or task == "token_classification"):
        raise ValueError("defer_output is for single-exit sequence classifiers (cascade students)")
    _check_crf(cfg, task)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        if cfg.kind == "ngram":
            if cfg.exits:
                raise ValueError("exits attach to encoder layers; a bag of n-grams has none")
            built = _build_ngram(cfg, task, num_labels)
        else:
            built = _build_encoder_model(cfg, task, num_labels, source)
    freeze(built.model, cfg.freeze)
    return built


def _check_crf(cfg: ModelConfig, task: str) -> None:
    if not cfg.crf:
        if cfg.crf_over != "words":
            raise ValueError(f"model.crf_over={cfg.crf_over!r} needs model.crf: true")
        return
    if task != "token_classification":
        raise ValueError(f"model.crf: a CRF tags sequences, but this task is {task!r}; set model.crf: false "
                         "or train on a token_classification data set")
    if cfg.kind == "ngram" or cfg.exits is not None:
        what = "kind 'ngram'" if cfg.kind == "ngram" else "model.exits"
        raise ValueError(f"model.crf: not available with {what}; use an encoder kind without exits")


def _build_encoder_model(cfg: ModelConfig, task: str, num_labels: int, source: Source | None) -> Built:
    encoder, tokenizer, head = _encoder_for(cfg, source)
    if cfg.encoder_dropout is not None:
        set_encoder_dropout(encoder, cfg.encoder_dropout)
    arch = encoder_architecture(encoder, task, num_labels, cfg.pooling, cfg.dropout)
    if cfg.crf:
        arch["crf"] = {"over": cfg.crf_over}
    if cfg.defer_output:
        arch["defer_output"] = True
    if cfg.exits is not None:
        if task == "token_classification":
            raise ValueError("exits are implemented for sequence tasks; token classification has none yet")
        arch = {**arch, "type": "exits", "exit_layers": resolve_exits(cfg.exits, Backbone(encoder).num_layers)}
    model = model_for(arch, encoder)
    if head is not None:
        _reuse_head(model, head, arch)
        _reuse_crf(model, source)
    return Built(model=model, featurizer=featurizer_for(arch, tokenizer, cfg.max_length), architecture=arch)


def featurizer_for(arch: dict[str, Any], tokenizer: Any, max_length: int) -> TokenizerFeaturizer:
    """The tokenizer featurizer; a CRF over sub-tokens labels non-first sub-tokens ``X`` (id ``num_labels``)."""
    if arch.get("crf", {}).get("over") == "subtokens":
        return TokenizerFeaturizer(tokenizer, max_length=max_length, subtoken_label="x",
                                   x_label_id=arch["num_labels"])
    return TokenizerFeaturizer(tokenizer, max_length=max_length)


def _encoder_for(cfg: ModelConfig, source: Source | None) -> tuple[nn.Module, Any, nn.Module | None]:
    """The encoder to build on, its tokenizer, and a trained head to reuse (``copy`` only)."""
    if cfg.kind == "pretrained" or cfg.name:
        encoder, tokenizer, _ = load_encoder(cfg.name, seed=cfg.init_seed)
        if cfg.kind == "copy":
            raise ValueError("kind 'copy' copies the teacher; leave 'name' unset")
        source = Source(encoder, tokenizer)
    elif source is None:
        raise ValueError(f"kind '{cfg.kind}' needs 'name' or a teacher to copy its encoder from")
    if cfg.kind == "truncated":
        keep = layer_selection(Backbone(source.encoder).num_layers, first=cfg.first, every=cfg.every,
                               indices=cfg.layers)
        return keep_layers(source.encoder, keep), source.tokenizer, None
    if cfg.kind == "random":
        return _random_like(source.encoder, cfg), source.tokenizer, None
    if cfg.kind == "copy":
        return copy.deepcopy(source.encoder), source.tokenizer, source.head
    return source.encoder, source.tokenizer, None


def _reuse_head(model: nn.Module, head: nn.Module, arch: dict[str, Any]) -> None:
    """Put the source's trained head on the last layer: the model's own head, or its last exit there."""
    target = getattr(model, "head", None)
    if hasattr(model, "heads"):
        layers = Backbone(model.backbone.model).num_layers
        target = model.heads[-1] if model.exit_layers[-1] == layers else None
    same_shape = all(a.shape == b.shape for a, b in zip(head.state_dict().values(), target.state_dict().values(),
                                                         strict=False)) if target is not None else False
    if target is None or getattr(head, "pooling", arch["pooling"]) != arch["pooling"] or not same_shape:
        return
    target.load_state_dict(head.state_dict())


def _reuse_crf(model: nn.Module, source: Source | None) -> None:
    """A copied CRF tagger keeps the source's CRF too, when the label chains match."""
    ours, theirs = getattr(model, "crf", None), source.crf if source is not None else None
    if ours is not None and theirs is not None and ours.transitions.shape == theirs.transitions.shape:
        ours.load_state_dict(theirs.state_dict())


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """Stop gradients for parameters whose name starts with any prefix (``backbone``, ``heads.5``, ...)."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ValueError(f"freeze: no parameter starts with '{prefix}'. Prefixes here: {', '.join(tops)}")
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)


_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def set_encoder_dropout(encoder: nn.Module, rate: float) -> None:
    """Set every dropout rate of a Hugging Face encoder: its modules now, and its config for rebuilding."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    for key in _DROPOUT_KEYS:
        if hasattr(encoder.config, key):
            setattr(encoder.config, key, rate)


def _random_like(encoder: nn.Module, cfg: ModelConfig) -> nn.Module:
    config = copy.deepcopy(encoder.config)
    ffn_key = "hidden_dim" if config.model_type == "distilbert" else "intermediate_size"  # DistilBERT's FFN width
    sizes = {"num_hidden_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
             "num_attention_heads": cfg.num_heads, ffn_key: cfg.intermediate_size}
    for key, value in sizes.items():
        if value is not None:
            setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size {config.hidden_size} must be divisible by num_heads {config.num_attention_heads}")
    return AutoModel.from_config(config)


def _build_ngram(cfg: ModelConfig, task: str, num_labels: int) -> Built:
    if task == "token_classification":
        raise ValueError("kind 'ngram' classifies whole texts; use an encoder for token classification")
    arch = {"type": "ngram", "task": task, "num_labels": num_labels, "num_buckets": cfg.num_buckets,
            "embed_dim": cfg.embed_dim, "hidden_dim": cfg.hidden_dim, "dropout": cfg.dropout,
            "defer_output": cfg.defer_output}
    featurizer = NgramFeaturizer(num_buckets=cfg.num_buckets, ngram_max=cfg.ngram_max, max_ngrams=cfg.max_length * 16)
    return Built(model=model_from_architecture(arch), featurizer=featurizer, architecture=arch)


def encoder_architecture(encoder: nn.Module, task: str, num_labels: int, pooling: str, dropout: float) -> dict:
    """The JSON-able description that :func:`model_from_architecture` rebuilds an encoder classifier from."""
    return {"type": "encoder", "task": task, "num_labels": num_labels, "pooling": pooling, "dropout": dropout,
            "hf_config": encoder.config.to_diff_dict()}


def outputs(arch: dict[str, Any]) -> int:
    """Logits per input (or token): one per label, plus the defer logit of learning-to-defer students, or
    the ``X`` label of a CRF over sub-tokens."""
    extra = bool(arch.get("defer_output")) or arch.get("crf", {}).get("over") == "subtokens"
    return arch["num_labels"] + int(extra)


def make_head(arch: dict[str, Any]) -> nn.Module:
    hidden = int(arch["hf_config"].get("hidden_size") or arch["hf_config"]["dim"])
    if arch["task"] == "token_classification":
        return TokenHead(hidden, outputs(arch), arch["dropout"])
    return SequenceHead(hidden, outputs(arch), arch["pooling"], arch["dropout"])


def model_for(arch: dict[str, Any], encoder: nn.Module) -> nn.Module:
    """Wrap ``encoder`` with the head(s) ``arch`` describes (new, randomly initialised heads)."""
    backbone = Backbone(encoder)
    if arch["type"] == "exits":
        return MultiExitClassifier(backbone, arch["exit_layers"], [make_head(arch) for _ in arch["exit_layers"]])
    if "crf" in arch:
        return CRFTagger(backbone, make_head(arch), arch["num_labels"], arch["crf"]["over"])
    return EncoderClassifier(backbone, make_head(arch))


def model_from_architecture(arch: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of the saved shape (weights are loaded afterwards)."""
    if arch.get("type") == "ngram":
        return NgramClassifier(arch["num_buckets"], outputs(arch), arch["embed_dim"], arch["hidden_dim"],
                               arch["dropout"])
    if arch.get("type") in ("encoder", "exits"):
        hf = dict(arch["hf_config"])
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        return model_for(arch, AutoModel.from_config(config))
    raise ValueError(f"unknown architecture type {arch.get('type')!r}; this predictor needs a newer summon?")
