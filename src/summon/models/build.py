"""Build models from a typed model config and rebuild them from a saved architecture dict.

``model`` in a recipe is a union keyed on ``kind``; each kind is a dataclass with only the fields it uses
(:data:`AnyModelConfig`; ``ModelConfig(kind=..., **fields)`` builds the right one in Python):

    ``pretrained`` (:class:`PretrainedModelConfig`): a named encoder (see :mod:`summon.models.pretrained`)
        with a new task head.
    ``truncated`` (:class:`TruncatedModelConfig`): a copy of an encoder keeping its first k layers, every
        k-th layer or chosen layers (DistilBERT / PKD-style students). The source is ``name`` or, by
        default, the teacher's encoder.
    ``random`` (:class:`RandomModelConfig`): a freshly initialised encoder shaped like the source with
        smaller sizes.
    ``copy`` (:class:`CopyModelConfig`): a copy of the source model itself, encoder and head (to attach
        exits to a fine-tuned teacher, summon's or a Hugging Face one).
    ``hf`` (:class:`HFModelConfig`): a fine-tuned Hugging Face sequence or token classifier (``name``: a
        folder or hub id) used as it is, or, with ``exits``, as the start of an early-exit model whose last
        exit is its own classifier.
    ``ngram`` (:class:`NgramModelConfig`): a fastText-like bag of hashed word n-grams (:class:`NgramClassifier`).

Every encoder kind takes ``crf`` (token classification: a :class:`~summon.models.tagger.CRFTagger`, a
linear-chain CRF over the words, or over sub-tokens with ``crf_over: subtokens``), ``exits`` (classifier
heads after chosen layers, :mod:`summon.models.exits`); every kind takes ``freeze`` (parameter-name prefixes
that do not train, e.g. ``[backbone]`` for DeeBERT's second stage).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from summon.core.config import Tagged, tagged_members, unknown_member_key
from summon.data.features import NgramFeaturizer, TokenizerFeaturizer
from summon.models.backbone import Backbone, keep_layers, layer_selection
from summon.models.exits import MultiExitClassifier, resolve_exits
from summon.models.heads import EncoderClassifier, SequenceHead, TokenHead
from summon.models.hf import (
    HFTaskModel,
    hf_architecture,
    hf_model_from_architecture,
    load_hf_task_model,
    resolve_labels,
    to_summon_parts,
)
from summon.models.member import ComposedMember
from summon.models.ngram import NgramClassifier
from summon.models.pretrained import load_encoder
from summon.models.tagger import CRFTagger

Exits = list[int] | Literal["all", "embeddings+all"] | None


@dataclass(kw_only=True)
class ModelConfig:
    """What model to train: the fields every kind takes. Each kind is a subclass (see the module docstring).

    ``ModelConfig(kind="ngram", num_buckets=4096)`` returns the kind's own class (:class:`NgramModelConfig`),
    as ``pathlib.Path(...)`` returns a ``PosixPath``; a key the kind does not take raises a ``ValueError``.
    """

    kind: str = "pretrained"
    dropout: float = 0.1  # the head's dropout
    max_length: int = 128  # sub-tokens per input (encoders) / n-grams per input x 16 (ngram)
    init_seed: int = 0  # random init of new weights (heads, random encoders, n-gram embeddings)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes to freeze, e.g. [backbone]
    # Progressive-ensemble members: width of the previous member's last hidden layer, added to this model's
    # through a learned projection (summon.models.member); 0 = none. Set by the ensemble's training.
    compose_from: int = 0

    KIND: ClassVar[str | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelConfig:
        if cls is ModelConfig:
            kind = kwargs.get("kind", "pretrained")
            members = model_kinds()
            if kind not in members:
                close = difflib.get_close_matches(str(kind), list(members), n=1)
                guess = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"kind: unknown kind {kind!r}{guess}; kinds: {', '.join(members)}")
            cls = members[kind]
            fields = [f for f in dataclasses.fields(cls) if f.init]
            bad = [f"{key}: {unknown_member_key(key, kind, cls, members)}" for key in kwargs
                   if key not in {f.name for f in fields}]
            missing = [f"'{f.name}'" for f in fields if f.name not in kwargs
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if missing:
                bad.append(f"kind {kind!r} needs {' and '.join(missing)}")
            if bad:
                raise ValueError("; ".join(bad))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if self.KIND is None:
            raise TypeError("ModelConfig is the base of the model kinds; build one with ModelConfig(kind=...)")
        if self.kind != self.KIND:
            raise ValueError(f"kind {self.kind!r} given to {type(self).__name__} (kind {self.KIND!r}); build "
                             f"ModelConfig(kind={self.kind!r}, ...) instead")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout}")
        if self.max_length < 2:
            raise ValueError(f"'max_length' must be at least 2, got {self.max_length}")
        if self.compose_from < 0:
            raise ValueError(f"'compose_from' must be 0 (no composition) or a hidden width, got {self.compose_from}")


@dataclass(kw_only=True)
class _EncoderCore(ModelConfig):
    """Fields of every kind built on a transformer encoder, Hugging Face classifiers included."""

    encoder_dropout: float | None = None  # replaces every dropout rate inside the encoder (default: its config's)
    exits: Exits = None  # exit heads after these many layers (0: on the embeddings), all, or embeddings+all

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rate("encoder_dropout", self.encoder_dropout)


@dataclass(kw_only=True)
class EncoderModelConfig(_EncoderCore):
    """Fields of every transformer-encoder kind with a summon head: pooling, defer output and CRF."""

    pooling: Literal["mean", "cls", "pooler"] = "mean"  # how a sequence head pools tokens
    defer_output: bool = False  # one extra "defer" logit after the classes (learning-to-defer students)
    crf: bool = False  # token classification: a linear-chain CRF on the emissions (see summon.models.tagger)
    crf_over: Literal["words", "subtokens"] = "words"  # crf: chain the words, or sub-tokens with an X label


@dataclass(kw_only=True)
class PretrainedModelConfig(EncoderModelConfig):
    """A named encoder (``minilm-l6``, ``mpnet-base``, ``tiny-bert``, a folder or a hub id) with a new head."""

    KIND: ClassVar[str] = "pretrained"
    kind: Literal["pretrained"] = "pretrained"
    name: str


@dataclass(kw_only=True)
class TruncatedModelConfig(EncoderModelConfig):
    """Some layers of ``name``'s encoder or, by default, the teacher's: exactly one of first, every, layers."""

    KIND: ClassVar[str] = "truncated"
    kind: Literal["truncated"] = "truncated"
    name: str | None = None  # source encoder (default: the teacher's)
    first: int | None = None  # keep the first k layers
    every: int | None = None  # keep every k-th layer
    layers: list[int] | None = None  # keep these 0-based layers

    def __post_init__(self) -> None:
        super().__post_init__()
        if sum(x is not None for x in (self.first, self.every, self.layers)) != 1:
            raise ValueError("kind 'truncated' needs exactly one of 'first', 'every' or 'layers'")


@dataclass(kw_only=True)
class RandomModelConfig(EncoderModelConfig):
    """A fresh encoder shaped like ``name``'s or the teacher's, with the sizes given replacing its own."""

    KIND: ClassVar[str] = "random"
    kind: Literal["random"] = "random"
    name: str | None = None  # source encoder (default: the teacher's)
    num_layers: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None


@dataclass(kw_only=True)
class CopyModelConfig(EncoderModelConfig):
    """A copy of the teacher, encoder and head (its pooling must match the teacher's head)."""

    KIND: ClassVar[str] = "copy"
    kind: Literal["copy"] = "copy"


@dataclass(kw_only=True)
class HFModelConfig(_EncoderCore):
    """A fine-tuned Hugging Face sequence or token classifier, as it is or as the last exit of exits.

    With ``exits`` the exits' heads pool with the encoder's pooler (the last one is the model's own
    classifier, see :mod:`summon.models.hf`), as in *The Right Tool for the Job*.
    """

    KIND: ClassVar[str] = "hf"
    kind: Literal["hf"] = "hf"
    name: str  # a folder written by save_pretrained, or a hub id


@dataclass(kw_only=True)
class NgramModelConfig(ModelConfig):
    """A fastText-like bag of hashed word n-grams (sequence tasks only)."""

    KIND: ClassVar[str] = "ngram"
    kind: Literal["ngram"] = "ngram"
    num_buckets: int = 1 << 20  # hash buckets
    embed_dim: int = 64  # embedding width
    hidden_dim: int = 0  # optional hidden layer
    ngram_max: int = 2  # longest n-gram
    defer_output: bool = False  # one extra "defer" logit after the classes (learning-to-defer students)


AnyModelConfig = Annotated[
    PretrainedModelConfig | TruncatedModelConfig | RandomModelConfig | CopyModelConfig | HFModelConfig
    | NgramModelConfig,
    Tagged("kind", default="pretrained"),
]
"""The ``model`` section of a recipe: one of the kinds, chosen by ``kind`` (default ``pretrained``)."""


def model_kinds() -> dict[str, type[ModelConfig]]:
    """Kind name -> its config class."""
    return tagged_members(AnyModelConfig)[1]


def _check_rate(key: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"'{key}' must be in [0, 1), got {value}")


def needs_source(cfg: ModelConfig) -> bool:
    """Whether building ``cfg`` takes the teacher as its source (truncated, random or copy without ``name``)."""
    return isinstance(cfg, TruncatedModelConfig | RandomModelConfig | CopyModelConfig) and not getattr(
        cfg, "name", None)


@dataclass
class Source:
    """The model students are made from (usually the teacher): its encoder, tokenizer and head.

    ``head`` is None when the source's classifier cannot be reused (``why_no_head`` says why).
    """

    encoder: nn.Module
    tokenizer: Any
    head: nn.Module | None = None
    crf: nn.Module | None = None  # a CRF tagger's transitions, start and end (copied by kind 'copy')
    why_no_head: str | None = None

    @classmethod
    def of(cls, model: nn.Module, tokenizer: Any) -> Source | None:
        """The parts of a summon model or of a Hugging Face classifier (:class:`HFTaskModel`, converted by
        :func:`~summon.models.hf.to_summon_parts`); None for a model without an encoder (n-grams)."""
        if isinstance(model, HFTaskModel):
            encoder, head, why = to_summon_parts(model.hf_model, model.task)
            return cls(encoder, tokenizer, head, why_no_head=why)
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


def build_model(cfg: ModelConfig, task: str, num_labels: int, *, source: Source | None = None,
                labels: list[str] | None = None) -> Built:
    """Build a fresh model for ``task``.

    Args:
        cfg: the model config (one of the kinds, see :data:`AnyModelConfig`).
        task: classification, pair_classification or token_classification.
        num_labels: size of the label set.
        source: the model to truncate, copy or shape a random model after when ``cfg.name`` is unset
            (the teacher, for distillation).
        labels: the label names in id order; kind ``hf`` checks its model's ``id2label`` against them.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a model config (ModelConfig(kind=...)), got {type(cfg).__name__}")
    if isinstance(cfg, EncoderModelConfig):
        _check_encoder_options(cfg, task)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        if isinstance(cfg, NgramModelConfig):
            built = _build_ngram(cfg, task, num_labels)
        elif isinstance(cfg, HFModelConfig):
            built = _build_hf(cfg, task, num_labels, labels)
        else:
            built = _build_encoder_model(cfg, task, num_labels, source)
        if cfg.compose_from:
            built = _composed(built, cfg.compose_from)
    freeze(built.model, cfg.freeze)
    return built


def _composed(built: Built, previous_width: int) -> Built:
    """The model as a progressive-ensemble member reading the previous member's hidden layer."""
    arch = {"type": "composed", "task": built.architecture["task"], "num_labels": built.architecture["num_labels"],
            "previous_width": previous_width, "base": built.architecture}
    return Built(model=ComposedMember(built.model, previous_width), featurizer=built.featurizer, architecture=arch)


def _check_encoder_options(cfg: EncoderModelConfig, task: str) -> None:
    if cfg.defer_output and (cfg.exits is not None or task == "token_classification"):
        raise ValueError("defer_output is for single-exit sequence classifiers (cascade students)")
    if not cfg.crf:
        if cfg.crf_over != "words":
            raise ValueError(f"model.crf_over={cfg.crf_over!r} needs model.crf: true")
        return
    if task != "token_classification":
        raise ValueError(f"model.crf: a CRF tags sequences, but this task is {task!r}; set model.crf: false "
                         "or train on a token_classification data set")
    if cfg.exits is not None:
        raise ValueError("model.crf: not available with model.exits; use an encoder kind without exits")


def _build_encoder_model(cfg: EncoderModelConfig, task: str, num_labels: int, source: Source | None) -> Built:
    encoder, tokenizer, head = _encoder_for(cfg, source)
    if cfg.encoder_dropout is not None:
        set_encoder_dropout(encoder, cfg.encoder_dropout)
    arch = encoder_architecture(encoder, task, num_labels, cfg.pooling, cfg.dropout)
    if cfg.crf:
        arch["crf"] = {"over": cfg.crf_over}
    if cfg.defer_output:
        arch["defer_output"] = True
    if cfg.exits is not None:
        arch = _exits_architecture(arch, encoder, cfg.exits)
    model = model_for(arch, encoder)
    if head is not None:
        _reuse_head(model, head, arch)
        _reuse_crf(model, source)
    return Built(model=model, featurizer=featurizer_for(arch, tokenizer, cfg.max_length), architecture=arch)


def _exits_architecture(arch: dict[str, Any], encoder: nn.Module, exits: Exits) -> dict[str, Any]:
    """Exits after the chosen layers: sequence heads, or token heads for taggers (summon.adaptive.token_exit)."""
    return {**arch, "type": "exits", "exit_layers": resolve_exits(exits, Backbone(encoder).num_layers)}


def _build_hf(cfg: HFModelConfig, task: str, num_labels: int, labels: list[str] | None) -> Built:
    """A Hugging Face classifier as it is, or (with exits) exits on its encoder, its classifier the last one."""
    model, tokenizer = load_hf_task_model(cfg.name, task=task)
    resolve_labels(model.config, labels, cfg.name)
    if model.config.num_labels != num_labels:
        raise ValueError(f"model.name {cfg.name} has {model.config.num_labels} labels; the data has {num_labels}")
    featurizer = TokenizerFeaturizer(tokenizer, max_length=cfg.max_length)
    if cfg.exits is None:
        if cfg.encoder_dropout is not None:
            set_encoder_dropout(model.hf_model, cfg.encoder_dropout)
        model.train()
        return Built(model=model, featurizer=featurizer, architecture=hf_architecture(model))
    encoder, head, why = to_summon_parts(model.hf_model, task, dropout=cfg.dropout)
    if head is None:
        raise ValueError(f"model.exits on {cfg.name}: {why}")
    if cfg.encoder_dropout is not None:
        set_encoder_dropout(encoder, cfg.encoder_dropout)
    arch = _exits_architecture(encoder_architecture(encoder, task, num_labels, "pooler", cfg.dropout), encoder,
                               cfg.exits)
    exits_model = model_for(arch, encoder)
    _reuse_head(exits_model, head, arch)
    return Built(model=exits_model, featurizer=featurizer, architecture=arch)


def featurizer_for(arch: dict[str, Any], tokenizer: Any, max_length: int) -> TokenizerFeaturizer:
    """The tokenizer featurizer; a CRF over sub-tokens labels non-first sub-tokens ``X`` (id ``num_labels``)."""
    if arch.get("crf", {}).get("over") == "subtokens":
        return TokenizerFeaturizer(tokenizer, max_length=max_length, subtoken_label="x",
                                   x_label_id=arch["num_labels"])
    return TokenizerFeaturizer(tokenizer, max_length=max_length)


def _encoder_for(cfg: EncoderModelConfig, source: Source | None) -> tuple[nn.Module, Any, nn.Module | None]:
    """The encoder to build on, its tokenizer, and a trained head to reuse (``copy`` only)."""
    name = getattr(cfg, "name", None)
    if name:
        encoder, tokenizer, _ = load_encoder(name, seed=cfg.init_seed)
        source = Source(encoder, tokenizer)
    elif source is None:
        raise ValueError(f"kind '{cfg.kind}' needs 'name' or a teacher to copy its encoder from")
    if isinstance(cfg, TruncatedModelConfig):
        keep = layer_selection(Backbone(source.encoder).num_layers, first=cfg.first, every=cfg.every,
                               indices=cfg.layers)
        return keep_layers(source.encoder, keep), source.tokenizer, None
    if isinstance(cfg, RandomModelConfig):
        return _random_like(source.encoder, cfg), source.tokenizer, None
    if isinstance(cfg, CopyModelConfig):
        if source.head is None:
            raise ValueError(f"kind 'copy' copies the teacher's encoder and classifier, but "
                             f"{source.why_no_head or 'the teacher has no classifier to copy'}. Use kind "
                             "'truncated' or 'random' (a new head) instead")
        return copy.deepcopy(source.encoder), source.tokenizer, source.head
    return source.encoder, source.tokenizer, None


def _reuse_head(model: nn.Module, head: nn.Module, arch: dict[str, Any]) -> None:
    """Put the source's trained head on the last layer: the model's own head, or its last exit there.

    Raises:
        ValueError: If the source's head pools differently from ``arch`` (the copy would not be one).
    """
    target = getattr(model, "head", None)
    if hasattr(model, "heads"):
        layers = Backbone(model.backbone.model).num_layers
        target = model.heads[-1] if model.exit_layers[-1] == layers else None
    if target is None:
        return
    pooling = getattr(head, "pooling", arch["pooling"])
    if pooling != arch["pooling"]:
        raise ValueError(f"model.pooling: the teacher's classifier pools with {pooling!r} but this model with "
                         f"{arch['pooling']!r}; set model.pooling: {pooling} so the copy keeps the classifier")
    same_shape = all(a.shape == b.shape for a, b in zip(head.state_dict().values(), target.state_dict().values(),
                                                         strict=False))
    if same_shape:
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


def _random_like(encoder: nn.Module, cfg: RandomModelConfig) -> nn.Module:
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


def _build_ngram(cfg: NgramModelConfig, task: str, num_labels: int) -> Built:
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
    if arch.get("type") == "hf":
        return hf_model_from_architecture(arch)
    if arch.get("type") == "composed":
        return ComposedMember(model_from_architecture(arch["base"]), int(arch["previous_width"]))
    raise ValueError(f"unknown architecture type {arch.get('type')!r}; this predictor needs a newer summon?")
