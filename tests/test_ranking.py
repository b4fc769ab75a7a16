"""Top-K selection by block-maximum pruning equals a stable descending sort, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bench.ranking as ranking
from bench.evaluation import evaluate_scores
from bench.ranking import top_k_indices
from tests.helpers import brute_force, to_csr


def stable_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = [sorted(range(scores.shape[1]), key=lambda i, r=r: -float(scores[r, i]))[:k]
             for r in range(scores.shape[0])]
    return torch.tensor(order, dtype=torch.int64).reshape(scores.shape[0], k)


@pytest.mark.parametrize("n,k,block", [(1000, 20, 32), (1001, 40, 32), (777, 5, 7), (300, 1, 16),
                                       (64, 10, 4), (50, 50, 2), (129, 3, 1)])
def test_distinct_scores_equal_torch_topk(n, k, block):
    gen = torch.Generator().manual_seed(n + k)
    scores = torch.randn(37, n, generator=gen)
    got = top_k_indices(scores, k, block=block)
    assert torch.equal(got, torch.topk(scores, k, dim=1, sorted=True).indices)


def test_fast_path_is_taken_for_distinct_scores(monkeypatch):
    calls = []
    real = ranking._stable_topk

    def spy(scores, k):
        calls.append(scores.shape)
        return real(scores, k)

    monkeypatch.setattr(ranking, "_stable_topk", spy)
    scores = torch.randn(50, 5000, generator=torch.Generator().manual_seed(0))
    got = top_k_indices(scores, 40)
    assert calls == []  # no row needed the exact path
    assert torch.equal(got, torch.topk(scores, 40, dim=1).indices)


def test_ties_go_to_the_lower_index():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (40, 700), generator=gen).float()  # many ties
    scores[3] = 2.5  # a constant row
    scores[4, :] = -torch.inf
    scores[4, [10, 500, 3]] = torch.tensor([1.0, 1.0, 0.0])  # fewer finite scores than k
    k = 20
    assert torch.equal(top_k_indices(scores, k, block=8), stable_reference(scores, k))


def test_masked_rows_and_partial_last_block():
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(30, 1003, generator=gen)
    mask = torch.rand(30, 1003, generator=gen) < 0.3
    scores[mask] = -torch.inf
    scores[:, 1000:] += 10  # the best items sit in the partial last block
    k = 25
    assert torch.equal(top_k_indices(scores, k, block=32), stable_reference(scores, k))


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 9), st.integers(1, 400), st.integers(1, 40), st.integers(1, 33),
       st.integers(0, 2**31 - 1), st.booleans())
def test_property_equals_stable_sort(rows, n, k, block, seed, tied):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, (rows, n)) if tied else rng.standard_normal((rows, n))
    scores = torch.from_numpy(values.astype(np.float32))
    scores[torch.from_numpy(rng.random((rows, n)) < 0.1)] = -torch.inf
    assert torch.equal(top_k_indices(scores, k, block=block), stable_reference(scores, k))


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        top_k_indices(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.5"):
        top_k_indices(torch.zeros(2, 5), 6)
    with pytest.raises(ValueError, match="block"):
        top_k_indices(torch.zeros(2, 5), 2, block=0)
    assert top_k_indices(torch.zeros(0, 500), 3).shape == (0, 3)


def test_evaluation_with_tied_scores_equals_brute_force():
    """Tied scores (e.g. a quantised model) rank the lower item index first, like the reference."""
    rng = np.random.default_rng(5)
    n_users, n_items = 23, 400
    scores = rng.integers(0, 4, (n_users, n_items)).astype(np.float32)
    held = [set(rng.choice(n_items, rng.integers(0, 8), replace=False).tolist()) for _ in range(n_users)]
    excl = [set(rng.choice(n_items, 30, replace=False).tolist()) - h for h in held]
    ks = (1, 5, 20)
    expected, n_eval = brute_force(scores, held, excl, ks)
    table = torch.from_numpy(scores)
    for chunk in (1, 7, 100):
        res = evaluate_scores(lambda u: table[u], to_csr(held, n_items), [to_csr(excl, n_items)],
                              ks=ks, chunk_users=chunk)
        assert res.n_users == n_eval
        for name, value in expected.items():
            assert res.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_heldout_hits_without_dense_mask_match_definition():
    rng = np.random.default_rng(9)
    held = sp.random(40, 3000, density=0.01, random_state=3, format="csr")
    scores = torch.from_numpy(rng.standard_normal((40, 3000)).astype(np.float32))
    res = evaluate_scores(lambda u: scores[u], held, ks=(10, 50), return_per_user=True)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    top = torch.topk(scores[torch.from_numpy(users)], 50, dim=1).indices.numpy()
    dense = held.toarray() > 0
    recall = dense[users[:, None], top].sum(1) / dense[users].sum(1)
    np.testing.assert_allclose(res.per_user["recall@50"], recall, rtol=0, atol=1e-15)
