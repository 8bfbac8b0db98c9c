"""Classifier exits attached to an unmodified encoder (The Right Tool for the Job, Schwartz et al. 2020).

A head sits after each chosen layer. Training runs every layer and every head (:meth:`forward` returns all
exits' logits); inference runs the encoder one stage at a time and may stop after any exit.

Departures from the paper's code (``allenai/sledgehammer``), on purpose:

* each head pools with summon's :class:`SequenceHead` (mean pooling by default; ``pooling='pooler'`` uses the
  encoder's own pooler on every exit as the paper does) instead of the paper's weighted sum over the
  pooled vectors of all layers up to the exit, whose mixing weights the released code never actually
  updates (it re-wraps them as new parameters after the optimizer was built);
* exit decisions are made per row (the released code takes ``max`` over the whole batch, so it only works
  at batch size 1), and finished rows leave the batch.

The model implements the staged interface that :mod:`summon.adaptive.early_exit` drives:
``begin(batch) -> state``, ``run_to(k, state) -> state`` (layers up to exit ``k``),
``exit_logits(k, state) -> [B, C]``, ``keep(state, rows) -> state``, and ``unpack``/``pack`` for
regrouping rows from several batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from summon.models.backbone import Backbone, EncoderState


def resolve_exits(exits: Sequence[int] | str, num_layers: int) -> list[int]:
    """Exit positions as layer counts: ``'all'`` -> 1..L; ``'embeddings+all'`` -> 0..L; a list is checked and sorted.

    Exit 0 reads the embeddings before the first layer (with mean pooling: a nearly free bag of word vectors).
    Our addition, not the paper's, whose earliest exit follows the first layer.
    """
    if exits in ("all", "embeddings+all"):
        return list(range(0 if exits == "embeddings+all" else 1, num_layers + 1))
    if isinstance(exits, str):
        raise ValueError(f"exits must be 'all', 'embeddings+all' or a list of layer numbers, got {exits!r}")
    chosen = sorted({int(e) for e in exits})
    if not chosen or chosen[0] < 0 or chosen[-1] > num_layers:
        raise ValueError(f"exits must be layer numbers in 0..{num_layers} (after that many layers; 0 reads the "
                         f"embeddings), got {list(exits)}")
    return chosen


class MultiExitClassifier(nn.Module):
    """A :class:`Backbone` with one sequence head after each layer in ``exit_layers``.

    Args:
        backbone: the encoder.
        exit_layers: 1-based layer counts, ascending; an exit after the last layer is the full model.
        heads: one head per exit, called as ``head(hidden, mask, pooler)``.
    """

    def __init__(self, backbone: Backbone, exit_layers: Sequence[int], heads: Sequence[nn.Module]):
        super().__init__()
        if len(exit_layers) != len(heads):
            raise ValueError(f"{len(exit_layers)} exit layers but {len(heads)} heads")
        self.backbone = backbone
        self.exit_layers = list(exit_layers)
        self.heads = nn.ModuleList(heads)
        if all(getattr(h, "pooling", None) != "pooler" for h in heads) and self.pooler is not None:
            self.pooler.requires_grad_(False)  # unused: no optimizer state, nothing for DDP to wait for

    @property
    def pooler(self) -> nn.Module | None:
        return getattr(self.backbone.model, "pooler", None)

    @property
    def num_stages(self) -> int:
        return len(self.exit_layers)

    # --- staged interface -------------------------------------------------------------------------

    def begin(self, batch: dict[str, torch.Tensor]) -> EncoderState:
        return self.backbone.start(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))

    def run_to(self, stage: int, state: EncoderState) -> EncoderState:
        """Run the layers up to exit ``stage`` (none if already there)."""
        while state.layer < self.exit_layers[stage]:
            state = self.backbone.step(state)
        return state

    def exit_logits(self, stage: int, state: EncoderState) -> torch.Tensor:
        if state.layer != self.exit_layers[stage]:
            raise ValueError(f"exit {stage} reads layer {self.exit_layers[stage]}, the state is at {state.layer}")
        return self.heads[stage](state.hidden, state.mask, self.pooler)

    def keep(self, state: EncoderState, rows: torch.Tensor) -> EncoderState:
        return self.backbone.select(state, rows, trim=True)

    def unpack(self, state: EncoderState, rows: torch.Tensor) -> list[tuple[EncoderState, int]]:
        """The given rows as unpadded one-row states, each with its length (for regrouping)."""
        return self.backbone.unpack(state, rows)

    def pack(self, pieces: Sequence[EncoderState]) -> EncoderState:
        """One right-padded batch of one-row states at the same layer."""
        return self.backbone.pack(pieces)

    # --- training ---------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of every exit at full depth: [B, S, C] (training)."""
        state = self.begin(batch)
        out = []
        for k in range(self.num_stages):
            state = self.run_to(k, state)
            out.append(self.exit_logits(k, state))
        return torch.stack(out, dim=1)

    def full_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The plain full model: every layer, only the last read-out (no intermediate exits). [B, C]."""
        last = self.num_stages - 1
        return self.exit_logits(last, self.run_to(last, self.begin(batch)))
