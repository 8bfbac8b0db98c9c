"""Linear-chain CRF: batched, masked, in log space — NLL by the forward algorithm, Viterbi, k-best Viterbi,
and unary and pairwise marginals by forward-backward.

Conventions (all functions are pure, over tensors):
    emissions   [B, T, L]  score of tag y at position t
    mask        [B, T]     True for real positions; left-aligned, so each row is a prefix of True values
    transitions [L, L]     transitions[i, j] scores moving from tag i to tag j
    start, end  [L]        scores of the first and of the last tag

A path's score is ``start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_last]``.
Every function is checked against brute-force enumeration of all paths in the tests.
"""

from __future__ import annotations

import torch
from torch import nn


def _check(emissions: torch.Tensor, mask: torch.Tensor) -> None:
    if emissions.ndim != 3 or mask.shape != emissions.shape[:2]:
        raise ValueError(f"expected emissions [B, T, L] and mask [B, T], got {tuple(emissions.shape)} and "
                         f"{tuple(mask.shape)}")
    if emissions.shape[1] == 0 or not bool(mask[:, 0].all()):
        raise ValueError("every sequence needs at least one position, and the mask must start with True")


def sequence_score(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
                   start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Score of the given tag paths: [B]. ``tags`` [B, T] (values at padded positions are ignored)."""
    _check(emissions, mask)
    mask_f = mask.to(emissions.dtype)
    tags = tags.clamp_min(0) * mask.long()
    emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)
    score = start[tags[:, 0]] + (emit * mask_f).sum(dim=1)
    if tags.shape[1] > 1:
        trans = transitions[tags[:, :-1], tags[:, 1:]]
        score = score + (trans * mask_f[:, 1:]).sum(dim=1)
    last = mask.long().sum(dim=1) - 1
    return score + end[tags.gather(1, last.unsqueeze(1)).squeeze(1)]


def forward_scores(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
                   start: torch.Tensor) -> torch.Tensor:
    """alpha [B, T, L]: log-sum of all path prefixes ending in each tag; padded positions repeat the last real one."""
    alpha = start.unsqueeze(0) + emissions[:, 0]
    out = [alpha]
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions.unsqueeze(0), dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
        out.append(alpha)
    return torch.stack(out, dim=1)


def backward_scores(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
                    end: torch.Tensor) -> torch.Tensor:
    """beta [B, T, L]: log-sum of all path suffixes after each tag (``end`` at the last real position)."""
    size, length, tags = emissions.shape
    beta = end.unsqueeze(0).expand(size, tags)
    out = [beta]
    for t in range(length - 2, -1, -1):
        step = torch.logsumexp(transitions.unsqueeze(0) + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
        beta = torch.where(mask[:, t + 1].unsqueeze(1), step, end.unsqueeze(0).expand(size, tags))
        out.append(beta)
    return torch.stack(out[::-1], dim=1)


def log_partition(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> torch.Tensor:
    """log Z per sequence: [B] (the forward algorithm)."""
    _check(emissions, mask)
    alpha = forward_scores(emissions, mask, transitions, start)[:, -1]
    return torch.logsumexp(alpha + end.unsqueeze(0), dim=1)


def nll(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
        start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the tag paths: [B]."""
    return log_partition(emissions, mask, transitions, start, end) - sequence_score(
        emissions, tags, mask, transitions, start, end)


def marginals(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior marginals by forward-backward.

    Returns:
        unary [B, T, L]: P(y_t = y); zero at padded positions.
        pairwise [B, T-1, L, L]: P(y_t = i, y_{t+1} = j); zero where position t+1 is padding.
    """
    _check(emissions, mask)
    alpha = forward_scores(emissions, mask, transitions, start)
    beta = backward_scores(emissions, mask, transitions, end)
    log_z = torch.logsumexp(alpha[:, -1] + end.unsqueeze(0), dim=1)
    unary = (alpha + beta - log_z[:, None, None]).exp() * mask.unsqueeze(-1).to(emissions.dtype)
    if emissions.shape[1] < 2:
        return unary, emissions.new_zeros(emissions.shape[0], 0, emissions.shape[2], emissions.shape[2])
    pair = (alpha[:, :-1, :, None] + transitions[None, None] + (emissions[:, 1:] + beta[:, 1:])[:, :, None, :]
            - log_z[:, None, None, None])
    pairwise = pair.exp() * mask[:, 1:, None, None].to(emissions.dtype)
    return unary, pairwise


def viterbi(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """The best path of each sequence and its score: (scores [B], paths as lists of tag ids)."""
    scores, paths = kbest_viterbi(emissions, mask, transitions, start, end, k=1)
    return scores[:, 0], [p[0] for p in paths]


def kbest_viterbi(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor, k: int) -> tuple[torch.Tensor, list[list[list[int]]]]:
    """The ``k`` best paths of each sequence, best first: (scores [B, k], paths [B][k][length]).

    Keeps the k best partial paths ending in each tag at every position (a beam per tag, exact for k-best).
    Sequences with fewer than k distinct paths return them all, padded with score ``-inf`` and empty paths.
    """
    _check(emissions, mask)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with torch.no_grad():
        size, length, tags = emissions.shape
        best = torch.full((size, tags, k), float("-inf"), dtype=emissions.dtype, device=emissions.device)
        best[:, :, 0] = start.unsqueeze(0) + emissions[:, 0]
        pointers = []
        for t in range(1, length):
            cand = best.unsqueeze(3) + transitions[None, :, None, :]  # [B, L_prev, k, L]
            flat = cand.reshape(size, tags * k, tags)
            top, idx = flat.topk(k, dim=1)  # [B, k, L]
            step = (top + emissions[:, t].unsqueeze(1)).transpose(1, 2)  # [B, L, k]
            keep = mask[:, t].view(size, 1, 1)
            best = torch.where(keep, step, best)
            pointers.append(torch.where(keep, idx.transpose(1, 2), _identity_pointers(size, tags, k, best.device)))
        final = (best + end.view(1, tags, 1)).reshape(size, tags * k)
        top, idx = final.topk(k, dim=1)
    return top, [[_trace(pointers, int(i), k, int(mask[b].sum()), b) if torch.isfinite(s) else []
                  for s, i in zip(top[b], idx[b], strict=True)] for b in range(size)]


def _identity_pointers(size: int, tags: int, k: int, device: torch.device) -> torch.Tensor:
    """Backpointers that stay on the same (tag, rank): used at padded positions."""
    ident = torch.arange(tags * k, device=device).view(tags, k)
    return ident.unsqueeze(0).expand(size, tags, k)


def _trace(pointers: list[torch.Tensor], flat_index: int, k: int, length: int, row: int) -> list[int]:
    """Follow backpointers from a final (tag, rank) at the last real position to the start."""
    tag, rank = divmod(flat_index, k)
    path = [tag]
    for t in range(length - 1, 0, -1):
        tag, rank = divmod(int(pointers[t - 1][row, tag, rank]), k)
        path.append(tag)
    return path[::-1]


class CRF(nn.Module):
    """The CRF's parameters (transitions, start, end) with the functions above as methods."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

    def params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.transitions, self.start, self.end

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return nll(emissions, tags, mask, *self.params())

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return log_partition(emissions, mask, *self.params())

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return marginals(emissions, mask, *self.params())

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return viterbi(emissions, mask, *self.params())[1]

    def kbest(self, emissions: torch.Tensor, mask: torch.Tensor, k: int):
        return kbest_viterbi(emissions, mask, *self.params(), k=k)
