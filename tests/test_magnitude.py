"""magnitude (docs/methods/magnitude.md): OMP and MagPrune, invariants M1-M3."""

from __future__ import annotations

import math

import pytest
import torch

from bench.contract import MethodError, Target
from bench.measure.size import achieved_compression
from bench.training import evaluate_split
from methods.magnitude import MagnitudePruning, magprune_mask, magprune_table_mask, omp_mask
from methods.shared.masking import MaskedLightGCN
from tests.helpers import method_context


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 8, generator=g)


@pytest.mark.parametrize("ratio", [0.08, 0.2, 0.5, 0.9])
def test_m1_omp_keeps_exactly_k_largest(table, ratio):
    mask = omp_mask(table, ratio)
    k = round(ratio * table.numel())
    assert int(mask.sum()) == k
    assert table.abs()[mask].min() >= table.abs()[~mask].max()
    pruned = table * mask
    assert torch.equal(omp_mask(pruned, ratio), mask)  # pruning twice is idempotent
    assert torch.equal(pruned * omp_mask(pruned, ratio), pruned)


def test_m1_omp_ratio_one_is_unchanged(table):
    assert omp_mask(table, 1.0).all()


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("protect", [0, 1, 3])
def test_m2_magprune_table_mask(table, ratio, protect):
    n, d = table.shape
    if protect > math.floor(d * ratio):
        with pytest.raises(MethodError, match="cannot prune"):
            magprune_table_mask(table, 1 - ratio, protect)
        return
    mask = magprune_table_mask(table, 1 - ratio, protect)
    assert int((~mask).sum()) == math.floor(n * d * (1 - ratio) + 1e-9)
    top = torch.argsort(-table.abs(), dim=1, stable=True)[:, :protect]
    assert mask.gather(1, top).all()  # every row keeps its own top-m
    # among unprotected entries, everything pruned is no larger than anything kept
    protected = torch.zeros_like(mask)
    protected.scatter_(1, top, True)
    free_kept = mask & ~protected
    if (~mask).any() and free_kept.any():
        assert table.abs()[~mask].max() <= table.abs()[free_kept].min()


def test_m2_each_table_reaches_the_ratio_separately():
    g = torch.Generator().manual_seed(1)
    user, item = torch.randn(25, 8, generator=g) * 3, torch.randn(15, 8, generator=g) * 0.1
    mask = magprune_mask(user, item, 0.25, 1)
    assert int(mask[:25].sum()) == 25 * 8 - math.floor(25 * 8 * 0.75)
    assert int(mask[25:].sum()) == 15 * 8 - math.floor(15 * 8 * 0.75)
    # a global mask would have pruned the small-valued item table almost entirely
    assert int(omp_mask(torch.cat([user, item]), 0.25)[25:].sum()) < int(mask[25:].sum())


def _run(target, seed=0, **options):
    ctx = method_context(seed)
    return ctx, MagnitudePruning(**options).compress(ctx, target)


def test_m1_omp_fine_tunes_with_the_mask_held():
    ctx, cm = _run(Target(0.3))
    base = ctx.base().model
    expected = omp_mask(base.layer0(), 0.3)
    model = cm.module
    assert isinstance(model, MaskedLightGCN)
    assert torch.equal(model.mask, expected)  # mask unchanged by fine-tuning
    table = model.layer0().detach()
    assert (table[~expected] == 0).all()
    assert not torch.equal(table, base.layer0().detach() * expected)  # it did fine-tune
    # cost: the dense run plus the fine-tuning
    assert cm.training.epochs == ctx.base_info["training"].epochs + ctx.cost.epochs
    assert cm.training.seconds > ctx.base_info["training"].seconds
    sizes = achieved_compression(cm, 60, 40, len(ctx.data.train), 8)  # M3
    assert sizes["emb_achieved"] == round(0.3 * 800) / 800


def test_m2_magprune_without_pruning_reproduces_the_dense_metrics():
    ctx, cm = _run(Target(1.0), variant="magprune", select_metric="ndcg@10")
    base = ctx.base().model
    dense = evaluate_split(base, ctx.data, "test", ctx.budget).metrics
    pruned = evaluate_split(cm.module, ctx.data, "test", ctx.budget).metrics
    assert pruned == dense
    assert cm.module.nnz() == 800


def test_m2_magprune_sweeps_protect_on_validation_and_is_post_hoc():
    ctx, cm = _run(Target(0.25), variant="magprune", select_metric="ndcg@10")
    sweep = cm.settings["protect_sweep"]
    assert sorted(sweep) == list(range(math.floor(8 * 0.25) + 1))
    assert cm.settings["protect"] == max(sweep, key=lambda m: (sweep[m], -m))
    base = ctx.base().model
    model = cm.module
    expected = magprune_mask(base.user_emb, base.item_emb, 0.25, cm.settings["protect"])
    assert torch.equal(model.mask, expected)
    assert torch.equal(model.layer0().detach(), base.layer0().detach() * expected)  # no fine-tuning
    assert ctx.cost.epochs == 0
    valid = evaluate_split(model, ctx.data, "valid", ctx.budget).metrics["ndcg@10"]
    assert valid == sweep[cm.settings["protect"]]
    sizes = achieved_compression(cm, 60, 40, len(ctx.data.train), 8)  # M3
    assert sizes["emb_achieved"] == model.nnz() / 800


def test_bad_options_name_the_problem():
    with pytest.raises(MethodError, match=r"magnitude\.variant"):
        MagnitudePruning(variant="lottery")
    with pytest.raises(MethodError, match=r"magnitude.protect must lie in \[0, floor\(d x emb\) = 2\]"):
        _run(Target(0.25), variant="magprune", protect=5)
    with pytest.raises(MethodError, match="select_metric 'ndcg@20' is not computed"):
        _run(Target(0.25), variant="magprune")
