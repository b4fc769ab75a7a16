"""Shared entry masks: exact counts, sparse storage formats, sparse-aware multiply-adds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbone.graph import normalized_adjacency
from bench.contract import MethodError
from methods.shared.masking import (
    KeepMasked,
    MaskedLightGCN,
    exact_random_mask,
    kept_count,
    magnitude_mask,
    per_row_random_mask,
    sparse_aware_propagation_macs,
    sparse_storage_bits,
    sparse_table_parts,
)
from tests.helpers import random_interactions


def decode(parts, info, shape) -> torch.Tensor:
    """Rebuild the dense table from a sparse artifact, the way a loader would."""
    by = {p.name: p.tensor for p in parts}
    n_rows, dim = shape
    fmt = info["storage_format"]
    if fmt == "dense":
        return by["emb_table"].clone()
    out = torch.zeros(n_rows * dim)
    if fmt == "bitmap":
        out[by["emb_mask"]] = by["emb_values"]
        return out.reshape(n_rows, dim)
    offsets = by["emb_row_offsets"].long()
    rows = torch.repeat_interleave(torch.arange(n_rows), offsets[1:] - offsets[:-1])
    out = out.reshape(n_rows, dim)
    out[rows, by["emb_columns"].long()] = by["emb_values"]
    return out


def test_exact_masks_keep_exact_counts():
    rng = np.random.default_rng(0)
    assert exact_random_mask(1000, 337, rng).sum() == 337
    m = per_row_random_mask(50, 16, 5, rng)
    assert (m.sum(axis=1) == 5).all()
    assert kept_count(0.08, 69_534 * 32) == round(0.08 * 69_534 * 32)
    with pytest.raises(MethodError, match="kept fraction"):
        kept_count(1.5, 10)
    with pytest.raises(MethodError, match="cannot keep"):
        exact_random_mask(10, 11, rng)


def test_magnitude_mask_keeps_the_largest_with_ties_to_the_lower_index():
    values = torch.tensor([[0.5, -2.0, 0.5], [1.0, -0.5, 0.1]])
    mask = magnitude_mask(values, 3)
    # |v| = .5 2 .5 / 1 .5 .1: keep 2 and 1, then the first of the three 0.5 ties (flat index 0)
    assert mask.tolist() == [[True, True, False], [True, False, False]]


@pytest.mark.parametrize("ratio", [0.02, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dim", [8, 300])
def test_sparse_artifact_round_trips_and_takes_the_smallest_format(ratio, dim):
    rng = np.random.default_rng(1)
    n_rows = 40
    table = torch.randn(n_rows, dim)
    mask = torch.from_numpy(exact_random_mask(n_rows * dim, kept_count(ratio, n_rows * dim), rng)
                            ).reshape(n_rows, dim)
    table = table * mask
    parts, info = sparse_table_parts(table, mask)
    assert torch.equal(decode(parts, info, (n_rows, dim)), table)
    k = int(mask.sum())
    bits = sparse_storage_bits(n_rows, dim, k)
    stored = sum(p.bits for p in parts)
    allowed = ["dense"] if k == n_rows * dim else [f for f in bits if f != "dense"]
    assert stored == min(bits[f] for f in allowed) == bits[info["storage_format"]]
    assert sum(p.numel for p in parts if p.param) == k  # stored parameters = kept entries
    assert info["bytes_dense"] == n_rows * dim * 4
    assert info["bytes_nominal"] == 4 * k
    assert ("csr8" in bits) == (dim <= 256)


def test_storage_bits_follow_the_spec_formulas():
    # the DSL paper's Yelp2018 table, r = 0.5
    n_rows, d = 69_716, 64
    n, k = n_rows * d, n_rows * d // 2
    bits = sparse_storage_bits(n_rows, d, k)
    assert bits["dense"] == 32 * n
    assert bits["bitmap"] == n + 32 * k  # 2.125 B per entry at r = 0.5
    assert bits["csr32"] == 64 * k + 32 * (n_rows + 1)
    assert bits["csr8"] == 40 * k + 32 * (n_rows + 1)
    assert bits["bitmap"] / 8 / n == pytest.approx(2.125)


def _brute_force_sparse_macs(adj: np.ndarray, support: np.ndarray, n_layers: int) -> int:
    total = 0
    s = support.astype(bool)
    for _ in range(n_layers):
        for c in np.nonzero(adj)[1]:
            total += int(s[c].sum())
        s = (adj.astype(bool).astype(int) @ s.astype(int)) > 0
    return total


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_sparse_aware_macs_equal_a_brute_force_count(n_layers):
    rng = np.random.default_rng(2)
    pairs = random_interactions(rng, 12, 9, 3)
    g = normalized_adjacency(12, 9, pairs[:, 0], pairs[:, 1])
    adj = np.zeros((21, 21))
    adj[g.rows.numpy(), g.cols.numpy()] = g.values.numpy()
    support = rng.random((21, 5)) < 0.3
    got = sparse_aware_propagation_macs(g, torch.from_numpy(support), n_layers)
    assert got == _brute_force_sparse_macs(adj, support, n_layers)
    full = sparse_aware_propagation_macs(g, torch.ones(21, 5, dtype=torch.bool), n_layers)
    assert full == n_layers * g.nnz * 5  # a dense table costs the dense count


def test_masked_model_masks_forward_gradients_and_state():
    rng = np.random.default_rng(3)
    pairs = random_interactions(rng, 10, 8, 3)
    g = normalized_adjacency(10, 8, pairs[:, 0], pairs[:, 1])
    mask = torch.from_numpy(exact_random_mask(18 * 4, 30, rng)).reshape(18, 4)
    for in_forward in (True, False):
        torch.manual_seed(0)
        model = MaskedLightGCN(10, 8, 4, 2, g, mask, mask_in_forward=in_forward)
        assert torch.equal(model.layer0() != 0, mask & (model.layer0() != 0))
        assert model.nnz() == 30
        users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
        bpr, pen = model.bpr_loss(users, pos, neg, reg=1e-2)
        (bpr + pen).backward()
        grad = torch.cat([model.user_emb.grad, model.item_emb.grad])
        if in_forward:
            assert (grad[~mask] == 0).all()
        else:  # the true gradient at the sparse point: DSL's growth needs it
            assert (grad[~mask] != 0).any()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        opt.step()
        KeepMasked(model).step_end(1, opt)
        assert (model.layer0()[~mask] == 0).all()
        state = model.state_dict()
        assert torch.equal(torch.cat([state["user_mask"], state["item_mask"]]), mask)
        assert (torch.cat([state["user_emb"], state["item_emb"]])[~mask] == 0).all()
