"""Run a Hugging Face encoder layer by layer with its own modules, exposing every layer's hidden state.

No modeling file is copied or patched: :class:`Backbone` holds the unmodified model and calls its
embedding module and each of its layer modules in turn, building the attention mask the way the model
does (``transformers.masking_utils.create_bidirectional_mask`` in transformers 5). A small
:class:`Family` per architecture says where the layers live and what extra arguments they take.
This is timm's ``forward_intermediates`` contract applied to someone else's model.

The state between layers (:class:`EncoderState`) keeps the 2-D padding mask, so an adaptive executor
can drop finished rows and trim padding, then rebuild the per-layer arguments for the smaller batch.
Padding must be on the right (the tokenizers' default and what :func:`summon.data.collate` does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from summon.core.registry import suggest


@dataclass(frozen=True)
class Family:
    """How to drive one architecture: its layer list, its embeddings and the layers' extra inputs."""

    layers_path: str
    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]
    layer_kwargs: Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, Any]]


def _bert_embed(model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    return model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


def _ids_only_embed(model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    return model.embeddings(input_ids=input_ids)


def _mask_kwargs(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    return {"attention_mask": create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)}


def _mpnet_kwargs(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    kwargs = _mask_kwargs(model, hidden, mask)
    kwargs["position_bias"] = model.encoder.compute_position_bias(hidden)  # relative-position buckets
    return kwargs


FAMILIES: dict[str, Family] = {
    "bert": Family("encoder.layer", _bert_embed, _mask_kwargs),
    "roberta": Family("encoder.layer", _bert_embed, _mask_kwargs),
    "xlm-roberta": Family("encoder.layer", _bert_embed, _mask_kwargs),
    "electra": Family("encoder.layer", _bert_embed, _mask_kwargs),
    "mpnet": Family("encoder.layer", _ids_only_embed, _mpnet_kwargs),
    "distilbert": Family("transformer.layer", _ids_only_embed, _mask_kwargs),
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face base model (``BertModel``, ``MPNetModel``, ...)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"summon cannot run '{model_type}' encoders layer by layer yet.{suggest(str(model_type), list(FAMILIES))} "
            f"Supported: {', '.join(FAMILIES)}. Pass the base model (AutoModel), not a task model."
        )
    family = FAMILIES[model_type]
    try:
        _get_path(model, family.layers_path)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no '{family.layers_path}': pass the base model "
                         "(AutoModel.from_pretrained), not a task model such as ...ForSequenceClassification") from None
    return family


def _get_path(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass
class EncoderState:
    """Hidden states between layers.

    Attributes:
        hidden: [B, L, H] hidden states after the last layer run (the embeddings before any).
        mask: [B, L] 1 for real tokens, 0 for padding (right-padded).
        layer: how many layers have run.
        kwargs: the per-layer arguments built for this batch and length (mask, position bias, ...).
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    layer: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


class Backbone(nn.Module):
    """An unmodified Hugging Face encoder, run one layer at a time.

    Args:
        model: a base encoder (``AutoModel``): BERT, RoBERTa, XLM-R, ELECTRA, MPNet or DistilBERT.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.family = family_of(model)
        self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return _get_path(self.model, self.family.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def start(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        """Embed the inputs ([B, L] ids) and build the per-layer arguments."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.family.embed(self.model, input_ids, token_type_ids)
        return self._with_kwargs(EncoderState(hidden=hidden, mask=attention_mask))

    def _with_kwargs(self, state: EncoderState) -> EncoderState:
        state.kwargs = self.family.layer_kwargs(self.model, state.hidden, state.mask)
        return state

    def step(self, state: EncoderState) -> EncoderState:
        """Run the next layer; returns a new state (the input state is not modified)."""
        if state.layer >= self.num_layers:
            raise ValueError(f"all {self.num_layers} layers have already run")
        out = self.layers[state.layer](state.hidden, **state.kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        return EncoderState(hidden=hidden, mask=state.mask, layer=state.layer + 1, kwargs=state.kwargs)

    def select(self, state: EncoderState, rows: torch.Tensor, trim: bool = True) -> EncoderState:
        """Keep only ``rows`` (indices or a bool mask) and, if ``trim``, cut padding to the longest kept row."""
        hidden, mask = state.hidden[rows], state.mask[rows]
        if trim and mask.shape[0] > 0:
            length = int(mask.sum(dim=1).max().item())
            hidden, mask = hidden[:, :length], mask[:, :length]
        return self._with_kwargs(EncoderState(hidden=hidden, mask=mask, layer=state.layer))

    def unpack(self, state: EncoderState, rows: torch.Tensor) -> list[tuple[EncoderState, int]]:
        """Each of ``rows`` as a one-row state cut to its own length, with that length (no layer kwargs)."""
        lengths = state.mask[rows].sum(dim=1).tolist()
        return [(EncoderState(hidden=state.hidden[r, :n], mask=state.mask[r, :n], layer=state.layer), int(n))
                for r, n in zip(rows.tolist(), lengths, strict=True)]

    def pack(self, pieces: Sequence[EncoderState]) -> EncoderState:
        """Right-pad one-row states (from :meth:`unpack`, all at one layer) into a batch."""
        layers = {p.layer for p in pieces}
        if len(layers) != 1:
            raise ValueError(f"can only pack states at one layer, got layers {sorted(layers)}")
        hidden = torch.nn.utils.rnn.pad_sequence([p.hidden for p in pieces], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([p.mask for p in pieces], batch_first=True)
        return self._with_kwargs(EncoderState(hidden=hidden, mask=mask, layer=layers.pop()))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, *, layers: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states after the requested layers (1-based counts; default every layer).

        Stops after the deepest requested layer, so asking for ``[2]`` runs two layers only.
        Returns a list of [B, L, H] tensors in the order of ``layers``.
        """
        wanted = list(range(1, self.num_layers + 1)) if layers is None else list(layers)
        bad = [k for k in wanted if not 0 <= k <= self.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: this encoder has {self.num_layers} layers (0 = embeddings)")
        state = self.start(input_ids, attention_mask, token_type_ids)
        outputs = {0: state.hidden}
        for _ in range(max(wanted, default=0)):
            state = self.step(state)
            outputs[state.layer] = state.hidden
        return [outputs[k] for k in wanted]


def keep_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A deep copy of a base encoder that keeps only the layers at 0-based indices ``keep``, in order.

    Used for DistilBERT/PKD-style students: the first k layers, or every k-th layer.
    """
    family = family_of(model)
    layers = _get_path(model, family.layers_path)
    keep = list(keep)
    if not keep or any(not 0 <= i < len(layers) for i in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"layers to keep must be distinct indices in 0..{len(layers) - 1}, got {keep}")
    student = copy.deepcopy(model)
    copied = _get_path(student, family.layers_path)  # the copy's own layers share the copy's config
    parent_path, _, name = family.layers_path.rpartition(".")
    setattr(_get_path(student, parent_path), name, nn.ModuleList([copied[i] for i in keep]))
    student.config.num_hidden_layers = len(keep)
    return student


def layer_selection(num_layers: int, *, first: int | None = None, every: int | None = None,
                    indices: Sequence[int] | None = None) -> list[int]:
    """0-based layer indices for a truncated student: the ``first`` k, ``every`` k-th, or explicit ``indices``.

    ``every=k`` keeps layers k-1, 2k-1, ... so the last layer is always kept when k divides the depth.
    """
    given = [x is not None for x in (first, every, indices)]
    if sum(given) != 1:
        raise ValueError("choose exactly one of first=k, every=k or indices=[...] for a truncated student")
    if first is not None:
        if not 1 <= first <= num_layers:
            raise ValueError(f"first={first} must be in 1..{num_layers}")
        return list(range(first))
    if every is not None:
        if not 1 <= every <= num_layers:
            raise ValueError(f"every={every} must be in 1..{num_layers}")
        return list(range(every - 1, num_layers, every))
    return list(indices)
