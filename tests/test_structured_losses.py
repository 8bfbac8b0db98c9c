"""Structured KD losses against naive loop references."""

from __future__ import annotations

import pytest
import torch

from summon.losses.structured import marginal_kl, substructure_mse, substructure_scores, topk_nll
from summon.models.crf import marginals, nll

B, T, L = 3, 4, 3


def setup(seed: int):
    g = torch.Generator().manual_seed(seed)
    em_s, em_t = (torch.randn(B, T, L, generator=g, dtype=torch.float64) for _ in range(2))
    tr_s, tr_t = (torch.randn(L, L, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return em_s, tr_s, em_t, tr_t, mask


@pytest.mark.parametrize("seed", [0, 1])
def test_substructure_mse_matches_a_loop(seed):
    em_s, tr_s, em_t, tr_t, mask = setup(seed)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            for yp in range(L):
                for y in range(L):
                    d = (em_s[b, t, y] + tr_s[yp, y]) - (em_t[b, t, y] + tr_t[yp, y])
                    total, count = total + float(d) ** 2, count + 1
    assert substructure_mse(em_s, tr_s, em_t, tr_t, mask).item() == pytest.approx(total / count)
    unmasked = ((substructure_scores(em_s, tr_s) - substructure_scores(em_t, tr_t)) ** 2).mean()
    assert substructure_mse(em_s, tr_s, em_t, tr_t, mask, mask_padding=False).item() == pytest.approx(unmasked.item())
    emissions_only = sum(float(((em_s[b, t] - em_t[b, t]) ** 2).sum()) for b in range(B) for t in range(T) if mask[b, t])
    got = substructure_mse(em_s, tr_s, em_t, tr_t, mask, with_transitions=False).item()
    assert got == pytest.approx(emissions_only / (int(mask.sum()) * L))


def test_substructure_mse_is_zero_for_identical_scores_and_pulls_transitions():
    em_s, tr_s, _, _, mask = setup(2)
    assert substructure_mse(em_s, tr_s, em_s, tr_s, mask).item() == 0.0
    tr = tr_s.clone().requires_grad_(True)
    substructure_mse(em_s, tr, em_s, tr_s + 1.0, mask).backward()
    assert (tr.grad < 0).all()  # the student's transitions are pulled up towards the teacher's


def test_marginal_kl_matches_a_loop_and_is_zero_on_itself():
    em_s, tr_s, em_t, tr_t, mask = setup(3)
    zeros = torch.zeros(L, dtype=torch.float64)
    mu_s, _ = marginals(em_s, mask, tr_s, zeros, zeros)
    mu_t, _ = marginals(em_t, mask, tr_t, zeros, zeros)
    vals = [float((mu_t[b, t] * (mu_t[b, t].log() - mu_s[b, t].log())).sum())
            for b in range(B) for t in range(T) if mask[b, t]]
    assert marginal_kl(mu_s, mu_t, mask).item() == pytest.approx(sum(vals) / len(vals), rel=1e-9)
    assert marginal_kl(mu_t, mu_t, mask).item() == pytest.approx(0.0, abs=1e-9)


def test_topk_nll_weights_the_paths():
    em_s, tr_s, _, _, mask = setup(4)
    zeros = torch.zeros(L, dtype=torch.float64)
    paths = [[[0, 1, 2, 0], [1, 1, 1, 1]], [[2, 2], [0, 0]], [[1]]]  # the last row has one path only
    got = topk_nll(em_s, mask, tr_s, zeros, zeros, paths, weights=(1.0, 0.1))
    want = 0.0
    for b, row in enumerate(paths):
        for rank, w in enumerate((1.0, 0.1)):
            if rank < len(row):
                tags = torch.zeros(1, T, dtype=torch.long)
                tags[0, : len(row[rank])] = torch.tensor(row[rank])
                want += w * float(nll(em_s[b:b + 1], tags, mask[b:b + 1], tr_s, zeros, zeros)[0])
    assert got.item() == pytest.approx(want / B)
