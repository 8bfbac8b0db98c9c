"""Members of a progressive ensemble: any single-head student, optionally composed with the previous member.

B-DISTIL's ensembles use "function composition over intermediate activations", the connection being "between
the last layers of the network" (the paper's Figure 4; ``shared/PAPERS.md`` §2). Our reconstruction: member
``t`` adds a learned projection of member ``t−1``'s last hidden layer (the vector its classifier reads) to its
own last hidden layer, before its classifier::

    z_t = body_t(x) + W_t · z_{t−1},   f_t = classifier_t(z_t)

``W_t`` starts at zero, so a composed member starts as the plain one. Earlier members are frozen, so their
``z`` can be computed once and handed on (``batch["previous_hidden"]``). Where the projection enters (the last
hidden layer, added) is our choice; the paper's architectures (its Tables 2–7) could not be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from summon.data.batching import to_device
from summon.data.features import collate
from summon.models.heads import EncoderClassifier, last_hidden, pool
from summon.models.ngram import NgramClassifier


def _body_and_classifier(model: nn.Module) -> tuple[Any, nn.Linear]:
    """``body(batch) -> z`` (what the final linear layer reads) and that layer, for the single-head models."""
    if isinstance(model, EncoderClassifier) and hasattr(model.head, "pooling"):
        head = model.head

        def body(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            hidden, mask = last_hidden(model.backbone, batch)
            return head.dropout(pool(hidden, mask, head.pooling, model.pooler))

        return body, head.classifier
    if isinstance(model, NgramClassifier):
        return lambda batch: model.classifier[:-1](model.embedding(batch["input_ids"])), model.classifier[-1]
    raise ValueError(f"a progressive-ensemble member must be a sequence classifier with one head (an encoder kind "
                     f"or ngram), got {type(model).__name__}")


def hidden_width(model: nn.Module) -> int:
    """Width of the last hidden layer the member hands on."""
    if isinstance(model, ComposedMember):
        return model.width
    return _body_and_classifier(model)[1].in_features


def member_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, C], last hidden [B, H])`` of a member, composed or plain."""
    if isinstance(model, ComposedMember):
        return model.forward_with_hidden(batch)
    body, classifier = _body_and_classifier(model)
    z = body(batch)
    return classifier(z), z


class ComposedMember(nn.Module):
    """A single-head student that also reads the previous member's last hidden layer (see the module docstring).

    Args:
        base: an :class:`EncoderClassifier` (sequence head) or :class:`NgramClassifier`.
        previous_width: width of the previous member's hidden layer ``z_{t−1}``.
    """

    def __init__(self, base: nn.Module, previous_width: int):
        super().__init__()
        if previous_width < 1:
            raise ValueError(f"previous_width must be positive, got {previous_width}")
        self.base = base
        self.width = _body_and_classifier(base)[1].in_features
        self.project = nn.Linear(previous_width, self.width, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward_with_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        previous = batch.get("previous_hidden")
        if previous is None:
            raise ValueError("a composed ensemble member needs batch['previous_hidden'] (the previous member's last "
                             "hidden layer); run it inside its ensemble")
        body, classifier = _body_and_classifier(self.base)
        z = body(batch)  # the projection reads z's dtype, not its weight's: an int8 projection has no float weight
        z = z + self.project(previous.to(z.dtype))
        return classifier(z), z

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_with_hidden(batch)[0]


def member_batch(featurizer: Any, task: str, examples: Sequence[dict[str, Any]], previous: torch.Tensor | None,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """A member's batch: the examples featurized by its own featurizer, and the previous member's hidden layer."""
    batch = to_device(collate(featurizer.encode(list(examples), task), featurizer.pad_id), device)
    if previous is not None:
        batch["previous_hidden"] = previous.to(device)
    return batch


@torch.inference_mode()
def member_outputs(model: nn.Module, featurizer: Any, task: str, examples: Sequence[dict[str, Any]],
                   previous: torch.Tensor | None = None, *, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's logits ``[N, C]`` and last hidden layer ``[N, H]`` on every example (CPU, float32), in eval mode.

    ``previous`` is the previous member's hidden layer ``[N, H']`` for a composed member.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].get("text") or ""))
    logits: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    hidden: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            prev = previous[idx] if previous is not None else None
            out, z = member_forward(model, member_batch(featurizer, task, [examples[i] for i in idx], prev, device))
            for j, i in enumerate(idx):
                logits[i], hidden[i] = out[j].float().cpu(), z[j].float().cpu()
    finally:
        model.train(was_training)
    if not examples:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.stack(logits), torch.stack(hidden)
