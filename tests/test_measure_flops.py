"""FLOP (multiply-add) counting: fvcore's traced counts equal hand-derived formulas exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.backbone.graph import NormalizedGraph, normalized_adjacency
from bench.backbone.lightgcn import LightGCN
from bench.contract import CompressedModel
from bench.measure.flops import (
    FLOPS_UNIT,
    analytic_lightgcn_flops,
    count_inference_flops,
    count_train_macs_per_epoch,
)

N_USERS, N_ITEMS = 30, 40


def random_graph(seed: int = 0, keep: float = 1.0) -> NormalizedGraph:
    """~200 random user-item pairs (deduplicated); ``keep < 1`` prunes a random share of them."""
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 200), rng.integers(0, N_ITEMS, 200)], 1), axis=0)
    if keep < 1:
        pairs = pairs[rng.permutation(len(pairs))[: int(len(pairs) * keep)]]
    return normalized_adjacency(N_USERS, N_ITEMS, pairs[:, 0], pairs[:, 1])


def lightgcn(dim: int, n_layers: int, graph: NormalizedGraph) -> CompressedModel:
    torch.manual_seed(0)
    model = LightGCN(N_USERS, N_ITEMS, dim, n_layers, graph)
    return CompressedModel(module=model, artifact=[], graph=graph, n_layers=n_layers)


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize(("dim", "n_layers"), [(4, 0), (8, 1), (16, 3)])
@pytest.mark.parametrize("batch_users", [7, 256])  # 30 users: not a multiple of 7; all at once
def test_lightgcn_inference_flops_equal_analytic(pruned, dim, n_layers, batch_users):
    graph = random_graph(keep=0.5 if pruned else 1.0)
    counted = count_inference_flops(lightgcn(dim, n_layers, graph), N_USERS, batch_users=batch_users)
    expected = analytic_lightgcn_flops(graph.nnz, dim, n_layers, N_USERS, N_ITEMS)
    assert {k: counted[k] for k in expected} == expected
    assert counted["flops_propagation"] == n_layers * graph.nnz * dim
    assert counted["flops_scoring"] == N_USERS * N_ITEMS * dim
    assert counted["flops_unit"] == FLOPS_UNIT
    assert counted["flops_unsupported_ops"] == sorted(counted["flops_unsupported_ops"])
    if n_layers:
        assert "aten::add" in counted["flops_unsupported_ops"]  # the layer sum is elementwise


def test_pruning_reduces_propagation_flops_by_the_kept_share():
    dense, pruned = random_graph(), random_graph(keep=0.5)
    assert pruned.nnz < dense.nnz
    f_dense = count_inference_flops(lightgcn(8, 2, dense), N_USERS)["flops_propagation"]
    f_pruned = count_inference_flops(lightgcn(8, 2, pruned), N_USERS)["flops_propagation"]
    assert f_pruned * dense.nnz == f_dense * pruned.nnz


def test_inference_flops_leave_module_mode():
    model = lightgcn(4, 1, random_graph())
    model.module.train()
    count_inference_flops(model, N_USERS)
    assert model.module.training


class Projected(nn.Module):
    """Dense products only: representations ``(U @ W, I @ W)``, score ``u @ (i @ M).T``."""

    def __init__(self, dim: int, custom_score: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.users = nn.Parameter(torch.randn(N_USERS, dim, generator=g))
        self.items = nn.Parameter(torch.randn(N_ITEMS, dim, generator=g))
        self.w = nn.Parameter(torch.randn(dim, dim, generator=g))
        self.m = nn.Parameter(torch.randn(dim, dim, generator=g))
        if custom_score:
            self.score = self._score

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.users @ self.w, self.items @ self.w

    def _score(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return u @ (i @ self.m).T


@pytest.mark.parametrize("custom_score", [False, True])
def test_dense_products_in_propagate_and_score_are_counted(custom_score):
    dim = 6
    model = CompressedModel(module=Projected(dim, custom_score), artifact=[], graph=None, n_layers=0)
    counted = count_inference_flops(model, N_USERS, batch_users=8)
    assert counted["flops_propagation"] == (N_USERS + N_ITEMS) * dim * dim
    # a custom score has a per-call part (I x d x d for i @ M) that must not scale with the users
    fixed = N_ITEMS * dim * dim if custom_score else 0
    assert counted["flops_scoring"] == fixed + N_USERS * N_ITEMS * dim
    assert counted["flops"] == counted["flops_propagation"] + counted["flops_scoring"]


@pytest.mark.parametrize(("n_train", "batch_size"), [(1000, 64), (1000, 1000), (100, 4096), (7, 1)])
@pytest.mark.parametrize(("dim", "n_layers"), [(8, 2), (4, 0)])
def test_lightgcn_train_macs_equal_analytic(n_train, batch_size, dim, n_layers):
    graph = random_graph()
    model = lightgcn(dim, n_layers, graph).module
    before = [p.detach().clone() for p in model.parameters()]
    macs = count_train_macs_per_epoch(model, n_train, batch_size, N_USERS, N_ITEMS)
    # What fvcore counts in one forward of LightGCN.bpr_loss: only the L sparse products of the
    # propagation, L x nnz x d per batch. Everything else is elementwise or indexing and is skipped:
    # the readout sum/mean, the gathers u_all[users], the triple scores (u * p).sum(1) (mul + sum),
    # softplus/mean and the L2 penalty (pow/sum). So the per-example part is 0 and an epoch of
    # ceil(n_train / batch_size) batches costs 3 x (forward + 2 x forward for the backward).
    n_batches = math.ceil(n_train / batch_size)
    assert macs == 3 * n_batches * n_layers * graph.nnz * dim
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.training


class ProjectedBPR(LightGCN):
    """LightGCN whose triple scores go through a d x d projection: d^2 MACs per example and item."""

    def __init__(self, dim: int, n_layers: int, graph: NormalizedGraph) -> None:
        super().__init__(N_USERS, N_ITEMS, dim, n_layers, graph)
        self.proj = nn.Parameter(torch.eye(dim))

    def bpr_loss(self, users, pos, neg, reg, reg_form="squared"):
        u_all, i_all = self.propagate()
        u = u_all[users] @ self.proj  # b x d x d
        p, n = i_all[pos] @ self.proj, i_all[neg] @ self.proj  # 2 x b x d x d
        bpr = nn.functional.softplus((u * n).sum(1) - (u * p).sum(1)).mean()
        return bpr, bpr * 0.0


@pytest.mark.parametrize(("n_train", "batch_size"), [(1000, 64), (50, 50), (9, 4)])
def test_train_macs_separate_per_batch_and_per_example_parts(n_train, batch_size):
    dim, n_layers = 4, 2
    graph = random_graph()
    model = ProjectedBPR(dim, n_layers, graph)
    macs = count_train_macs_per_epoch(model, n_train, batch_size, N_USERS, N_ITEMS)
    per_batch = n_layers * graph.nnz * dim
    per_example = 3 * dim * dim
    # the last, partial batch pays the whole propagation but only its own examples' projections
    assert macs == 3 * (math.ceil(n_train / batch_size) * per_batch + n_train * per_example)


def test_bad_arguments_raise():
    model = lightgcn(4, 1, random_graph())
    with pytest.raises(ValueError, match="batch_users"):
        count_inference_flops(model, N_USERS, batch_users=0)
    with pytest.raises(ValueError, match="batch_size"):
        count_train_macs_per_epoch(model.module, 10, 0, N_USERS, N_ITEMS)
