"""Hugging Face task models in summon and back: ``...ForSequenceClassification`` / ``...ForTokenClassification``.

Three things live here, all on the unmodified Hugging Face classes:

* :class:`HFTaskModel` runs a fine-tuned HF classifier as it is, with summon's batch dict in and logits out,
  so it can be a teacher, a cascade stage or a student (``model.kind: hf``);
* :func:`to_summon_parts` turns an HF classifier into summon's pieces, an encoder for :class:`Backbone` and
  a head (:class:`SequenceHead` with ``pooling='pooler'`` or :class:`TokenHead`) computing the same logits, so
  exits can be attached with the HF model's own classifier as the last exit;
* :func:`to_hf_task_model` is the inverse, for ``summon export --format hf``.

The correspondence, per family (the same in both directions; in eval mode the logits are equal):

==========================  ======================================================================
sequence, ``bert``           ``pooler`` (dense + tanh on [CLS]) + ``classifier`` = summon's pooler head
sequence, ``roberta``,       ``classifier.dense`` + tanh on <s> + ``classifier.out_proj`` = a pooler
``xlm-roberta``, ``mpnet``   (dense + tanh on the first token, the same module as the base's pooler) + linear
tokens, all six families     ``classifier`` (dropout + linear per sub-token) = :class:`TokenHead`
==========================  ======================================================================

ELECTRA's sequence head (dense + GELU) and DistilBERT's (``pre_classifier`` + ReLU) have no summon
equivalent: such models load and run as :class:`HFTaskModel`, but exits cannot reuse their classifier and
summon heads cannot be exported to them.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from summon.models.backbone import FAMILIES
from summon.models.heads import SequenceHead, TokenHead

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
SEQUENCE_TASKS = ("classification", "pair_classification")
# model_type -> (the pooler's dense layer, the final linear layer) in the sequence classifier's state dict;
# "{base}" is the task model's base_model_prefix.
SEQUENCE_TAILS: dict[str, tuple[str, str]] = {
    "bert": ("{base}.pooler.dense", "classifier"),
    "roberta": ("classifier.dense", "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", "classifier.out_proj"),
    "mpnet": ("classifier.dense", "classifier.out_proj"),
}
TOKEN_TAIL = "classifier"  # every family: dropout + linear per sub-token
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


class HFTaskModel(nn.Module):
    """A Hugging Face sequence or token classifier used as it is, called like summon's models.

    Args:
        hf_model: an ``AutoModelForSequenceClassification`` or ``AutoModelForTokenClassification`` model.
        task: ``classification``, ``pair_classification`` or ``token_classification``.

    ``forward(batch)`` takes summon's batch dict (``input_ids`` [B, L], ``attention_mask`` [B, L], optional
    ``token_type_ids`` [B, L]; other keys such as ``word_starts`` are ignored) and returns logits [B, C] for
    sequence tasks or [B, L, C], one row per sub-token, for tagging (read back per word by
    :func:`summon.models.inference.predict_logits`). Inputs the model's ``forward`` does not take (DistilBERT has
    no token types) are left out.
    """

    def __init__(self, hf_model: nn.Module, task: str):
        super().__init__()
        check_task(hf_model.config, task, getattr(hf_model, "name_or_path", "") or type(hf_model).__name__)
        self.hf_model = hf_model
        self.task = task
        self.inputs = forward_inputs(hf_model)

    @property
    def config(self) -> Any:
        return self.hf_model.config

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: batch[k] for k in self.inputs if k in batch}
        return self.hf_model(**kwargs, return_dict=True).logits


def forward_inputs(hf_model: nn.Module) -> tuple[str, ...]:
    """Which of ``input_ids``, ``attention_mask``, ``token_type_ids`` the model's ``forward`` takes."""
    params = inspect.signature(hf_model.forward).parameters
    return tuple(k for k in _INPUTS if k in params)


def hf_task_of(config: Any) -> str | None:
    """``classification`` for a sequence classifier, ``token_classification`` for a token classifier, else None
    (read from ``config.architectures``)."""
    names = list(getattr(config, "architectures", None) or [])
    if any(n.endswith("ForTokenClassification") for n in names):
        return "token_classification"
    if any(n.endswith("ForSequenceClassification") for n in names):
        return "classification"
    return None


