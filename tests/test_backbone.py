"""LightGCN backbone: normalised adjacency, propagation backends, gradients, BPR/L2 terms."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bench.backbone import graph as graph_module
from bench.backbone.graph import normalized_adjacency
from bench.backbone.lightgcn import LightGCN, l2_penalty
from tests.helpers import random_interactions


def dense_adjacency(n_users: int, n_items: int, pairs: np.ndarray) -> np.ndarray:
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in pairs:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    deg = a.sum(1)
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    return inv[:, None] * a * inv[None, :]


@pytest.fixture
def small_graph():
    rng = np.random.default_rng(0)
    n_users, n_items = 9, 13
    pairs = random_interactions(rng, n_users - 1, n_items, 3)  # last user has no edge
    return n_users, n_items, pairs


def test_normalized_adjacency_matches_dense_formula(small_graph):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    expected = dense_adjacency(n_users, n_items, pairs)
    got = np.zeros_like(expected)
    got[g.rows.numpy(), g.cols.numpy()] = g.values.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert g.nnz == 2 * len(pairs) and g.n_edges == len(pairs)


def test_duplicate_pairs_do_not_change_the_graph(small_graph):
    n_users, n_items, pairs = small_graph
    doubled = np.concatenate([pairs, pairs[:5]])
    a = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    b = normalized_adjacency(n_users, n_items, doubled[:, 0], doubled[:, 1])
    assert torch.equal(a.values, b.values)


BACKENDS = ["csr", "coo"] + (["torch_sparse"] if importlib.util.find_spec("torch_sparse") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_dense_product_and_gradient(small_graph, backend):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], backend=backend)
    dense = torch.from_numpy(dense_adjacency(n_users, n_items, pairs)).float()
    x = torch.randn(n_users + n_items, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w = torch.randn(n_users + n_items, 4)
    (g.matmul(g.matmul(x)) * w).sum().backward()
    (dense @ (dense @ x2) * w).sum().backward()
    torch.testing.assert_close(g.matmul(x), dense @ x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_propagation_is_the_mean_of_adjacency_powers(small_graph):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    torch.manual_seed(0)
    model = LightGCN(n_users, n_items, 5, 3, g)
    users, items = model.propagate()
    a = torch.from_numpy(dense_adjacency(n_users, n_items, pairs))
    e0 = model.layer0().detach().double()
    layers = [e0]
    for _ in range(3):
        layers.append(a @ layers[-1])
    expected = torch.stack(layers).mean(0)
    torch.testing.assert_close(torch.cat([users, items]).detach().double(), expected,
                               rtol=1e-5, atol=1e-6)
    # the isolated user keeps only its layer-0 embedding, divided by L + 1
    torch.testing.assert_close(users[-1].detach(), model.user_emb[-1].detach() / 4)


def test_bpr_loss_and_l2_forms(small_graph):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    torch.manual_seed(1)
    model = LightGCN(n_users, n_items, 6, 2, g)
    u, p, n = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    bpr, reg = model.bpr_loss(u, p, n, reg=0.1, reg_form="squared")
    eu, ei = model.propagate()
    expected = -torch.log(torch.sigmoid((eu[u] * ei[p]).sum(1) - (eu[u] * ei[n]).sum(1))).mean()
    torch.testing.assert_close(bpr, expected)
    rows = (model.user_emb[u], model.item_emb[p], model.item_emb[n])
    sq = 0.5 * sum((r ** 2).sum() for r in rows) / 3
    torch.testing.assert_close(reg, 0.1 * sq)
    nrm = sum(torch.sqrt((r ** 2).sum()) for r in rows) / 3
    torch.testing.assert_close(l2_penalty(*rows, form="norm"), nrm)
    with pytest.raises(ValueError, match="unknown L2 form"):
        l2_penalty(*rows, form="l1")


def test_bad_backbone_arguments(small_graph):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    with pytest.raises(ValueError, match="dimension"):
        LightGCN(n_users, n_items, 0, 2, g)
    with pytest.raises(ValueError, match="unknown init"):
        LightGCN(n_users, n_items, 4, 2, g, init="zeros")
    with pytest.raises(ValueError, match="unknown propagation backend"):
        normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], backend="dense")


@pytest.mark.parametrize("slice_rows", [True, False])
@pytest.mark.parametrize("n_layers", [0, 1, 3])
@pytest.mark.parametrize("reg_form", ["squared", "norm"])
def test_fused_readout_step_equals_dense_autograd(small_graph, n_layers, reg_form, slice_rows, monkeypatch):
    """bpr_loss's fused path (one gather, Horner propagation both ways, the last forward layer for
    the batch's rows only, sliced or not) against dense float64 autograd through the per-layer
    definition, with repeated users and items in the batch."""
    monkeypatch.setattr(graph_module, "ROW_SLICE_MAX_FRACTION", 1.0 if slice_rows else 0.0)
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    torch.manual_seed(2)
    model = LightGCN(n_users, n_items, 4, n_layers, g)
    assert model._fused_readout()
    u, p, n = torch.tensor([0, 0, 3, 8, 5]), torch.tensor([1, 1, 2, 12, 0]), torch.tensor([4, 2, 2, 0, 0])
    bpr, reg = model.bpr_loss(u, p, n, reg=0.3, reg_form=reg_form)
    (bpr + reg).backward()
    a = torch.from_numpy(dense_adjacency(n_users, n_items, pairs))
    eu = model.user_emb.detach().double().requires_grad_(True)
    ei = model.item_emb.detach().double().requires_grad_(True)
    x = torch.cat([eu, ei])
    layers = [x]
    for _ in range(n_layers):
        layers.append(a @ layers[-1])
    final = torch.stack(layers).mean(0)
    fu, fi = final[:n_users], final[n_users:]
    ref_bpr = torch.nn.functional.softplus(-((fu[u] * fi[p]).sum(1) - (fu[u] * fi[n]).sum(1))).mean()
    ref_reg = 0.3 * l2_penalty(eu[u], ei[p], ei[n], form=reg_form)
    (ref_bpr + ref_reg).backward()
    torch.testing.assert_close(bpr.double(), ref_bpr, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reg.double(), ref_reg, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.user_emb.grad.double(), eu.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.item_emb.grad.double(), ei.grad, rtol=1e-5, atol=1e-7)


def test_subclasses_that_change_layers_keep_autograd_path(small_graph):
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])

    class Scaled(LightGCN):
        def layer0(self) -> torch.Tensor:
            return 2 * super().layer0()

    model = Scaled(n_users, n_items, 4, 2, g)
    assert not model._fused_readout()


def test_csr_product_ignores_what_its_output_held(small_graph):
    """The CSR product writes into an uninitialised tensor through addmm with beta = 0: whatever that
    memory held (NaN here), empty rows (the isolated user) come out as exact zeros."""
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], backend="csr")
    x = torch.randn(n_users + n_items, 3)
    out = torch.full((n_users + n_items, 3), float("nan"))
    torch.addmm(out, g._mat, x, beta=0, out=out)
    dense = torch.from_numpy(dense_adjacency(n_users, n_items, pairs)).float()
    torch.testing.assert_close(out, dense @ x, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[n_users - 1], torch.zeros(3))


@pytest.mark.parametrize("backend", ["csr", "coo"])
@pytest.mark.parametrize("slice_rows", [True, False])
def test_row_product_equals_the_full_products_rows_bit_for_bit(small_graph, backend, slice_rows, monkeypatch):
    """(Â x)[rows] from the sliced rows (or the full product, above the slicing threshold) is the
    full product's rows exactly, for any set of rows: empty rows (the isolated user), one row,
    every row."""
    monkeypatch.setattr(graph_module, "ROW_SLICE_MAX_FRACTION", 1.0 if slice_rows else 0.0)
    n_users, n_items, pairs = small_graph
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], backend=backend)
    x = torch.randn(g.n_nodes, 5, generator=torch.Generator().manual_seed(4))
    full = g.product(x)
    for rows in ([n_users - 1], [0], [1, n_users - 1, n_users + 2, g.n_nodes - 1], list(range(g.n_nodes))):
        rows_t = torch.tensor(rows)
        assert torch.equal(g.row_product(rows_t, x), full.index_select(0, rows_t))
    assert torch.equal(g.row_product(torch.tensor([n_users - 1]), x), torch.zeros(1, 5))


def test_distinct_rows_maps_every_entry_to_its_slot():
    from bench.backbone.lightgcn import _distinct_rows

    idx = torch.tensor([5, 2, 5, 9, 0, 2])
    distinct, position = _distinct_rows(idx, 12)
    assert distinct.tolist() == [0, 2, 5, 9]
    assert torch.equal(distinct.index_select(0, position), idx)
