"""Metrics against a brute-force reference, hand-computed values, and RecBole's evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.evaluation import evaluate_scores
from bench.metrics import per_user_metrics
from tests.helpers import brute_force, to_csr

KS = (1, 3, 5)


@st.composite
def ranking_problem(draw):
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(max(KS) + 4, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # distinct scores: a random permutation per user (ties would make the ranking ambiguous)
    scores = np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32)
    heldout, exclude = [], []
    for _ in range(n_users):
        items = rng.permutation(n_items)
        n_ex = draw(st.integers(0, 3))
        n_held = draw(st.integers(0, 6))
        exclude.append(set(items[:n_ex].tolist()))
        heldout.append(set(items[n_ex : n_ex + n_held].tolist()))
    return scores, heldout, exclude


@settings(max_examples=150, deadline=None)
@given(ranking_problem(), st.integers(1, 5))
def test_metrics_equal_brute_force(problem, chunk):
    scores, heldout, exclude = problem
    n_items = scores.shape[1]
    expected, n_eval = brute_force(scores, heldout, exclude, KS)
    if n_eval == 0:
        return
    table = torch.from_numpy(scores)
    res = evaluate_scores(lambda u: table[u], to_csr(heldout, n_items),
                          [to_csr(exclude, n_items)], ks=KS, chunk_users=chunk)
    assert res.n_users == n_eval
    assert set(res.metrics) == set(expected)
    for name, value in expected.items():
        assert res.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_metrics_identical_across_chunk_sizes():
    rng = np.random.default_rng(7)
    n_users, n_items = 97, 60
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    held = sp.random(n_users, n_items, density=0.08, random_state=1, format="csr")
    held.data[:] = 1
    excl = sp.random(n_users, n_items, density=0.1, random_state=2, format="csr")
    excl = excl - excl.multiply(held)  # disjoint from held-out
    excl.eliminate_zeros()
    results = [
        evaluate_scores(lambda u: scores[u], held, [excl], ks=(5, 10, 20), chunk_users=c,
                        return_per_user=True)
        for c in (1, 2, 13, 50, 97, 1000)
    ]
    for r in results[1:]:
        assert r.metrics == results[0].metrics  # exact equality, not approx
        for name in r.per_user:
            np.testing.assert_array_equal(r.per_user[name], results[0].per_user[name])


def test_memory_budget_sets_chunk_size_and_not_the_values():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.standard_normal((40, 100)).astype(np.float32))
    held = sp.random(40, 100, density=0.1, random_state=4, format="csr")
    small = evaluate_scores(lambda u: scores[u], held, ks=(10,), memory_bytes=100 * 12 * 3)
    large = evaluate_scores(lambda u: scores[u], held, ks=(10,), memory_bytes=2**30)
    assert small.chunk_users == 3
    assert large.chunk_users >= 40
    assert small.metrics == large.metrics


def test_hand_computed_example():
    # user 0: ranking [4, 3, 2, 1, 0] (item 4 best); held-out {3, 0}; item 4 excluded
    # -> ranked list [3, 2, 1, 0]: hit at rank 1, next hit at rank 4
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    held = sp.csr_matrix(np.array([[1, 0, 0, 1, 0]]))
    excl = sp.csr_matrix(np.array([[0, 0, 0, 0, 1]]))
    res = evaluate_scores(lambda u: scores[u], held, [excl], ks=(1, 2, 4))
    m = res.metrics
    assert m["recall@1"] == 0.5 and m["recall@2"] == 0.5 and m["recall@4"] == 1.0
    assert m["precision@2"] == 0.5 and m["precision@4"] == 0.5
    assert m["hit@1"] == 1.0 and m["mrr@4"] == 1.0
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx(1 / idcg2, rel=1e-15)
    assert m["ndcg@4"] == pytest.approx((1 + 1 / math.log2(5)) / idcg2, rel=1e-15)


def test_users_without_heldout_items_are_skipped():
    scores = torch.rand(3, 8)
    held = sp.csr_matrix(np.array([[0] * 8, [1] + [0] * 7, [0] * 8]))
    res = evaluate_scores(lambda u: scores[u], held, ks=(2,), return_per_user=True)
    assert res.n_users == 1
    assert len(res.per_user["recall@2"]) == 1


def test_recall_divides_by_number_of_heldout_items_not_min_k():
    scores = torch.arange(10, dtype=torch.float32).flip(0).unsqueeze(0)  # item 0 ranked first
    held = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]))
    res = evaluate_scores(lambda u: scores[u], held, ks=(2,))
    assert res.metrics["recall@2"] == 0.5  # 2 hits / 4 held out, not 2 / min(2, 4)
    assert res.metrics["ndcg@2"] == 1.0  # the ideal list of length 2 is reached


@pytest.mark.parametrize(
    "ks, message",
    [((0,), "positive"), ((11,), "exceeds the number of items")],
)
def test_bad_cutoffs_are_rejected(ks, message):
    scores = torch.rand(2, 10)
    held = sp.csr_matrix(np.eye(2, 10))
    with pytest.raises(ValueError, match=message):
        evaluate_scores(lambda u: scores[u], held, ks=ks)


def test_per_user_metrics_rejects_users_without_heldout():
    with pytest.raises(ValueError, match="at least one held-out"):
        per_user_metrics(torch.zeros(2, 3), torch.tensor([1, 0]), (1,))


@pytest.mark.recbole
def test_same_values_as_recbole_evaluator(monkeypatch):
    metrics = pytest.importorskip("recbole.evaluator.metrics")
    # RecBole 1.2.1's NDCG/MRR use `np.float` (gone since numpy 1.24); RecBole's own Config sets
    # `np.float = np.float_` when it is created, which a bare import of the metrics skips.
    monkeypatch.setattr(np, "float", np.float64, raising=False)
    rng = np.random.default_rng(11)
    n_users, max_k = 300, 20
    hits = rng.random((n_users, max_k)) < 0.15
    n_held = rng.integers(1, 30, n_users)
    n_held = np.maximum(n_held, hits.sum(1))  # a user cannot have more hits than held-out items
    ours = per_user_metrics(torch.from_numpy(hits), torch.from_numpy(n_held), (5, 10, 20))
    cfg = {"topk": [5, 10, 20], "metric_decimal_place": 12}
    classes = {"recall": metrics.Recall, "ndcg": metrics.NDCG, "precision": metrics.Precision,
               "hit": metrics.Hit, "mrr": metrics.MRR}
    for name, cls in classes.items():
        m = cls(cfg)
        info = m.metric_info(hits, n_held) if name in ("recall", "ndcg") else m.metric_info(hits)
        for k in (5, 10, 20):
            np.testing.assert_allclose(ours[f"{name}@{k}"].numpy(), info[:, k - 1],
                                       rtol=1e-12, atol=1e-15, err_msg=f"{name}@{k}")