def check_task(config: Any, task: str, name: str) -> None:
    """Raise a ValueError unless a model with ``config`` can serve ``task``."""
    if task not in (*SEQUENCE_TASKS, "token_classification"):
        raise ValueError(f"unknown task {task!r}; use classification, pair_classification or token_classification")
    own = hf_task_of(config)
    if own is not None and (own == "token_classification") != (task == "token_classification"):
        raise ValueError(f"{name} is a {'token' if own == 'token_classification' else 'sequence'} classifier "
                         f"({', '.join(config.architectures)}), but the task is {task}")
    if (config.num_labels or 0) < 2 or getattr(config, "problem_type", None) in ("regression",
                                                                               "multi_label_classification"):
        raise ValueError(f"{name}: summon runs single-label classifiers with at least 2 labels; this model has "
                         f"num_labels={config.num_labels}, problem_type={getattr(config, 'problem_type', None)!r}")


def hf_task_class(task: str) -> Any:
    """The Auto class for ``task``: sequence or token classification."""
    return AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification


def hf_labels(config: Any) -> list[str]:
    """Label names in id order from ``config.id2label``."""
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def resolve_labels(config: Any, expected: Sequence[str] | None, name: str) -> list[str]:
    """The labels to use for an HF model: its ``id2label``, matched against ``expected`` (the data's labels).

    Generic names (``LABEL_0``, ``LABEL_1``, ... : the model does not name its classes) and names equal up to
    case take the expected spelling; any other difference raises a ValueError saying how to fix it.
    """
    own = hf_labels(config)
    if expected is None or own == list(expected):
        return own
    expected = list(expected)
    if len(own) == len(expected):
        if all(_GENERIC_LABEL.fullmatch(o) for o in own):
            logger.warning("%s names its classes %s; taking them as %s in that order", name, own, expected)
            return expected
        if [o.lower() for o in own] == [e.lower() for e in expected]:
            return expected
    raise ValueError(f"{name}: its labels {own} (id2label in config.json) differ from the data's {expected}. "
                     "List the data's labels in the model's order with data.train.labels (and data.eval.labels), "
                     "or correct id2label in the model's config.json.")


def strip_prefix(source: str) -> str:
    """``hf:ID`` -> ``ID``; anything else unchanged."""
    return source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source


def load_hf_task_model(source: str, *, task: str | None = None) -> tuple[HFTaskModel, Any]:
    """Load a fine-tuned HF sequence or token classifier and its (fast) tokenizer, weights in float32.

    Args:
        source: a folder written by ``save_pretrained`` or a hub id (``hf:`` prefix allowed).
        task: the task to serve; default from ``config.architectures`` (a sequence classifier serves
            ``classification`` unless told ``pair_classification``).

    Returns:
        (model, tokenizer).

    Raises:
        ValueError: If it cannot be loaded, is not a single-label sequence or token classifier, does not fit
            ``task``, or has no fast tokenizer.
    """
    source = strip_prefix(str(source))
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load a Hugging Face model from {source!r}: {str(err).splitlines()[0]}. "
                         "Give a folder written by save_pretrained (with config.json) or a hub id; "
                         "offline, only folders and cached hub models load.") from None
    task = task or hf_task_of(config)
    if task is None:
        raise ValueError(f"{source}: config.json names no sequence or token classifier (architectures: "
                         f"{getattr(config, 'architectures', None)}); summon loads ...ForSequenceClassification "
                         "and ...ForTokenClassification models")
    check_task(config, task, source)
    hf_model = hf_task_class(task).from_pretrained(source, dtype=torch.float32)
    return HFTaskModel(hf_model.eval(), task), load_tokenizer(source, task)


