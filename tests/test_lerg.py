"""LERG (docs/methods/lerg.md): the LSQ codebook (invariants 11, 12), the frozen
parts of fine-tuning (16), the storage formula (17), the knob solver (18) and the method end to end on
the toy data. Selection, rewiring and placeholders (13-16) are in ``tests/test_lerg_graph.py``."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import methods.lerg as lerg_module
from bench.backbone.graph import normalized_adjacency
from bench.contract import MethodError, Target
from bench.measure.size import achieved_compression
from methods.lerg import LERG, PlaceholderModel, lerg_bits, lerg_honest_bits, solve_lerg_codebook
from methods.shared.composition import CompositionalLightGCN, index_bits, metis_assignment, metis_parts
from methods.shared.composition_training import InfeasibleTargetError, LegcfHook
from methods.shared.quantization import code_range, dequantize, fake_quantize, init_steps, quantize_codes
from tests.helpers import clustered_data, method_context

N_TOY, D_TOY = 100, 16


# --- the quantised codebook (invariants 11, 12) -----------------------------------------------------


def test_code_range_and_its_checks():
    assert code_range(4) == (-8, 7) and code_range(8) == (-128, 127) and code_range(16) == (-32768, 32767)
    for bad in (1, 17, True, 8.0):
        with pytest.raises(ValueError, match="bits"):
            code_range(bad)


def test_init_steps_formula():
    table = torch.tensor([[1.0, -3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    step = init_steps(table, 8)
    assert step.shape == (2, 1)
    assert step[0, 0].item() == pytest.approx(2 * 1.5 / math.sqrt(127))
    assert step[1, 0].item() > 0  # an all-zero row still gets a positive step


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_codes_lie_on_the_grid_and_requantise_to_themselves(bits):
    q_min, q_max = code_range(bits)
    gen = torch.Generator().manual_seed(bits)
    table = torch.randn(6, 40, generator=gen) * 3
    step = table.abs().amax(1, keepdim=True) / (1.2 * q_max)  # the largest entries are clipped
    codes = quantize_codes(table, step, bits)
    assert not codes.is_floating_point()
    assert codes.min() >= q_min and codes.max() <= q_max
    assert ((codes == q_max) | (codes == q_min)).any(1).all()  # the clip range is reached
    fq = fake_quantize(table, step, bits)
    assert torch.equal(fq, codes.to(torch.float32) * step)
    assert torch.equal(dequantize(codes, step), fq)
    for row in range(6):
        assert torch.unique(fq[row]).numel() <= 2**bits
    if bits == 4:
        assert max(torch.unique(fq[r]).numel() for r in range(6)) > 8  # the bound is not trivial here
    assert torch.equal(quantize_codes(fq, step, bits), codes)
    # the result is close to the table where it is not clipped
    inside = (table / step >= q_min) & (table / step <= q_max)
    assert ((fq - table).abs()[inside] <= step.expand_as(table)[inside] / 2 + 1e-6).all()


def test_codes_use_the_narrowest_integer_type():
    table, step = torch.randn(2, 4), torch.full((2, 1), 0.1)
    assert quantize_codes(table, step, 4).dtype == torch.int8
    assert quantize_codes(table, step, 8).dtype == torch.int8
    assert quantize_codes(table, step, 16).dtype == torch.int16


@pytest.mark.parametrize("bits", [4, 8])
def test_ste_gradients_to_table_and_step(bits):
    q_min, q_max = code_range(bits)
    c, d = 4, 12
    gen = torch.Generator().manual_seed(0)
    step0 = torch.tensor([[0.1], [0.05], [0.2], [0.01]], dtype=torch.float64)
    v0 = torch.empty(c, d, dtype=torch.float64).uniform_(1.6 * q_min, 1.6 * q_max, generator=gen)
    v0 = torch.where((v0 - v0.round()).abs() < 1e-3, v0 + 0.1, v0)  # no value exactly on a rounding edge
    v0 = torch.where((v0 - q_max).abs() < 1e-3, v0 + 0.1, v0)
    table = (v0 * step0).requires_grad_()
    step = step0.clone().requires_grad_()
    upstream = torch.randn(c, d, dtype=torch.float64, generator=gen)
    (fake_quantize(table, step, bits) * upstream).sum().backward()

    v = table.detach() / step0
    inside = (v >= q_min) & (v <= q_max)
    assert inside.any() and (~inside).any()
    assert (table.grad[~inside] == 0).all()
    torch.testing.assert_close(table.grad[inside], upstream[inside])
    g = 1 / math.sqrt(d * q_max)
    local = torch.where(inside, v.round() - v, v.clamp(q_min, q_max))
    expected = g * (local * upstream).sum(1, keepdim=True)
    torch.testing.assert_close(step.grad, expected)


def test_step_stays_positive_after_a_step_that_pushes_it_negative():
    data = clustered_data()
    graph = normalized_adjacency(60, 40, data.train[:, 0], data.train[:, 1])
    s = metis_assignment(metis_parts(60, 40, data.train, 8, 0), 8, 2, 0.6, np.random.default_rng(0))
    model = CompositionalLightGCN(graph, s, 8, 2, expanded=False, bits=8)
    hook = LegcfHook(model, clip=0.0)
    optimizer = torch.optim.SGD([model.step], lr=1.0)
    model.step.grad = torch.full_like(model.step, 1e3)
    optimizer.step()
    assert (model.step < 0).all()
    hook.step_end(1, optimizer)
    assert (model.step > 0).all()
    users, items = model.propagate()
    assert torch.isfinite(users).all() and torch.isfinite(items).all()


# --- storage (invariant 17) and the knob solver (invariant 18) -------------------------------------


def test_storage_formula_reproduces_the_spec_example():
    n, d = 116_198, 128
    m = round(0.7 * n)
    bits = lerg_bits(2000, d, 8, 2, n, m, 500)
    full = 32 * n * d
    assert bits / 1e6 == pytest.approx(11.91, abs=0.005)
    assert bits == 11_910_403
    assert round(100 * bits / full, 2) == 2.50
    assert round(100 * (1 - bits / full), 1) == 97.5
    # c = 500 at fp32 gives 97.5% as well
    assert round(100 * (1 - lerg_bits(500, d, 32, 2, n, m, 500) / full), 1) == 97.5
    # the S values dominate: 7.4 Mbit, 1.56% of the full table
    assert 32 * 2 * n / 1e6 == pytest.approx(7.44, abs=0.005)
    assert lerg_honest_bits(2000, d, 8, 2, n, m, 500) == bits + 2 * n * 11


def test_storage_formula_terms():
    # nothing pruned: no placeholder terms
    assert lerg_bits(10, 16, 8, 2, 100, 100, 500) == 10 * 16 * 8 + 320 + 6400
    # r' = min(r, #pruned) rows and ceil(log2 r') bits per pruned entity
    assert lerg_bits(10, 16, 8, 2, 100, 95, 500) == 10 * 16 * 8 + 320 + 6400 + 32 * 5 * 16 + 5 * 3


@pytest.mark.parametrize("n,d,b,r,rho_ent", [(116_198, 128, 8, 500, 0.7), (22_531, 64, 4, 500, 0.5),
                                             (69_534, 128, 16, 200, 1.0), (5_000, 32, 8, 50, 0.1)])
@pytest.mark.parametrize("rho", [0.03, 0.05, 0.1, 0.2, 0.33])
def test_lerg_solver_never_exceeds_the_budget(n, d, b, r, rho_ent, rho):
    m = round(rho_ent * n)
    budget = rho * 32 * n * d

    def bits(c, m=m):
        return lerg_bits(c, d, b, 2, n, m, r)

    if bits(3) > budget:  # not even c = t + 1 rows fit
        with pytest.raises(InfeasibleTargetError):
            solve_lerg_codebook(rho, n, d, b, 2, r, m)
        return
    c = solve_lerg_codebook(rho, n, d, b, 2, r, m)
    assert c > 2 and bits(c) <= budget
    if bits(n) <= budget:  # at most one codebook row per entity
        assert c == n
    else:
        assert budget < bits(c + 1)
    # without m, the budget holds whatever m turns out to be
    c_any = solve_lerg_codebook(rho, n, d, b, 2, r, None)
    assert c_any <= c
    for m_any in (0, 1, n // 3, n - r - 1, n - r, n - r + 1, n - 1, n):
        assert bits(c_any, m_any) <= budget


def test_lerg_solver_reports_infeasible_targets():
    n, d = 116_198, 128
    with pytest.raises(InfeasibleTargetError, match="infeasible") as err:
        solve_lerg_codebook(0.015, n, d, 8, 2, 500, round(0.7 * n))  # S values alone need 1.56%
    assert isinstance(err.value, MethodError)
    with pytest.raises(InfeasibleTargetError, match="lerg: emb target"):
        solve_lerg_codebook(0.5, N_TOY, D_TOY, 8, 2, 500, None)  # 500 placeholders of 16 floats > budget
    # just above the fixed parts: c = t + 1 rows fit, c = t do not count as feasible
    m = 80
    fixed = lerg_bits(0, d, 8, 2, n, m, 500)
    assert solve_lerg_codebook((fixed + 3 * (d * 8 + 32)) / (32 * n * d), n, d, 8, 2, 500, m) == 3
    with pytest.raises(InfeasibleTargetError):
        solve_lerg_codebook((fixed + 2 * (d * 8 + 32)) / (32 * n * d), n, d, 8, 2, 500, m)


# --- the method end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned():
    """LERG with 30% of the entities pruned (r = 10 placeholders), watching the fine-tuning fit."""
    seen: dict = {}
    original = lerg_module.fit_composition_stage

    def watching_fit(ctx, model, config, hook, sampler, extra_macs=0.0, stage="training"):
        if not isinstance(model, PlaceholderModel):
            return original(ctx, model, config, hook, sampler, extra_macs, stage)
        seen["params"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        # one backward: which tensors get a gradient
        users = torch.from_numpy(ctx.data.train[:50, 0])
        pos = torch.from_numpy(ctx.data.train[:50, 1])
        neg = torch.randint(0, ctx.data.n_items, (50,), generator=torch.Generator().manual_seed(0))
        sum(model.bpr_loss(users, pos, neg, 5e-4)).backward()
        seen["grads"] = {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
                         for n, p in model.named_parameters()}
        seen["buffer_grads"] = [n for n, b in model.named_buffers() if b.requires_grad or b.grad is not None]
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            seen["before"] = ({k: v.clone() for k, v in model.state_dict().items()},
                              torch.cat(model.propagate()))
        out = original(ctx, model, config, hook, sampler, extra_macs)
        with torch.no_grad():
            seen["after"] = ({k: v.clone() for k, v in model.state_dict().items()},
                             torch.cat(model.propagate()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lerg_module, "fit_composition_stage", watching_fit)
        ctx = method_context(0, dim=D_TOY)
        model = LERG(r=10, retention=0.7, pretrain_epochs=2, finetune_epochs=2).compress(ctx, Target(0.5))
    return ctx, model, seen


def test_pretrain_records_the_metis_partition(finetuned):
    ctx, model, _ = finetuned
    init = model.settings["pretrain"]["init"]
    data, c = ctx.data, model.settings["c"]
    labels = metis_parts(data.n_users, data.n_items, data.train, c, ctx.seed)
    assert init["partition_method"] in ("kway", "recursive") and init["partition_empty_repaired"] >= 0
    distinct = {(int(u), int(i)) for u, i in data.train}
    inside = sum(labels[u] == labels[data.n_users + i] for u, i in distinct) / len(distinct)
    assert init["partition_edges_inside"] == pytest.approx(inside)
    assert init["part_size_min"] >= 1


def test_finetuning_trains_only_the_codebook_and_steps(finetuned):
    _, model, seen = finetuned
    assert isinstance(model.module, PlaceholderModel)
    assert seen["params"] == ["inner.meta", "inner.step"]
    assert seen["grads"] == {"inner.meta": True, "inner.step": True}
    assert seen["buffer_grads"] == []
    before, after = seen["before"][0], seen["after"][0]
    for key in ("placeholders", "lookup", "inner.assign_index", "inner.assign_value"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["inner.meta"], after["inner.meta"])  # fine-tuning did train


def test_pruned_entities_are_their_frozen_placeholders(finetuned):
    _, model, seen = finetuned
    module = model.module
    lookup = module.lookup
    m = 70  # round(0.7 * 100) retained entities take the compact rows 0..m-1
    assert int((lookup < m).sum()) == m
    pruned = torch.nonzero(lookup >= m).squeeze(1)
    assert pruned.numel() == 30
    reps = torch.cat(model.representations()).detach()
    torch.testing.assert_close(reps[pruned], module.placeholders[lookup[pruned] - m], rtol=0, atol=0)
    # unchanged by fine-tuning
    rows_before, rows_after = seen["before"][1][pruned], seen["after"][1][pruned]
    assert torch.equal(rows_before, rows_after)
    retained = torch.nonzero(lookup < m).squeeze(1)
    assert not torch.equal(seen["before"][1][retained], seen["after"][1][retained])
    # retained entities are not placeholders
    dist = torch.cdist(reps[retained], module.placeholders)
    assert dist.min() > 1e-6
    assert module.placeholders.shape == (10, D_TOY)


def test_finetuned_model_keeps_the_pretrained_s_rows_of_retained_entities(finetuned):
    _, model, _ = finetuned
    parts = {p.name: p.tensor for p in model.artifact}
    lookup = model.module.lookup
    retained = torch.nonzero(lookup < 70).squeeze(1)
    assert torch.equal(model.module.inner.assign_index.cpu(), parts["assignment.indices"][retained])
    assert torch.equal(model.module.inner.assign_value.cpu(), parts["assignment.values"][retained])
    assert parts["assignment.indices"].shape == (N_TOY, 2)  # the artifact stores S for all N


def test_measured_size_follows_the_spec_convention(finetuned):
    ctx, model, _ = finetuned
    c, b = model.settings["c"], model.settings["bits"]
    m = 70
    assert c == solve_lerg_codebook(0.5, N_TOY, D_TOY, b, 2, 10, m)
    sizes = achieved_compression(model, 60, 40, len(ctx.data.train), D_TOY)
    spec_bits = lerg_bits(c, D_TOY, b, 2, N_TOY, m, 10)
    assert sizes["emb_achieved"] == pytest.approx(spec_bits / (32 * N_TOY * D_TOY))
    assert sizes["emb_achieved"] <= 0.5
    assert sizes["bits"] == lerg_honest_bits(c, D_TOY, b, 2, N_TOY, m, 10) + N_TOY  # + the retained mask
    assert sizes["bits_mask"] == N_TOY
    assert sizes["bits_indices"] == 30 * index_bits(10)
    assert model.measurements["lerg_bits_spec"] == spec_bits
    assert model.measurements["retention_achieved"] == pytest.approx(0.7)
    assert sizes["edge_achieved"] == pytest.approx(model.settings["selection"]["edge_ratio"])
    assert sizes["edge_achieved"] < 1


def test_a_target_looser_than_lerg_can_fill_says_so():
    """At emb 0.9 the codebook is capped at one row per entity: the artifact holds less than the
    target's bits (b/32 + 1/d + t/d of the table at most), its parameter count exceeds the dense
    table's, and the cell's notes say both; at 0.2 neither happens."""
    ctx = method_context(0, dim=D_TOY)
    loose = LERG(pretrain_epochs=1).compress(ctx, Target(0.9))
    c, b = loose.settings["c"], loose.settings["bits"]
    assert c == N_TOY
    bits = lerg_bits(c, D_TOY, b, 2, N_TOY, N_TOY, 500)
    assert bits / (32 * N_TOY * D_TOY) == pytest.approx(b / 32 + 1 / D_TOY + 2 / D_TOY)
    assert bits < 0.9 * 32 * N_TOY * D_TOY
    sizes = achieved_compression(loose, 60, 40, len(ctx.data.train), D_TOY)
    assert sizes["params"] > N_TOY * D_TOY
    (note,) = [n for n in loose.notes if "looser than LERG can fill" in n]
    assert f"c = N = {N_TOY}" in note and f"stores {bits / (32 * N_TOY * D_TOY):.3f} of the full" in note
    tight = LERG(pretrain_epochs=1).compress(method_context(0, dim=D_TOY), Target(0.2))
    assert tight.settings["c"] < N_TOY and not any("looser" in n for n in tight.notes)


def test_emb_only_target_is_the_quantised_model_without_pruning():
    ctx = method_context(0, dim=D_TOY)
    model = LERG(pretrain_epochs=2).compress(ctx, Target(0.5))
    assert isinstance(model.module, CompositionalLightGCN) and model.settings["retention"] == 1
    assert not model.module.expanded  # LightGCN on Â only
    c, b = model.settings["c"], model.settings["bits"]
    assert c == solve_lerg_codebook(0.5, N_TOY, D_TOY, b, 2, 500, N_TOY)
    sizes = achieved_compression(model, 60, 40, len(ctx.data.train), D_TOY)
    assert sizes["emb_achieved"] == pytest.approx(lerg_bits(c, D_TOY, b, 2, N_TOY, N_TOY, 500)
                                                  / (32 * N_TOY * D_TOY))
    assert sizes["bits"] == lerg_honest_bits(c, D_TOY, b, 2, N_TOY, N_TOY, 500)
    assert sizes["edge_achieved"] == 1.0
    # the stored codes reproduce the model's codebook
    parts = {p.name: p.tensor for p in model.artifact}
    restored = dequantize(parts["codebook.codes"], parts["codebook.steps"].reshape(-1, 1))
    assert torch.equal(restored, model.module.codebook().detach())


@pytest.mark.parametrize("edge", [0.5, 0.8])
def test_edge_target_is_met_by_bisecting_the_retention(edge):
    ctx = method_context(0, dim=D_TOY)
    model = LERG(r=10, pretrain_epochs=1, finetune_epochs=1).compress(ctx, Target(0.4, edge))
    assert model.settings["bisected"]
    sizes = achieved_compression(model, 60, 40, len(ctx.data.train), D_TOY)
    # the toy graph (420 edges, about 4 per entity) is fine-grained enough for the 1-point tolerance
    assert abs(sizes["edge_achieved"] - edge) <= 0.01
    assert sizes["emb_achieved"] <= 0.4  # c was solved before m was known: the worst case fits
    assert model.measurements["retention_achieved"] == pytest.approx(model.settings["retention"])
    assert 0 < model.settings["retention"] < 1


def test_bad_options_raise_method_errors_naming_them():
    ctx = method_context(0)
    with pytest.raises(MethodError, match=r"lerg\.bits"):
        LERG(bits=3)
    with pytest.raises(MethodError, match=r"lerg\.importance"):
        LERG(importance="pagerank")
    for options, name in [({"retention": 1.5}, "lerg.retention"), ({"retention": -0.1}, "lerg.retention"),
                          ({"w_star": 0.0}, "lerg.w_star"), ({"r": 0}, "lerg.r"), ({"t": 0}, "lerg.t"),
                          ({"clip": -1.0}, "lerg.clip")]:
        with pytest.raises(MethodError, match=re.escape(f"option {name} must be")):
            LERG(**options)  # a knob's range is checked when the method is constructed
    with pytest.raises(MethodError, match=re.escape("lerg.w_star must lie in (0, 1) (1 only with t = 1)")):
        LERG(w_star=1.0).compress(ctx, Target(0.5))  # a rule on two knobs: the method's own
    with pytest.raises(MethodError, match="retention 1 keeps every edge"):
        LERG(retention=1.0, r=10).compress(ctx, Target(0.5, 0.5))
