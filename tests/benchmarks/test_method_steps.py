"""pytest-benchmark benchmark of the step that dominates the standard yelp-lightgnn grid: one LEGCF
training step (the authors' 2,048 triples, d = 128, 2 layers, METIS ``S``) at the grid's loosest
and tightest embedding targets, on the real ``yelp-lightgnn`` dataset.

The step is what LEGCF's stages take: the loss through the batch-rows readout
(:meth:`CompositionalLightGCN.bpr_loss`), backward, value clipping, Adam. Its loss and gradients are
checked against the per-layer autograd path (:meth:`CompositionalLightGCN.bpr_loss_layers`), so a
wrong kernel fails whatever its speed. Run as ``tests/benchmarks/test_kernels.py`` says.
"""

from __future__ import annotations

import pytest
import torch

from bench.context import BaseCheckpoints, MethodContext
from bench.contract import Target
from bench.training import TrainConfig, make_adam

# the module's fixtures: the dataset, and torch pinned to RECSHRINK_BENCH_THREADS threads
from tests.benchmarks.test_kernels import _pedantic, _threads, data  # noqa: F401

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def grid_context(data) -> MethodContext:  # noqa: F811
    budget = TrainConfig(dim=128, n_layers=2, batch_size=4096, lr=5e-3, reg=1e-4, epochs=40, seed=0)
    return MethodContext(data=data, device=torch.device("cpu"), seed=0, budget=budget,
                         checkpoints=BaseCheckpoints(None), log=lambda msg: None)


@pytest.mark.benchmark(group="method-step")
@pytest.mark.parametrize("emb", [0.1, 0.02])
def test_legcf_step(benchmark, grid_context: MethodContext, emb: float) -> None:
    from methods.legcf import LEGCF
    from methods.shared.composition_training import LegcfHook

    method = LEGCF()
    options = method.resolved(grid_context, Target(emb=emb))
    assignment, _ = method.initial_assignment(grid_context, options)
    model = method.make_model(grid_context, options, assignment)
    hook = LegcfHook(model, options.clip)
    optimizer = make_adam(list(model.parameters()), options.lr)
    interactions = grid_context.data
    g = torch.Generator().manual_seed(0)
    batch = options.batch_triples
    users = torch.randint(0, interactions.n_users, (batch,), generator=g)
    pos = torch.randint(0, interactions.n_items, (batch,), generator=g)
    neg = torch.randint(0, interactions.n_items, (batch,), generator=g)

    # the timed loss and gradients against the per-layer autograd path, before any step
    bpr, penalty = model.bpr_loss(users, pos, neg, 1e-4)
    (bpr + penalty).backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    bpr_ref, penalty_ref = model.bpr_loss_layers(users, pos, neg, 1e-4)
    (bpr_ref + penalty_ref).backward()
    torch.testing.assert_close(bpr + penalty, bpr_ref + penalty_ref, rtol=1e-5, atol=1e-7)
    for got, want in zip(fast, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)

    def step() -> float:
        bpr, penalty = model.bpr_loss(users, pos, neg, 1e-4)
        optimizer.zero_grad(set_to_none=True)
        (bpr + penalty).backward()
        hook.before_step(2, optimizer)
        optimizer.step()
        hook.step_end(2, optimizer)
        return float(bpr.detach())

    loss = _pedantic(benchmark, "bpr", step)
    benchmark.extra_info.update(emb=emb, c=options.c, t=options.t, batch=batch,
                                entries=int(model.propagation_graph.nnz))
    assert loss > 0 and torch.isfinite(model.meta).all()