def load_tokenizer(source: str, task: str) -> Any:
    """The model's fast tokenizer; byte-level BPE tokenizers get ``add_prefix_space`` for pre-split words."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"{source}: no tokenizer beside the model ({str(err).splitlines()[0]}). Save it with "
                         "tokenizer.save_pretrained(the same folder).") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: {type(tokenizer).__name__} is a slow tokenizer; summon needs a fast one "
                         "(save the folder with a tokenizer.json)")
    if task == "token_classification" and getattr(tokenizer, "add_prefix_space", None) is False:
        tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True)
    return tokenizer


def hf_architecture(model: HFTaskModel) -> dict[str, Any]:
    """The JSON-able description that :func:`hf_model_from_architecture` rebuilds ``model`` from."""
    return {"type": "hf", "task": model.task, "num_labels": int(model.config.num_labels),
            "hf_class": type(model.hf_model).__name__, "hf_config": model.config.to_diff_dict()}


def hf_model_from_architecture(arch: dict[str, Any]) -> HFTaskModel:
    """A randomly initialised :class:`HFTaskModel` of the saved shape (weights are loaded afterwards)."""
    hf = dict(arch["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    return HFTaskModel(hf_task_class(arch["task"]).from_config(config), arch["task"])


# --- HF classifier -> summon encoder + head ------------------------------------------------------------


def _linear(state: dict[str, torch.Tensor], key: str, target: nn.Linear) -> None:
    with torch.no_grad():
        target.weight.copy_(state[f"{key}.weight"])
        target.bias.copy_(state[f"{key}.bias"])


def to_summon_parts(hf_model: nn.Module, task: str, *, dropout: float = 0.1,
                    ) -> tuple[nn.Module, nn.Module | None, str | None]:
    """An HF classifier as summon's encoder and head, computing the same logits.

    Args:
        hf_model: a ``...ForSequenceClassification`` or ``...ForTokenClassification`` model.
        task: the task it serves.
        dropout: the summon head's dropout (the HF model's own rate is in its config).

    Returns:
        (encoder, head, why): a new base encoder (``AutoModel``, with a pooler holding the classifier's dense
        layer for sequence tasks) carrying copies of the weights; the head (:class:`SequenceHead` pooling with
        ``'pooler'``, or :class:`TokenHead`) with the classifier's weights, or None when the classifier has no
        summon equivalent, and then ``why`` says so.

    Raises:
        ValueError: If the encoder is not a family summon runs layer by layer.
    """
    config = copy.deepcopy(hf_model.config)
    if config.model_type not in FAMILIES:
        raise ValueError(f"summon runs {', '.join(FAMILIES)} encoders layer by layer, not '{config.model_type}'; "
                         "such a model can be a teacher or a cascade stage as it is, but not the source of a "
                         "student or of exits")
    state = {k: v.detach() for k, v in hf_model.state_dict().items()}
    base = hf_model.base_model_prefix
    with torch.random.fork_rng():  # the random init is overwritten; it must not move the caller's RNG
        encoder = AutoModel.from_config(config)
    own = {k[len(base) + 1:]: v for k, v in state.items() if k.startswith(base + ".")}
    missing, unexpected = encoder.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(f"{type(hf_model).__name__}: its encoder weights do not fit {type(encoder).__name__} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    hidden = int(getattr(config, "hidden_size", None) or config.dim)
    if task == "token_classification":
        head = TokenHead(hidden, config.num_labels, dropout)
        _linear(state, TOKEN_TAIL, head.classifier)
        return encoder.eval(), head, None
    tail = SEQUENCE_TAILS.get(config.model_type)
    if tail is None:
        why = (f"the {config.model_type} sequence classifier's head ({type(hf_model).__name__}) is not "
               f"pooler + linear; summon reuses the classifiers of {', '.join(SEQUENCE_TAILS)} models")
        return encoder.eval(), None, why
    pooler_key, linear_key = (k.format(base=base) for k in tail)
    _linear(state, pooler_key, encoder.pooler.dense)
    head = SequenceHead(hidden, config.num_labels, "pooler", dropout)
    _linear(state, linear_key, head.classifier)
    return encoder.eval(), head, None


# --- summon encoder + head -> HF classifier ------------------------------------------------------------


def export_problem(arch: dict[str, Any]) -> str | None:
    """Why a summon model of architecture ``arch`` has no standard HF equivalent, or None when it has one."""
    kind = arch.get("type")
    if kind == "ngram":
        return ("a bag-of-n-grams model has no Hugging Face equivalent; export a transformer teacher or student "
                "(model.kind pretrained, truncated, random or copy)")
    if kind == "exits":
        return (f"an early-exit model has {len(arch.get('exit_layers', []))} classifiers and an exit policy; "
                "Hugging Face classifiers have one. Export the model the exits were attached to (the teacher), "
                "or train a single-exit model without model.exits")
    if kind == "hf":
        return None
    if kind != "encoder":
        return f"unknown architecture type {kind!r}"
    if "crf" in arch:
        return ("a CRF tagger decodes with its transition scores (Viterbi), which AutoModelForTokenClassification "
                "has no place for; train a softmax tagger (model.crf: false) to export")
    if arch.get("defer_output"):
        return "a learned defer output has no Hugging Face equivalent; train the student without model.defer_output"
    model_type = arch["hf_config"].get("model_type")
    if model_type not in FAMILIES:
        return f"encoder type {model_type!r} is not one summon exports ({', '.join(FAMILIES)})"
    if arch["task"] == "token_classification":
        return None
    if arch["pooling"] != "pooler" or model_type not in SEQUENCE_TAILS:
        return (f"summon's sequence head here pools with {arch['pooling']!r} on a {model_type} encoder; the "
                "standard sequence classifiers pool with the encoder's pooler (dense + tanh on the first token), "
                f"which summon matches for {', '.join(SEQUENCE_TAILS)} encoders. Export it with --format "
                "sentence-transformers (what --format auto picks for it), or train with model.pooling: pooler on "
                "one of those")
    return None


def to_hf_task_model(model: nn.Module, arch: dict[str, Any], labels: Sequence[str]) -> nn.Module:
    """A standard HF ``...ForSequenceClassification`` / ``...ForTokenClassification`` with ``model``'s weights.

    Args:
        model: a summon :class:`~summon.models.heads.EncoderClassifier` or an :class:`HFTaskModel`.
        arch: its architecture dict (from the manifest).
        labels: label names in id order (written to ``id2label`` / ``label2id``).

    Raises:
        ValueError: If the model has no standard equivalent (see :func:`export_problem`).
    """
    problem = export_problem(arch)
    if problem:
        raise ValueError(f"cannot export to Hugging Face format: {problem}.")
    if isinstance(model, HFTaskModel):
        hf_model = copy.deepcopy(model.hf_model)
        _set_labels(hf_model.config, labels)
        return hf_model.eval()
    task = arch["task"]
    config = copy.deepcopy(model.backbone.model.config)
    _set_labels(config, labels)
    if hasattr(config, "classifier_dropout"):
        config.classifier_dropout = arch["dropout"]
    hf_model = hf_task_class(task).from_config(config)
    base = hf_model.base_model_prefix
    encoder = {k: v.detach() for k, v in model.backbone.model.state_dict().items()}
    head = {k: v.detach() for k, v in model.head.classifier.state_dict().items()}
    pooler = {k.removeprefix("pooler.dense."): v for k, v in encoder.items() if k.startswith("pooler.dense.")}
    state = {f"{base}.{k}": v for k, v in encoder.items() if not k.startswith("pooler.")}
    if task == "token_classification":
        state.update({f"{TOKEN_TAIL}.{k}": v for k, v in head.items()})
    else:
        pooler_key, linear_key = (k.format(base=base) for k in SEQUENCE_TAILS[config.model_type])
        state.update({f"{pooler_key}.{k}": v for k, v in pooler.items()})
        state.update({f"{linear_key}.{k}": v for k, v in head.items()})
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export to {type(hf_model).__name__} left weights unmatched (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}); please report this")
    return hf_model.eval()


def _set_labels(config: Any, labels: Sequence[str]) -> None:
    config.id2label = {i: str(label) for i, label in enumerate(labels)}
    config.label2id = {str(label): i for i, label in enumerate(labels)}
