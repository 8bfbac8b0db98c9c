"""Every CRF operation against brute-force enumeration of all tag paths on tiny sizes."""

from __future__ import annotations

import itertools

import pytest
import torch

from summon.models.crf import (
    CRF,
    kbest_viterbi,
    log_partition,
    marginals,
    nll,
    sequence_score,
    viterbi,
)

TAGS = 3


def random_problem(seed: int, lengths=(4, 2, 1, 3)):
    g = torch.Generator().manual_seed(seed)
    size, width = len(lengths), max(lengths)
    emissions = torch.randn(size, width, TAGS, generator=g, dtype=torch.float64)
    mask = torch.tensor([[t < n for t in range(width)] for n in lengths])
    params = [torch.randn(TAGS, TAGS, generator=g, dtype=torch.float64), torch.randn(TAGS, generator=g,
              dtype=torch.float64), torch.randn(TAGS, generator=g, dtype=torch.float64)]
    return emissions, mask, params, lengths


def path_score(em, path, trans, start, end) -> float:
    s = start[path[0]] + sum(em[t, y] for t, y in enumerate(path)) + end[path[-1]]
    return float(s + sum(trans[a, b] for a, b in itertools.pairwise(path)))


def all_paths(em, n, trans, start, end):
    return sorted(((path_score(em, p, trans, start, end), p) for p in itertools.product(range(TAGS), repeat=n)),
                  key=lambda x: -x[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_partition_and_nll_match_enumeration(seed):
    em, mask, (trans, start, end), lengths = random_problem(seed)
    log_z = log_partition(em, mask, trans, start, end)
    tags = torch.randint(0, TAGS, mask.shape, generator=torch.Generator().manual_seed(seed))
    losses = nll(em, tags, mask, trans, start, end)
    for b, n in enumerate(lengths):
        scores = torch.tensor([s for s, _ in all_paths(em[b], n, trans, start, end)], dtype=torch.float64)
        assert log_z[b].item() == pytest.approx(torch.logsumexp(scores, 0).item(), abs=1e-9)
        gold = path_score(em[b], tags[b, :n].tolist(), trans, start, end)
        assert sequence_score(em, tags, mask, trans, start, end)[b].item() == pytest.approx(gold, abs=1e-9)
        assert losses[b].item() == pytest.approx(torch.logsumexp(scores, 0).item() - gold, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_marginals_match_enumeration_and_autograd(seed):
    em, mask, (trans, start, end), lengths = random_problem(seed)
    unary, pairwise = marginals(em, mask, trans, start, end)
    for b, n in enumerate(lengths):
        paths = all_paths(em[b], n, trans, start, end)
        z = torch.logsumexp(torch.tensor([s for s, _ in paths], dtype=torch.float64), 0)
        want_u = torch.zeros(mask.shape[1], TAGS, dtype=torch.float64)
        want_p = torch.zeros(mask.shape[1] - 1, TAGS, TAGS, dtype=torch.float64)
        for s, p in paths:
            w = torch.exp(torch.tensor(s, dtype=torch.float64) - z)
            for t, y in enumerate(p):
                want_u[t, y] += w
            for t in range(n - 1):
                want_p[t, p[t], p[t + 1]] += w
        torch.testing.assert_close(unary[b], want_u, atol=1e-9, rtol=0)
        torch.testing.assert_close(pairwise[b], want_p, atol=1e-9, rtol=0)
    # unary marginals are also the gradient of log Z with respect to the emissions
    em_grad = em.clone().requires_grad_(True)
    log_partition(em_grad, mask, trans, start, end).sum().backward()
    torch.testing.assert_close(em_grad.grad, unary, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [0, 4])
def test_viterbi_and_kbest_match_enumeration(seed):
    em, mask, (trans, start, end), lengths = random_problem(seed)
    best_scores, best_paths = viterbi(em, mask, trans, start, end)
    k = 5
    scores, paths = kbest_viterbi(em, mask, trans, start, end, k=k)
    for b, n in enumerate(lengths):
        ranked = all_paths(em[b], n, trans, start, end)
        assert best_paths[b] == list(ranked[0][1])
        assert best_scores[b].item() == pytest.approx(ranked[0][0], abs=1e-9)
        expected = ranked[:k]
        got = [(s.item(), p) for s, p in zip(scores[b], paths[b], strict=True) if p]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in expected], abs=1e-9)
        for s, p in got:  # each returned path really has its score (ties may reorder paths)
            assert path_score(em[b], p, trans, start, end) == pytest.approx(s, abs=1e-9)
        assert len({tuple(p) for _, p in got}) == len(got)


def test_kbest_pads_when_there_are_fewer_paths_than_k():
    em, mask, (trans, start, end), _ = random_problem(5, lengths=(1,))
    scores, paths = kbest_viterbi(em, mask, trans, start, end, k=5)  # one position, three tags: three paths
    assert [len(p) for p in paths[0]] == [1, 1, 1, 0, 0]
    assert torch.isinf(scores[0, 3:]).all()


def test_batched_equals_one_by_one():
    em, mask, (trans, start, end), lengths = random_problem(6)
    together = log_partition(em, mask, trans, start, end)
    decoded = viterbi(em, mask, trans, start, end)[1]
    for b, n in enumerate(lengths):
        alone = log_partition(em[b:b + 1, :n], mask[b:b + 1, :n], trans, start, end)
        assert together[b].item() == pytest.approx(alone.item(), abs=1e-9)
        assert decoded[b] == viterbi(em[b:b + 1, :n], mask[b:b + 1, :n], trans, start, end)[1][0]


def test_module_and_bad_input():
    crf = CRF(TAGS).double()
    em, mask, _, _ = random_problem(7)
    assert crf.log_partition(em, mask).shape == (4,)
    with pytest.raises(ValueError, match="mask must start with True"):
        crf.log_partition(em, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="expected emissions"):
        crf.log_partition(em[0], mask)
    with pytest.raises(ValueError, match="k must be at least 1"):
        crf.kbest(em, mask, 0)
