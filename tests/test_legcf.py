"""LEGCF (docs/methods/legcf.md): the unit-testable invariants 1-10 and 18, the stage-2 update
schedule and the method end to end on the toy data. Small synthetic graphs only."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from bench.backbone.graph import NormalizedGraph, normalized_adjacency
from bench.contract import MethodError, Target
from bench.sampling import MultiNegativeSampler
from bench.training import TrainHook, fit_bpr
from methods.legcf import LEGCF, solve_codebook
from methods.shared.composition import (
    Assignment,
    CompositionalLightGCN,
    GraphRows,
    PartitionError,
    assignment_update,
    expanded_graph,
    index_bits,
    legcf_honest_params,
    legcf_params,
    metis_assignment,
    metis_parts,
    random_assignment,
)
from methods.shared.composition_training import (
    InfeasibleTargetError,
    LegcfHook,
    adam_moments,
    load_adam_moments,
)
from tests.helpers import clustered_data, method_context, run_single_cell, small_config


def dense_s(s: Assignment) -> np.ndarray:
    """``S`` as a dense N x c float64 matrix (column order inside a row does not matter)."""
    out = np.zeros((s.n, s.n_meta))
    out[np.arange(s.n)[:, None], s.index.numpy()] = s.value.double().numpy()
    return out


def dense_graph(graph) -> np.ndarray:
    out = np.zeros((graph.n_nodes, graph.n_nodes))
    out[graph.rows.numpy(), graph.cols.numpy()] = graph.values.double().numpy()
    return out


def toy_graph(data):
    return normalized_adjacency(data.n_users, data.n_items, data.train[:, 0], data.train[:, 1])


def random_s0(n: int, c: int, t: int, rng: np.random.Generator) -> Assignment:
    """A t-sparse S with distinct columns per row and positive values in [0.2, 1]."""
    index = np.stack([rng.permutation(c)[:t] for _ in range(n)])
    value = rng.uniform(0.2, 1.0, (n, t))
    return Assignment(torch.from_numpy(index), torch.from_numpy(value).float(), c)


def hand_normalise(a: np.ndarray) -> np.ndarray:
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return a * inv[:, None] * inv[None, :]


# --- initialisation (invariants 1, 7) -------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 3])
def test_metis_init_rows_anchor_and_distinct_auxiliary_columns(t):
    data = clustered_data()
    c = 12
    parts = metis_parts(data.n_users, data.n_items, data.train, c, seed=0)
    s = metis_assignment(parts, c, t, 0.6, np.random.default_rng(1))
    assert tuple(s.index.shape) == (100, t) and tuple(s.value.shape) == (100, t)
    assert (s.value > 0).all()
    torch.testing.assert_close(s.value.sum(1), torch.ones(100))
    assert torch.equal(s.index[:, 0], torch.from_numpy(parts))
    assert ((s.index >= 0) & (s.index < c)).all()
    assert all(len(set(row)) == t for row in s.index.tolist())
    if t == 1:
        assert (s.value == 1).all()
    else:
        torch.testing.assert_close(s.value[:, 0], torch.full((100,), 0.6))
        torch.testing.assert_close(s.value[:, 1:], torch.full((100, t - 1), 0.4 / (t - 1)))
        assert (s.index[:, 1:] != s.index[:, :1]).all()
        # auxiliary columns are drawn, not a fixed offset of the anchor
        assert len(set((s.index[:, 1] - s.index[:, 0]).remainder(c).tolist())) > 3


@pytest.mark.parametrize("t", [1, 2, 4])
def test_random_init_ablation_weights(t):
    s = random_assignment(200, 9, t, np.random.default_rng(3))
    assert tuple(s.index.shape) == (200, t)
    assert all(len(set(row)) == t for row in s.index.tolist())
    assert ((s.index >= 0) & (s.index < 9)).all()
    if t == 1:
        assert (s.value == 1).all()
    else:
        torch.testing.assert_close(s.value[:, 0], torch.full((200,), 0.9))
        torch.testing.assert_close(s.value[:, 1:], torch.full((200, t - 1), 0.1 / (t - 1)))
    torch.testing.assert_close(s.value.sum(1), torch.ones(200))
    assert len(set(s.index[:, 0].tolist())) == 9  # the first column is random, not a METIS part


def test_init_rejects_bad_t_and_w_star():
    parts = np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError, match="t"):
        metis_assignment(parts, 3, 4, 0.6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="w_star"):
        metis_assignment(parts, 3, 2, 0.0, np.random.default_rng(0))


def _check_parts(labels: np.ndarray, n: int, c: int) -> None:
    assert labels.shape == (n,)
    assert labels.min() >= 0 and labels.max() < c
    assert (np.bincount(labels, minlength=c) > 0).all()


@pytest.mark.parametrize("c", [1, 2, 7, 50, 99, 100])
def test_metis_parts_cover_all_parts_on_the_toy_graph(c):
    data = clustered_data()
    _check_parts(metis_parts(data.n_users, data.n_items, data.train, c, seed=0), 100, c)


@pytest.mark.parametrize("c", [3, 9, 15, 17, 18])
def test_metis_parts_with_isolated_nodes_and_c_close_to_n(c):
    # users 6..9 and items 5..7 have no training edge
    rng = np.random.default_rng(0)
    pairs = np.array([(u, i) for u in range(6) for i in rng.choice(5, 2, replace=False)])
    labels = metis_parts(10, 8, pairs, c, seed=1)
    _check_parts(labels, 18, c)
    assert np.array_equal(labels, metis_parts(10, 8, pairs, c, seed=1))  # seeded: reproducible


def test_metis_parts_fix_up_fills_empty_parts(monkeypatch):
    import pymetis

    def lopsided(c, adjacency, options, **kwargs):  # METIS leaving most parts empty
        n = len(adjacency.adj_starts) - 1
        return 0, [0] * (n - 2) + [1, 1]

    monkeypatch.setattr(pymetis, "part_graph", lopsided)
    data = clustered_data()
    labels = metis_parts(data.n_users, data.n_items, data.train, 40, seed=0)
    _check_parts(labels, 100, 40)
    assert (labels[-2:] == 1).all()  # only nodes of over-full parts were moved


def test_metis_parts_rejects_impossible_counts():
    data = clustered_data()
    for c in (0, 101):
        with pytest.raises(PartitionError, match="non-empty parts"):
            metis_parts(data.n_users, data.n_items, data.train, c, seed=0)


# --- the assignment update (invariants 2, 3, 4) --------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 3])
def test_update_recovers_s0_exactly_and_keeps_t_positive_entries(t):
    rng = np.random.default_rng(t)
    n, c, d = 40, 6, 10  # c <= d: H_meta has full row rank
    s0 = random_s0(n, c, t, rng)
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    h_full = torch.from_numpy(dense_s(s0)) @ h_meta
    new, clamped = assignment_update(h_full, h_meta, t)
    assert clamped == 0
    assert tuple(new.index.shape) == (n, t) and new.n_meta == c
    assert (new.value > 0).all()
    assert all(len(set(row)) == t for row in new.index.tolist())
    np.testing.assert_allclose(dense_s(new), dense_s(s0), atol=1e-5)


def test_update_does_not_renormalise_rows():
    rng = np.random.default_rng(5)
    n, c, d, t = 50, 8, 16, 2
    s0 = random_s0(n, c, t, rng)
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    h_full = 3 * torch.from_numpy(dense_s(s0)) @ h_meta
    new, _ = assignment_update(h_full, h_meta, t)
    np.testing.assert_allclose(dense_s(new).sum(1), 3 * dense_s(s0).sum(1), rtol=1e-5)
    assert not np.allclose(dense_s(new).sum(1), 1.0)


def test_update_clamps_non_positive_kept_values_to_epsilon_and_counts_them():
    rng = np.random.default_rng(6)
    n, c, d, t = 30, 5, 8, 2
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    # every coefficient negative: both kept values of every row are negative
    w = -rng.uniform(0.5, 1.0, (n, c))
    new, clamped = assignment_update(torch.from_numpy(w) @ h_meta, h_meta, t, eps=1e-6)
    assert clamped == n * t
    assert tuple(new.index.shape) == (n, t)
    assert (new.value > 0).all() and torch.allclose(new.value, torch.full((n, t), 1e-6))
    # the kept columns are still the t largest signed values
    expected = np.argsort(-w, axis=1)[:, :t]
    assert [set(r) for r in new.index.tolist()] == [set(r) for r in expected.tolist()]
    # one positive coefficient per row: exactly one clamp per row
    w[np.arange(n), rng.integers(0, c, n)] = 2.0
    new, clamped = assignment_update(torch.from_numpy(w) @ h_meta, h_meta, t)
    assert clamped == n
    assert (new.value > 0).all()
    np.testing.assert_allclose(np.sort(new.value.numpy(), axis=1)[:, 1], 2.0, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 37])
def test_batched_update_equals_unbatched(chunk):
    rng = np.random.default_rng(7)
    n, c, d, t = 37, 12, 5, 2  # c > d: minimum-norm least squares
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    h_full = torch.from_numpy(rng.standard_normal((n, d)))
    whole, clamped_whole = assignment_update(h_full, h_meta, t, chunk=n * 10)
    batched, clamped = assignment_update(h_full, h_meta, t, chunk=chunk)
    assert clamped == clamped_whole
    np.testing.assert_allclose(dense_s(batched), dense_s(whole), rtol=1e-6, atol=1e-7)
    # and both equal the dense formula written out
    dense = (h_full @ torch.linalg.pinv(h_meta)).numpy()
    ref = np.zeros_like(dense)
    top = np.argsort(-dense, axis=1)[:, :t]
    ref[np.arange(n)[:, None], top] = np.maximum(dense[np.arange(n)[:, None], top], 1e-6)
    np.testing.assert_allclose(dense_s(whole), ref, rtol=1e-5, atol=1e-7)


def _shrink_case(seed: int = 11, n: int = 300, c: int = 64, d: int = 8, t: int = 2):
    """``H_full = S0 H_meta`` with a METIS-like S0 (rows summing to 1) and ``c = 8 d``."""
    rng = np.random.default_rng(seed)
    index = np.stack([rng.permutation(c)[:t] for _ in range(n)])
    value = np.tile([0.6] + [0.4 / (t - 1)] * (t - 1), (n, 1))
    s0 = Assignment(torch.from_numpy(index), torch.from_numpy(value).float(), c)
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    return s0, h_meta, torch.from_numpy(dense_s(s0)) @ h_meta


def test_pinv_update_shrinks_rows_by_about_d_over_c_and_the_shrink_compounds():
    # the documented collapse of the authors' update for c > d: the t kept entries of the
    # minimum-norm row carry a small share of the row's mass (about d/c = 1/8 here, below 0.35)
    _, h_meta, h_full = _shrink_case()
    new, _ = assignment_update(h_full, h_meta, 2)
    first = float(new.value.sum(1).mean())
    assert first < 0.35
    # applied again to the H it now reproduces, the shrink compounds
    again, _ = assignment_update(torch.from_numpy(dense_s(new)) @ h_meta, h_meta, 2)
    assert float(again.value.sum(1).mean()) < 0.5 * first


def test_lsq_refit_keeps_row_sums_in_band_over_repeated_updates():
    # c = 8d: the pinv's top-2 columns miss the true support of many rows, so the refitted rows
    # of those sum to less than 1; but the mean stays in the band [0.5, 1.2] (pinv: 0.155, then
    # 0.043, 0.013, ...) and repeating the update does not shrink it further
    s0, h_meta, _ = _shrink_case()
    s, means = s0, []
    for _ in range(5):
        s, _ = assignment_update(torch.from_numpy(dense_s(s)) @ h_meta, h_meta, 2, refit=True)
        means.append(float(s.value.sum(1).mean()))
        assert float(s.value.sum(1).min()) > 0
    assert all(0.5 <= m <= 1.2 for m in means)
    assert min(means) >= 0.99 * means[0]


def test_lsq_refit_never_fits_h_worse_than_the_pinv_values_on_the_same_columns():
    # the training signal of the update is how well S~ H_meta reproduces H_full; on the same
    # support the refit is the least-squares optimum, so it can only lower that error
    rng = np.random.default_rng(12)
    n, c, d, t = 200, 40, 6, 2
    h_meta = torch.from_numpy(rng.standard_normal((c, d)))
    h_full = torch.from_numpy(np.abs(rng.standard_normal((n, c))) @ h_meta.numpy() / c)
    pinv, _ = assignment_update(h_full, h_meta, t)
    refit, _ = assignment_update(h_full, h_meta, t, refit=True)
    assert torch.equal(pinv.index, refit.index)  # only the values change
    err_pinv = ((torch.from_numpy(dense_s(pinv)) @ h_meta - h_full) ** 2).sum(1)
    err_refit = ((torch.from_numpy(dense_s(refit)) @ h_meta - h_full) ** 2).sum(1)
    unclamped = (refit.value > 1e-6).all(1)
    assert unclamped.sum() > n // 2
    assert (err_refit[unclamped] <= err_pinv[unclamped] + 1e-9).all()
    assert err_refit[unclamped].sum() < 0.5 * err_pinv[unclamped].sum()
    # brute force: the refit values solve each row's t x t normal equations
    for p in range(5):
        a = h_meta[refit.index[p]].numpy()
        x, *_ = np.linalg.lstsq(a.T, h_full[p].numpy(), rcond=None)
        if (x > 1e-6).all():
            np.testing.assert_allclose(np.sort(refit.value[p].numpy()), np.sort(x), rtol=1e-4)


def test_shuffled_triples_are_the_grouped_ones_permuted_and_batches_count_triples():
    rng = np.random.default_rng(3)
    pairs = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 25, 200)], 1), axis=0)
    grouped = MultiNegativeSampler(pairs, 30, 25, n_neg=3)
    shuffled = MultiNegativeSampler(pairs, 30, 25, n_neg=3, shuffle_triples=True)
    a = torch.stack(grouped.epoch(torch.Generator().manual_seed(5)), 1)
    b = torch.stack(shuffled.epoch(torch.Generator().manual_seed(5)), 1)
    assert not torch.equal(a, b)
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))
    assert (grouped.batch_triples(100), shuffled.batch_triples(100)) == (300, 100)


def test_both_stages_validate_every_epoch_with_the_authors_patience(monkeypatch):
    import bench.context as context_module

    seen = []
    real = context_module.fit_bpr

    def spy(model, data, config, **kw):
        seen.append((config.eval_every, config.patience, config.lr, config.batch_size,
                     kw["sampler"].shuffle_triples))
        return real(model, data, config, **kw)

    monkeypatch.setattr(context_module, "fit_bpr", spy)
    ctx = method_context(0, dim=16, eval_every=5, patience=2)  # the shared budget's coarse cadence
    LEGCF(pretrain_epochs=2, update_epochs=2).compress(ctx, Target(0.5))
    assert seen == [(1, 10, 1e-3, 2048, True)] * 2
    seen.clear()
    ctx = method_context(0, dim=16, eval_every=5, patience=2)
    LEGCF(pretrain_epochs=2, update_epochs=2, eval_every=0, patience=0, lr=0, batch_triples=0
          ).compress(ctx, Target(0.5))
    assert seen == [(5, 2, ctx.budget.lr, ctx.budget.batch_size, False)] * 2


def test_update_rejects_bad_arguments():
    h = torch.randn(4, 3)
    with pytest.raises(ValueError, match="chunk"):
        assignment_update(torch.randn(5, 3), h, 2, chunk=0)
    with pytest.raises(ValueError, match="t"):
        assignment_update(torch.randn(5, 3), h, 5)


# --- the expanded graph and propagation (invariants 5, 6) ----------------------------------------


def _small_case():
    """5 users x 4 items, user 4 and item 3 isolated; S with meta column 3 unused."""
    pairs = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [3, 0], [3, 2], [1, 0]])
    graph = normalized_adjacency(5, 4, pairs[:, 0], pairs[:, 1])
    index = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1], [0, 1], [1, 2], [2, 0]])
    value = torch.tensor([[0.6, 0.4], [0.6, 0.4], [2.5, 0.3], [0.6, 0.4], [0.6, 0.4],
                          [1.7, 0.2], [0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    a = np.zeros((9, 9))
    for u, i in pairs:
        a[u, 5 + i] = a[5 + i, u] = 1
    return graph, Assignment(index, value, 4), a


@pytest.mark.parametrize("raw", [False, True])
def test_expanded_graph_matches_a_dense_construction(raw):
    graph, s, a = _small_case()
    g = expanded_graph(graph, s, raw=raw)
    n, c = 9, 4
    assert g.n_nodes == n + c and g.n_users == 5 and g.n_items == 4 + c
    got = dense_graph(g)
    assert got.shape == (n + c, n + c)
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1 + 1e-6).all()
    np.testing.assert_allclose(got, got.T, atol=1e-7)
    # by hand: A' = [[Â or A, S], [Sᵀ, 0]] normalised with its own row sums
    top = a if raw else dense_graph(graph)
    sd = dense_s(s)
    a2 = np.block([[top, sd], [sd.T, np.zeros((c, c))]])
    np.testing.assert_allclose(got, hand_normalise(a2), rtol=1e-5, atol=1e-7)
    # undoing the second normalisation gives back Â (default) or the binary A (raw) in the top-left
    deg = a2.sum(1)
    undone = got * np.sqrt(np.outer(deg, deg))
    np.testing.assert_allclose(undone[:n, :n], top, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(undone[:n, n:], sd, rtol=1e-5, atol=1e-7)
    assert not got[n + 3].any() and not got[:, n + 3].any()  # unused meta node: zero, not NaN
    assert got[4].any() and got[8].any()  # isolated entities reach their meta nodes
    if not raw:
        assert not np.allclose(top, a)  # the two variants really differ


def test_expanded_graph_rejects_a_wrong_assignment():
    graph, s, _ = _small_case()
    with pytest.raises(ValueError, match="rows"):
        expanded_graph(graph, s.subset(torch.arange(5)))


def test_graph_rows_blocks_are_the_rows_and_columns_of_the_graph():
    graph, s, _ = _small_case()
    g = expanded_graph(graph, s)
    index = GraphRows.of(g)
    assert index is not None
    rows = torch.tensor([0, 3, 4, 10])
    by_rows, by_cols = index.blocks(rows)
    dense = dense_graph(g)
    np.testing.assert_array_equal(by_rows.to_dense().double().numpy(), dense[rows.numpy()])
    np.testing.assert_array_equal(by_cols.to_dense().double().numpy(), dense[:, rows.numpy()])


def test_graph_rows_refuses_an_asymmetric_pattern():
    graph, _, _ = _small_case()
    keep = graph.rows < graph.cols  # the upper triangle only
    half = NormalizedGraph(graph.n_users, graph.n_items, graph.rows[keep], graph.cols[keep],
                           graph.values[keep])
    assert GraphRows.of(half) is None


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize(("expanded", "bits", "tanh"), [(True, None, True), (False, 8, True), (True, 8, True),
                                                    (False, None, True), (True, None, False)])
def test_batch_readout_matches_the_per_layer_graph_bit_for_bit(expanded, bits, tanh, n_layers):
    """The training step's readout at the batch's rows gives autograd's per-layer loss and
    gradients exactly (same values, same summation order), as training relies on."""
    data = clustered_data()
    n = data.n_users + data.n_items
    s = random_s0(n, 12, 3, np.random.default_rng(0))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(CompositionalLightGCN(toy_graph(data), s, 8, n_layers, expanded=expanded, bits=bits,
                                             tanh=tanh))
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, data.n_users, (40,), generator=gen)
    pos, neg = (torch.randint(0, data.n_items, (40,), generator=gen) for _ in range(2))
    assert models[0].graph_rows() is not None
    fast = models[0].bpr_loss(users, pos, neg, 0.3)
    slow = models[1].bpr_loss_layers(users, pos, neg, 0.3)
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    (fast[0] + fast[1]).backward()
    (slow[0] + slow[1]).backward()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def _reference_layers(model: CompositionalLightGCN, s: Assignment, graph_dense: np.ndarray) -> np.ndarray:
    e = model.meta.detach().double().numpy()
    x = np.concatenate([np.tanh(dense_s(s) @ e), e]) if model.expanded else np.tanh(dense_s(s) @ e)
    outs = [x]
    for _ in range(model.n_layers):
        outs.append(graph_dense @ outs[-1])
    return np.mean(outs, axis=0)


def test_propagation_with_zero_layers_is_the_layer0_table():
    graph, s, _ = _small_case()
    torch.manual_seed(0)
    model = CompositionalLightGCN(graph, s, 6, 0)
    x0, h_full, h_meta = model.forward_all()
    e = model.meta.detach()
    torch.testing.assert_close(x0, torch.tanh(torch.from_numpy(dense_s(s)).float() @ e))
    torch.testing.assert_close(h_full, x0)
    torch.testing.assert_close(h_meta, e)
    users, items = model.propagate()
    assert users.shape == (5, 6) and items.shape == (4, 6)


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("raw", [False, True])
def test_propagation_is_the_mean_of_dense_layer_outputs(layers, raw):
    graph, s, _ = _small_case()
    torch.manual_seed(1)
    model = CompositionalLightGCN(graph, s, 6, layers, raw_base=raw)
    _, h_full, h_meta = model.forward_all()
    ref = _reference_layers(model, s, dense_graph(expanded_graph(graph, s, raw=raw)))
    np.testing.assert_allclose(torch.cat([h_full, h_meta]).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_propagation_without_meta_nodes_uses_the_plain_graph():
    graph, s, _ = _small_case()
    torch.manual_seed(2)
    model = CompositionalLightGCN(graph, s, 6, 2, expanded=False)
    _, h_full, h_meta = model.forward_all()
    assert h_meta is None
    ref = _reference_layers(model, s, dense_graph(graph))
    np.testing.assert_allclose(h_full.detach().numpy(), ref, rtol=1e-5, atol=1e-6)


# --- the sampler (invariant 8) ----------------------------------------------------------------------


@pytest.mark.parametrize("n_neg", [1, 5])
def test_multi_negative_sampler_groups_distinct_negatives(n_neg):
    data = clustered_data()
    keep = data.train[:, 0] >= 5  # users 0..4 have no training item
    pairs = data.train[keep]
    train = {(int(u), int(i)) for u, i in pairs}
    sampler = MultiNegativeSampler(pairs, data.n_users, data.n_items, n_neg)
    users, pos, neg = sampler.epoch(torch.Generator().manual_seed(0))
    assert users.numel() == pos.numel() == neg.numel() and users.numel() % n_neg == 0
    u, p, q = (x.reshape(-1, n_neg) for x in (users, pos, neg))
    assert (u == u[:, :1]).all() and (p == p[:, :1]).all()
    assert all(len(set(row)) == n_neg for row in q.tolist())
    assert not (users < 5).any()
    assert all((a, b) in train for a, b in zip(u[:, 0].tolist(), p[:, 0].tolist(), strict=True))
    assert all((a, b) not in train for a, b in zip(users.tolist(), neg.tolist(), strict=True))
    # |train| draws with replacement among all users, the draws of the 5 empty users skipped
    assert 0.8 * len(pairs) * 55 / 60 < len(u) < len(pairs)
    assert sampler.triples_per_epoch == round(len(pairs) * 55 / 60) * n_neg
    assert sampler.batch_triples(64) == 64 * n_neg


def test_multi_negative_sampler_rejects_too_few_negatives():
    pairs = np.array([[0, 0], [0, 1], [0, 2], [1, 0]])
    with pytest.raises(ValueError, match="distinct negatives"):
        MultiNegativeSampler(pairs, 2, 6, 5)


# --- gradients and clipping (invariant 9) ---------------------------------------------------------


@pytest.mark.parametrize("bits", [None, 8])
def test_s_gets_no_gradient_and_clipping_bounds_every_grad(bits):
    data = clustered_data()
    graph = toy_graph(data)
    s = metis_assignment(metis_parts(60, 40, data.train, 10, 0), 10, 2, 0.6, np.random.default_rng(0))
    torch.manual_seed(0)
    model = CompositionalLightGCN(graph, s, 8, 2, bits=bits)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == ({"meta"} if bits is None else {"meta", "step"})
    assert not model.assign_value.requires_grad and not model.assign_index.is_floating_point()
    users = torch.from_numpy(data.train[:64, 0])
    pos = torch.from_numpy(data.train[:64, 1])
    neg = torch.randint(0, 40, (64,))
    bpr, penalty = model.bpr_loss(users, pos, neg, 5e-4)
    (1e4 * (bpr + penalty)).backward()
    assert model.assign_value.grad is None
    assert torch.isfinite(model.meta.grad).all() and model.meta.grad.abs().max() > 3
    hook = LegcfHook(model, clip=3.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    hook.before_step(1, optimizer)
    for p in model.parameters():
        assert p.grad.abs().max() <= 3.0
    before = (model.assign_index.clone(), model.assign_value.clone())
    optimizer.step()
    hook.step_end(1, optimizer)
    assert torch.equal(model.assign_index, before[0]) and torch.equal(model.assign_value, before[1])


# --- parameter counts (invariant 10) ----------------------------------------------------------------


@pytest.mark.parametrize("n,expected", [(70_839, 205_678), (116_198, 296_396), (144_242, 352_484)])
def test_param_count_matches_table2(n, expected):
    assert legcf_params(500, 2, n, 128) == expected
    assert legcf_honest_params(500, 2, n, 128) == pytest.approx(expected + 2 * n * 9 / 32)
    assert n * 128 == pytest.approx({70_839: 9.07e6, 116_198: 14.87e6, 144_242: 18.46e6}[n], rel=1e-3)


def test_index_bits():
    assert [index_bits(c) for c in (1, 2, 3, 256, 257, 500, 512, 513)] == [1, 1, 2, 8, 9, 9, 9, 10]


# --- the knob solver (invariant 18) ----------------------------------------------------------


@pytest.mark.parametrize("n", [1_000, 22_531, 69_534])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("rho", [0.03, 0.05, 0.1, 0.33, 0.8, 1.0])
def test_solver_never_exceeds_the_budget(rho, n, d):
    c, t = solve_codebook(rho, n, d)
    budget = rho * n * d
    assert t == (2 if legcf_params(3, 2, n, d) <= budget else 1) and c >= t + 1
    assert legcf_params(c, t, n, d) <= budget < legcf_params(c + 1, t, n, d)


@pytest.mark.parametrize("n,rho,c", [(69_534, 0.80, 54_540), (69_534, 0.33, 21_859), (69_534, 0.10, 5_866),
                                     (69_534, 0.08, 4_476), (69_534, 0.05, 2_390), (22_531, 0.80, 17_672),
                                     (22_531, 0.10, 1_901), (22_531, 0.05, 774)])
def test_solver_reproduces_the_spec_examples(n, rho, c):
    assert solve_codebook(rho, n, 128) == (c, 2)


@pytest.mark.parametrize("n,c500", [(69_534, 0.0228), (22_531, 0.0378)])
def test_c500_corresponds_to_the_spec_ratio(n, c500):
    assert legcf_params(500, 2, n, 128) / (n * 128) == pytest.approx(c500, abs=5e-5)


@pytest.mark.parametrize("n,rho,expected", [(22_531, 0.10, (500, 9)), (22_531, 0.05, (500, 3)),
                                            (22_531, 0.02, (98, 2)), (69_534, 0.10, (500, 11))])
def test_c_max_keeps_the_paper_codebook_and_spends_the_rest_on_t(n, rho, expected):
    c, t = solve_codebook(rho, n, 128, c_max=500)
    assert (c, t) == expected
    budget = rho * n * 128
    assert legcf_params(c, t, n, 128) <= budget
    if c == 500:  # one more assignment entry per entity would not fit
        assert legcf_params(c, t + 1, n, 128) > budget
    assert solve_codebook(rho, n, 128, t=2, c_max=500) == solve_codebook(rho, n, 128, t=2)  # explicit t


def test_solver_falls_back_to_t1_and_then_fails_clearly():
    n, d = 1_000, 128
    c, t = solve_codebook(0.015, n, d)  # t=2 needs 2,384 parameters, the budget is 1,920
    assert t == 1 and c >= 2
    assert legcf_params(c, 1, n, d) <= 0.015 * n * d < legcf_params(c + 1, 1, n, d)
    with pytest.raises(InfeasibleTargetError, match="infeasible"):
        solve_codebook(0.015, n, d, t=2)  # an explicit t has no fallback
    with pytest.raises(MethodError, match=r"emb target 0\.005 is infeasible at d=128, N=1000"):
        solve_codebook(0.005, n, d)


@pytest.mark.parametrize("n,d,t", [(1_000, 128, 0), (100, 16, 0), (22_531, 128, 2), (500, 32, 1)])
def test_infeasible_message_names_the_smallest_feasible_target(n, d, t):
    with pytest.raises(InfeasibleTargetError) as err:
        solve_codebook(1e-4, n, d, t)
    smallest = float(re.search(r"smallest feasible target is about ([0-9.]+)", str(err.value)).group(1))
    solve_codebook(smallest + 1e-4, n, d, t)  # feasible (the message rounds to 4 decimals)
    with pytest.raises(InfeasibleTargetError):
        solve_codebook(smallest - 1e-3, n, d, t)


# --- the stage-2 schedule -------------------------------------------------------------------------------


def _toy_model(c: int = 6, t: int = 2, d: int = 4, seed: int = 0):
    data = clustered_data()
    graph = toy_graph(data)
    s = metis_assignment(metis_parts(60, 40, data.train, c, 0), c, t, 0.6, np.random.default_rng(seed))
    torch.manual_seed(seed)
    return data, graph, s, CompositionalLightGCN(graph, s, d, 2)


def test_update_hook_uses_the_old_s_for_the_first_batch_and_installs_the_new_one_after_it():
    data, graph, s0, model = _toy_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    hook = LegcfHook(model, clip=3.0, update_every=2)
    with torch.no_grad():
        _, h_full, h_meta = model.forward_all()
    expected, _ = assignment_update(h_full, h_meta, 2)
    assert not np.allclose(dense_s(expected), dense_s(s0))  # the update really changes S
    batches = [torch.from_numpy(data.train[k: k + 32]) for k in (0, 32)]

    hook.epoch_start(1)
    assert hook.pending is not None and [u["epoch"] for u in hook.updates] == [1]
    np.testing.assert_allclose(dense_s(model.assignment()), dense_s(s0))  # not installed yet
    # the first batch's loss is the loss under the old S
    ref = CompositionalLightGCN(graph, s0, 4, 2)
    ref.load_state_dict(model.state_dict())
    b = batches[0]
    neg = torch.randint(0, 40, (32,), generator=torch.Generator().manual_seed(0))
    loss = sum(model.bpr_loss(b[:, 0], b[:, 1], neg, 5e-4))
    torch.testing.assert_close(loss, sum(ref.bpr_loss(b[:, 0], b[:, 1], neg, 5e-4)))
    optimizer.zero_grad()
    loss.backward()
    hook.before_step(1, optimizer)
    optimizer.step()
    hook.step_end(1, optimizer)
    # installed after that batch's step, computed from the weights the batch saw
    np.testing.assert_allclose(dense_s(model.assignment()), dense_s(expected), rtol=1e-6)
    np.testing.assert_allclose(dense_graph(model.propagation_graph),
                               dense_graph(expanded_graph(graph, expected)), rtol=1e-6)
    assert hook.pending is None
    # a second batch of the same epoch does not change S
    b = batches[1]
    optimizer.zero_grad()
    sum(model.bpr_loss(b[:, 0], b[:, 1], neg, 5e-4)).backward()
    hook.before_step(2, optimizer)
    optimizer.step()
    hook.step_end(2, optimizer)
    np.testing.assert_allclose(dense_s(model.assignment()), dense_s(expected), rtol=1e-6)
    # every update_every = 2 epochs: epochs 1 and 3, not 2
    hook.epoch_start(2)
    assert hook.pending is None
    hook.epoch_start(3)
    assert hook.pending is not None and [u["epoch"] for u in hook.updates] == [1, 3]
    assert all(u["columns_used"] <= 6 and u["clamped"] >= 0 for u in hook.updates)


def test_no_updates_without_update_every():
    model = _toy_model()[3]
    hook = LegcfHook(model, clip=3.0)
    hook.epoch_start(1)
    assert hook.pending is None and hook.updates == []


class _Recorder(TrainHook):
    def __init__(self, model):
        self.model, self.states = model, []

    def step_end(self, step, optimizer):
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def test_train_end_keeps_the_last_state_not_the_best():
    data, _, _, model = _toy_model()
    hook = LegcfHook(model, clip=3.0, update_every=1)
    recorder = _Recorder(model)
    config = small_config(epochs=3, eval_every=1, batch_size=32, lr=0.05)
    sampler = MultiNegativeSampler(data.train, data.n_users, data.n_items, 5)
    result = fit_bpr(model, data, config, progress=False, hooks=[hook, recorder], sampler=sampler)
    assert result.epochs == 3 and len(hook.updates) == 3
    last = recorder.states[-1]
    assert hook.last_state is not None and set(hook.last_state) == set(last)
    for k, v in last.items():
        assert torch.equal(hook.last_state[k], v), k
    # the last state carries the S installed in the last epoch, not the first one
    first, final = (Assignment(st["assign_index"], st["assign_value"], 6)
                    for st in (recorder.states[0], last))
    assert not np.allclose(dense_s(first), dense_s(final))


def test_adam_moments_carry_over_exactly_to_a_new_optimiser():
    from bench.training import make_adam

    def copy_of(model):
        twin = _toy_model()[3]
        twin.load_state_dict(model.state_dict())
        return twin

    _, _, _, model = _toy_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_adam(params, 0.01)
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(4)]

    def step(optimizer, ps, gs):
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.clone()
        optimizer.step()

    for gs in grads[:3]:
        step(opt, params, gs)
    moments = adam_moments(model, opt)
    twin = copy_of(model)
    twin_params = [p for p in twin.parameters() if p.requires_grad]
    carried = make_adam(twin_params, 0.01)
    assert load_adam_moments(twin, carried, moments) == len(params)
    fresh_model = copy_of(model)
    fresh_params = [p for p in fresh_model.parameters() if p.requires_grad]
    fresh = make_adam(fresh_params, 0.01)
    step(opt, params, grads[3])
    step(carried, twin_params, grads[3])
    step(fresh, fresh_params, grads[3])
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params, strict=True))
    assert not all(torch.allclose(a, b) for a, b in zip(params, fresh_params, strict=True))
    assert all(float(v) == 4 for k, v in adam_moments(twin, carried).items() if k.endswith(".step"))


def test_stage_2_continues_stage_1s_adam_unless_asked_for_a_fresh_one(tmp_path, monkeypatch):
    import methods.shared.composition_training as training_module

    calls = []
    real = training_module.load_adam_moments

    def spy(model, optimizer, moments):
        calls.append({k: float(v) for k, v in moments.items() if k.endswith(".step")})
        return real(model, optimizer, moments)

    monkeypatch.setattr(training_module, "load_adam_moments", spy)
    models = {}
    for mode in ("continue", "fresh"):
        ctx = method_context(0, checkpoint_dir=tmp_path, dim=16)
        models[mode] = LEGCF(stage2_adam=mode, pretrain_epochs=2, update_epochs=1).compress(ctx, Target(0.5))
    assert len(calls) == 1  # only the "continue" run loaded stage 1's moments (stage 1 cached for both)
    pre = models["continue"].settings["pretrain"]
    assert "adam" not in pre and not pre["cached"] and models["fresh"].settings["pretrain"]["cached"]
    steps = set(calls[0].values())
    assert len(steps) == 1 and steps.pop() > 0  # every parameter's step count carried over
    a, b = (models[m].representations()[0] for m in ("continue", "fresh"))
    assert not torch.allclose(a, b)  # a different optimiser state gives a different stage 2


# --- the method end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def legcf_runs(tmp_path_factory):
    """LEGCF at emb 0.5 on the toy data (dim 16), full and "no-update", sharing the cached stage 1."""
    cache = tmp_path_factory.mktemp("legcf-ckpt")
    out = {}
    for ablation in ("none", "no-update"):
        ctx = method_context(0, checkpoint_dir=cache, dim=16)
        model = LEGCF(ablation=ablation, pretrain_epochs=2, update_epochs=2).compress(ctx, Target(0.5))
        out[ablation] = (ctx, model)
    return out


def test_compress_measures_the_paper_parameter_count(legcf_runs):
    from bench.measure.size import achieved_compression

    ctx, model = legcf_runs["none"]
    n, d = 100, 16
    c, t = model.settings["c"], model.settings["t"]
    assert (c, t) == (math.floor((0.5 * n * d - 2 * n) / d), 2)
    sizes = achieved_compression(model, 60, 40, len(ctx.data.train), d)
    assert sizes["emb_achieved"] == pytest.approx((c * d + t * n) / (n * d))
    assert sizes["emb_achieved"] <= 0.5
    assert sizes["bits_assignment"] == t * n * 32 + t * n * index_bits(c)
    assert model.measurements["legcf_params_paper"] == c * d + t * n
    assert model.measurements["emb_ratio_honest"] == pytest.approx(legcf_honest_params(c, t, n, d) / (n * d))
    assert sizes["edge_achieved"] == 1.0
    init = model.settings["pretrain"]["init"]
    assert model.measurements["partition_edges_inside"] == init["partition_edges_inside"]
    assert 0 < model.measurements["partition_edges_inside"] < 1
    assert model.measurements["partition_empty_repaired"] == init["partition_empty_repaired"]
    assert model.settings["update_stage"]["updates"]  # stage 2 ran its updates
    users, items = model.representations()
    assert users.shape == (60, d) and items.shape == (40, d) and torch.isfinite(users).all()


def test_the_exported_row_sums_and_the_report_notes_follow_the_stages(legcf_runs):
    ctx, model = legcf_runs["none"]
    # the cell's training stages: stage 1 (built and cached here) and stage 2, with their budgets
    assert [(st["stage"], st["cached"], st["budget_epochs"]) for st in ctx.stages] == [
        ("legcf-pretrain", False, 2), ("legcf-update", False, 2)]
    frozen_ctx = legcf_runs["no-update"][0]
    assert [(st["stage"], st["cached"]) for st in frozen_ctx.stages] == [("legcf-pretrain", True)]
    sums = model.module.assignment().value.sum(1)
    assert model.measurements["assignment_row_sum_mean"] == pytest.approx(float(sums.mean()))
    expected = LEGCF.update_notes("recall@10", model.settings["pretrain"], model.settings["update_stage"])
    assert model.notes == expected
    # "no-update": S is the init (rows sum to 1) and there is no stage 2 to note
    _, frozen = legcf_runs["no-update"]
    assert frozen.measurements["assignment_row_sum_mean"] == pytest.approx(1.0)
    assert frozen.notes == []


def stage2_log(row_sums, valid):
    return {"updates": [{"row_sum_mean": v} for v in row_sums], "valid": {"recall@20": valid}}


@pytest.mark.parametrize(("row_sums", "before", "after", "shrunk", "worse"), [
    ([0.9, 0.5, 0.3], 0.10, 0.12, False, False),   # rows kept most of their mass; stage 2 helped
    ([0.04, 0.01], 0.10, 0.12, True, False),       # shrank (c > d) but still improved
    ([0.2, 0.3], 0.10, 0.09, True, True),          # below the 0.25 line once; ended lower
    ([0.5], 0.10, 0.10, False, False),             # a tie is not "below"
])
def test_update_notes_name_shrunk_rows_and_a_worse_stage_2(row_sums, before, after, shrunk, worse):
    notes = LEGCF.update_notes("recall@20", {"valid": {"recall@20": before}}, stage2_log(row_sums, after))
    assert [("shrank" in n) for n in notes].count(True) == shrunk
    assert [("ended below stage 1" in n) for n in notes].count(True) == worse
    assert len(notes) == shrunk + worse


def test_update_notes_are_empty_without_a_stage_2():
    assert LEGCF.update_notes("recall@20", {"valid": {"recall@20": 0.1}}, None) == []
    assert LEGCF.update_notes("recall@20", {"valid": {}}, {"updates": [], "valid": {}}) == []


def test_no_update_ablation_keeps_the_metis_init(legcf_runs):
    ctx, model = legcf_runs["no-update"]
    c, t = model.settings["c"], model.settings["t"]
    data = ctx.data
    parts = metis_parts(data.n_users, data.n_items, data.train, c, ctx.seed)
    assert model.settings["w_star"] == 0.9  # the code's default
    init = metis_assignment(parts, c, t, 0.9, ctx.rng("legcf", 1))
    np.testing.assert_allclose(dense_s(model.module.assignment()), dense_s(init))
    assert model.settings["update_stage"] is None
    assert model.settings["pretrain"]["cached"]  # stage 1 of the first run was reused
    # the full method did move S away from the init
    full = legcf_runs["none"][1].module.assignment()
    assert not np.allclose(dense_s(full), dense_s(init))


def test_bad_options_raise_method_errors_naming_them():
    ctx = method_context(0)
    for options, name in [({"w_star": 0.0}, "w_star"), ({"w_star": 1.5}, "w_star"), ({"chunk": 0}, "chunk"),
                          ({"update_every": -1}, "update_every"), ({"update_every": 0}, "update_every")]:
        with pytest.raises(MethodError, match=rf"option legcf\.{name} must be"):
            LEGCF(**options)  # a knob's range is checked when the method is constructed
    for options, message in [({"c": 1, "t": 2}, "c >= t"), ({"w_star": 1.0, "t": 2}, "1 only with t = 1")]:
        with pytest.raises(MethodError, match=message):  # rules on two knobs: the method's own
            LEGCF(**options).compress(ctx, Target(0.5))
    with pytest.raises(MethodError, match="ablation"):
        LEGCF(ablation="sometimes")
    with pytest.raises(InfeasibleTargetError):
        LEGCF().compress(ctx, Target(0.05))  # dim 8, N 100: even t=1 needs 2*8 + 100 > 40


def test_one_matrix_cell_end_to_end(tiny_root, tmp_path):
    # tiny budget: dim 8, N = 100: c = floor((0.5*800 - 200)/8) = 25 >= t + 1
    cell = run_single_cell(tiny_root, tmp_path / "out",
                           'datasets = ["tiny"]\nemb_targets = [0.5]\nseeds = [0]\n'
                           '[methods.legcf]\npretrain_epochs = 1\nupdate_epochs = 1\n')
    assert cell["status"] == "ok"
    m = cell["measurements"]
    assert m["emb_achieved"] == pytest.approx((25 * 8 + 2 * 100) / 800)
    assert m["legcf_params_paper"] == 25 * 8 + 2 * 100
