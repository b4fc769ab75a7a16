"""DSL (docs/methods/dsl.md): exploration on hand-built tensors, its invariants in training, costs,
harness."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench.backbone.graph import normalized_adjacency
from bench.contract import MethodError, Target
from bench.data.dataset import InteractionData
from bench.device import seed_everything
from bench.sampling import InteractionSampler, MultiNegativeSampler
from bench.training import TrainHook, scheduled_lr
from methods.dsl import (
    DSL,
    DSLHook,
    exploration_interval,
    largest_exact,
    paper_style_inference_macs,
    paper_style_sparse_factor,
    prune_and_grow,
    smallest_exact,
    training_state_bytes,
    update_ratio_at,
)
from methods.shared.masking import MaskedLightGCN, exact_random_mask, sparse_storage_bits
from tests.helpers import method_context, run_single_cell

N_ENTRIES = (60 + 40) * 8  # the clustered toy data, dim 8


def idx(t: torch.Tensor) -> set[int]:
    return set(t.tolist())


def initial(seed: int = 0, emb: float = 0.5, **budget):
    ctx = method_context(seed, patience=100, **budget)
    seed_everything(seed)
    model, k = DSL.initial_model(ctx, Target(emb))
    return ctx, model, k


# --- exploration on hand-built tensors (invariants 4-7) -------------------------------------

VALUES = torch.tensor([0.0, 0.5, -0.1, 0.0, 0.9, -0.3, 0.0, 0.2])
GRADS = torch.tensor([0.05, 1.0, -0.7, 0.3, 2.0, 0.1, -0.4, 0.01])


def test_prune_and_grow_exact_sets():
    mask = VALUES != 0  # active {1, 2, 4, 5, 7}
    ex = prune_and_grow(VALUES, GRADS, mask, 2, np.random.default_rng(0))
    assert idx(ex.pruned) == {2, 7}  # the 2 smallest |E| among the active
    # candidates {0, 3, 6} (old inactive) + {2, 7} (just pruned): the 2 largest |grad| are 2 and 6
    assert idx(ex.grown) == {2, 6}
    assert idx(ex.mask.nonzero().squeeze(1)) == {1, 2, 4, 5, 6}
    assert int(ex.mask.sum()) == int(mask.sum())


def test_prune_and_grow_degenerate_counts():
    mask = VALUES != 0
    same = prune_and_grow(VALUES, GRADS, mask, 0, np.random.default_rng(0))
    assert torch.equal(same.mask, mask) and same.pruned.numel() == same.grown.numel() == 0
    everything = prune_and_grow(VALUES, GRADS, mask, 99, np.random.default_rng(0))  # R capped at K = 5
    assert everything.pruned.numel() == everything.grown.numel() == 5
    assert idx(everything.grown) == {1, 2, 3, 4, 6}  # the 5 largest |grad| of all 8 entries
    with pytest.raises(MethodError):
        prune_and_grow(VALUES, GRADS, mask, -1, np.random.default_rng(0))


def test_prune_ties_go_to_lowest_index_and_growth_ties_are_random_but_exact():
    assert idx(smallest_exact(torch.tensor([3.0, 1.0, 1.0, 1.0, 0.5]), 3)) == {4, 1, 2}
    x = torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    picks = [idx(largest_exact(x, 3, np.random.default_rng(s))) for s in range(8)]
    assert all(len(p) == 3 and 0 in p for p in picks)
    assert len({frozenset(p) for p in picks}) > 1  # the 2 tied picks vary with the generator
    assert picks[0] == idx(largest_exact(x, 3, np.random.default_rng(0)))
    # no ties: the random generator is not consumed
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    assert idx(largest_exact(torch.tensor([1.0, 4.0, 2.0, 3.0]), 2, rng)) == {1, 3}
    assert rng.bit_generator.state == before
    # growth among many zero gradients still grows exactly R (the code could grow fewer)
    values = torch.tensor([0.3, 0.0, 0.0, 0.0, 0.0, 0.2, 0.1, 0.0])
    ex = prune_and_grow(values, torch.zeros(8), values != 0, 2, np.random.default_rng(0))
    assert ex.pruned.numel() == ex.grown.numel() == 2 and int(ex.mask.sum()) == 3


def one_by_one_model() -> MaskedLightGCN:
    """1 user, 1 item, dim 4: the flat table is the 8 entries of VALUES."""
    graph = normalized_adjacency(1, 1, np.array([0]), np.array([0]))
    model = MaskedLightGCN(1, 1, 4, 1, graph, (VALUES != 0).reshape(2, 4), mask_in_forward=False)
    with torch.no_grad():
        model.user_emb.copy_(VALUES[:4].reshape(1, 4))
        model.item_emb.copy_(VALUES[4:].reshape(1, 4))
    model.user_emb.grad = GRADS[:4].reshape(1, 4).clone()
    model.item_emb.grad = GRADS[4:].reshape(1, 4).clone()
    return model


def test_hook_exploration_values_and_counters():
    model = one_by_one_model()
    hook = DSLHook(model, t_end=10, interval=2, rho0=0.4, eta_min=0.0, rng=np.random.default_rng(0))
    assert hook.n_update(2) == math.ceil(update_ratio_at(2, 10, 0.4, 0.0) * 5) == 2
    hook.step_end(1, None)  # not a multiple of the interval: mask unchanged
    assert hook.explorations == 0 and torch.equal(model.mask.reshape(-1), VALUES != 0)
    hook.step_end(2, None)
    table = model.layer0().detach().reshape(-1)
    assert idx(model.mask.reshape(-1).nonzero().squeeze(1)) == {1, 2, 4, 5, 6}
    assert table[6] == 0  # grown from inactive: starts at 0
    assert table[2] == VALUES[2]  # pruned and regrown in the same exploration: keeps its value
    assert table[7] == 0  # pruned
    for i in (1, 4, 5):  # survivors keep their values
        assert table[i] == VALUES[i]
    assert (hook.explorations, hook.pruned_total, hook.grown_total) == (1, 2, 2)
    assert hook.fired_fraction == 6 / 8  # {1, 2, 4, 5, 7} then 6
    assert hook.history == [{"t": 2, "rho": update_ratio_at(2, 10, 0.4, 0.0), "n_update": 2,
                             "pruned": 2, "grown": 2}]


# --- schedule and interval (invariant 8) -------------------------------------------------

@pytest.mark.parametrize("eta", [0.005, 0.0])
@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule(eta, decay):
    t_end = 1000
    assert update_ratio_at(0, t_end, 0.5, eta, decay) == pytest.approx(0.5)
    assert update_ratio_at(t_end, t_end, 0.5, eta, decay) == pytest.approx(eta, abs=1e-15)
    assert update_ratio_at(t_end // 2, t_end, 0.5, eta, decay) == pytest.approx((0.5 + eta) / 2)
    rhos = [update_ratio_at(t, t_end, 0.5, eta, decay) for t in range(t_end + 1)]
    assert all(a >= b for a, b in itertools.pairwise(rhos))


def test_schedule_reference_values_and_edge_cases():
    t_end = 1_209_000  # Yelp2018 defaults
    got = [update_ratio_at(t, t_end, 0.5) for t in (t_end // 4, t_end // 2, 3 * t_end // 4)]
    assert got == pytest.approx([0.4275, 0.2525, 0.0775], abs=1e-4)
    assert update_ratio_at(700, 1000, 0.3, decay="constant") == 0.3
    assert all(update_ratio_at(t, 100, 0.0) == 0 for t in range(101))  # rho0 = 0: never explores
    with pytest.raises(MethodError):
        update_ratio_at(0, 10, 0.5, decay="step")


def test_exploration_interval_auto_rule():
    assert exploration_interval(45) == 113  # yelp-lightgnn, batch 4096: 2.5 epochs
    assert exploration_interval(1209) == 3023  # Yelp2018 at batch 1024, close to the code's 3000
    assert exploration_interval(1) == 3 and exploration_interval(45, 7) == 7
    with pytest.raises(MethodError):
        exploration_interval(45, -1)


# --- initial mask (invariant 1) -------------------------------------------------------

def test_initial_mask_is_exact_joint_and_equals_the_random_drop_mask():
    _, model, k = initial(seed=3)
    assert k == round(0.5 * N_ENTRIES) == model.nnz()
    expected = exact_random_mask(N_ENTRIES, k, np.random.default_rng([3, 2])).reshape(100, 8)
    assert torch.equal(model.mask, torch.from_numpy(expected))
    table = model.layer0().detach()
    assert (table[~model.mask] == 0).all() and (table[model.mask] != 0).all()
    # one global mask over users and items: both blocks are partly kept, row counts vary
    assert 0 < int(model.user_mask.sum()) < 60 * 8 and 0 < int(model.item_mask.sum()) < 40 * 8
    assert len(set(model.mask.sum(dim=1).tolist())) > 1
    assert not model.mask_in_forward


# --- training: invariants 2-7, 9, 10 --------------------------------------------------------------

class Checker(TrainHook):
    """Runs after DSLHook: masked entries are 0 after every step; the mask changes only at explorations."""

    def __init__(self, model: MaskedLightGCN, hook: DSLHook) -> None:
        self.model, self.hook = model, hook
        self.prev = model.mask.clone()
        self.last = None  # (values, old mask, exploration) of an exploration at this step
        self.steps = 0

    def on_explore(self, t, values, grads, old, ex):
        k = self.hook.budget
        r = math.ceil(update_ratio_at(t, self.hook.t_end, self.hook.rho0, self.hook.eta_min) * k)
        assert int(ex.mask.sum()) == k and ex.pruned.numel() == ex.grown.numel() == r  # 4
        assert old[ex.pruned].all()  # 5: pruned from the old active set, the smallest |E|
        survivors = old.clone()
        survivors[ex.pruned] = False
        assert values[ex.pruned].abs().max() <= values[survivors].abs().min()
        candidates = ~survivors  # 6: old inactive and just pruned, the largest |grad|
        assert candidates[ex.grown].all()
        others = candidates.clone()
        others[ex.grown] = False
        assert grads[ex.grown].abs().min() >= grads[others].abs().max()
        assert (values[~old] == 0).all()
        self.last = (values, old, ex)

    def step_end(self, step, optimizer):
        self.steps += 1
        table = self.model.layer0().detach()
        mask = self.model.mask
        assert (table[~mask] == 0).all()  # 2
        if step % self.hook.interval:
            assert torch.equal(mask, self.prev)
            assert self.last is None
        else:
            values, old, ex = self.last  # 7
            flat = table.reshape(-1)
            newly = torch.zeros_like(old)
            newly[ex.grown] = True
            newly &= ~old
            assert newly.any() and (flat[newly] == 0).all()
            kept = old & ex.mask
            assert torch.equal(flat[kept], values[kept])
            self.last = None
        self.prev = mask.clone()


def test_training_invariants():
    ctx, model, k = initial(seed=0)
    t_end = 6 * 7  # 6 epochs x ceil(420 / 64) batches
    hook = DSLHook(model, t_end, 5, rho0=0.5, rng=ctx.rng("dsl"))
    checker = Checker(model, hook)
    hook.on_explore = checker.on_explore
    ctx.fit(model, ctx.train_config(), hooks=[hook, checker])
    assert checker.steps == t_end == hook.last_step
    assert [h["t"] for h in hook.history] == list(range(5, t_end + 1, 5))  # 3
    assert hook.explorations == t_end // 5 == 8
    assert model.nnz() == k and (model.layer0()[~model.mask] == 0).all()  # restored best state too
    assert hook.pruned_total == hook.grown_total == sum(h["n_update"] for h in hook.history)
    assert k / N_ENTRIES < hook.fired_fraction <= 1


def test_masked_entries_get_their_dense_gradient_and_adam_state_is_not_reset():
    ctx, model, _ = initial(seed=0)
    users = torch.arange(60)
    pos = torch.from_numpy(ctx.data.train[:60, 1])
    neg = (pos + 7) % 40
    bpr, pen = model.bpr_loss(users, pos, neg, 1e-4)
    (bpr + pen).backward()
    grad = torch.cat([model.user_emb.grad, model.item_emb.grad])
    mask = model.mask
    row = int(users[0])
    assert (~mask[row]).any() and mask[row].any()
    assert (grad[row][~mask[row]] != 0).any()  # 9: partly masked batch row, masked entries have grad
    assert (grad[~mask] != 0).float().mean() > 0.5
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    opt.step()
    model.apply_mask_()
    exp_avg = torch.cat([opt.state[model.user_emb]["exp_avg"], opt.state[model.item_emb]["exp_avg"]])
    assert (exp_avg[~mask] != 0).any()  # 10: dense moments, kept for inactive entries
    assert (model.layer0()[~mask] == 0).all()
    # option reset_adam_on_grow: the moments of newly grown entries are zeroed, the others kept
    hook = DSLHook(model, 10, 1, rho0=0.5, rng=np.random.default_rng(0), reset_adam_on_grow=True)
    ex = hook.explore(1, opt)
    newly = torch.zeros(N_ENTRIES, dtype=torch.bool)
    newly[ex.grown] = True
    newly &= ~mask.reshape(-1)
    def moment(key):
        return torch.cat([opt.state[model.user_emb][key], opt.state[model.item_emb][key]]).reshape(-1)

    after, after_sq = moment("exp_avg"), moment("exp_avg_sq")
    assert newly.any() and (after[newly] == 0).all() and (after_sq[newly] == 0).all()
    assert torch.equal(after[~newly], exp_avg.reshape(-1)[~newly])


# --- the method: RP equivalence (11), determinism, options -----------------------------------------

@pytest.mark.parametrize("options", [{"update_ratio": 0.0}, {"update_interval": 1000}, {"fix_mask": True}])
def test_rp_equivalence(options):
    ctx = method_context(2, epochs=2, eval_every=1, patience=100)
    seed_everything(2)
    out = DSL(**options).compress(ctx, Target(0.25))
    k = round(0.25 * N_ENTRIES)
    expected = exact_random_mask(N_ENTRIES, k, np.random.default_rng([2, 2])).reshape(100, 8)
    assert torch.equal(out.module.mask, torch.from_numpy(expected))
    assert out.measurements["dsl_explorations"] == 0 and out.measurements["dsl_fired_fraction"] == 0.25


def test_same_seed_same_mask_and_values():
    runs = []
    for _ in range(2):
        ctx = method_context(1, epochs=2, eval_every=1, patience=100)
        seed_everything(1)
        out = DSL(update_interval=3).compress(ctx, Target(0.5))
        assert out.measurements["dsl_explorations"] == 4
        runs.append(out.module)
    assert torch.equal(runs[0].mask, runs[1].mask)
    assert torch.equal(runs[0].layer0(), runs[1].layer0())


def test_option_checks():
    assert DSL().options == {"update_ratio": 0.5, "update_interval": 0, "eta_min": 0.005, "decay": "cosine",
                             "reset_adam_on_grow": False, "fix_mask": False, "sampler": "interaction"}
    for bad in ({"update_ratio": 1.5}, {"update_interval": -2}, {"eta_min": -0.1}, {"decay": "step"},
                {"sampler": "edge"}):
        with pytest.raises(MethodError):
            DSL(**bad)
    with pytest.raises(MethodError, match="cannot compress edge"):
        DSL.check_target(Target(0.5, edge=0.5), 2)


# --- the training-regime options change only what they name ---------------------------------------

def recorded_run(monkeypatch, options, seed=0, **budget):
    """``DSL(**options)`` on the toy data; records the mask training starts from, the triples of
    every epoch and the optimiser's lr at every step. Returns ``(ctx, out, record)``."""
    record = {"epochs": [], "lr": []}
    for cls in (InteractionSampler, MultiNegativeSampler):
        def epoch(self, generator, _orig=cls.epoch):
            triples = _orig(self, generator)
            record["epochs"].append(triples)
            return triples
        monkeypatch.setattr(cls, "epoch", epoch)

    def step_end(self, step, optimizer, _orig=DSLHook.step_end):
        record["lr"].append(optimizer.param_groups[0]["lr"])
        return _orig(self, step, optimizer)

    monkeypatch.setattr(DSLHook, "step_end", step_end)
    ctx = method_context(seed, **{"epochs": 3, "eval_every": 1, "patience": 100, **budget})
    fit_stage = ctx.fit_stage

    def recording(model, *args, **kwargs):
        record["mask"] = model.mask.clone()
        return fit_stage(model, *args, **kwargs)

    ctx.fit_stage = recording
    seed_everything(seed)
    out = DSL(**options).compress(ctx, Target(0.5))
    monkeypatch.undo()
    return ctx, out, record


def test_sampler_option_changes_only_the_triples(monkeypatch):
    ctx, default, rec = recorded_run(monkeypatch, {"update_interval": 4})
    _, user, rec_user = recorded_run(monkeypatch, {"update_interval": 4, "sampler": "user"})
    assert torch.equal(rec["mask"], rec_user["mask"])  # same emb_mask stream: same initial mask
    data = ctx.data
    gen = torch.Generator().manual_seed(ctx.budget.seed)  # fit_bpr's generator
    expected = MultiNegativeSampler(data.train, data.n_users, data.n_items, n_neg=1).epoch(gen)
    assert all(torch.equal(a, b) for a, b in zip(rec_user["epochs"][0], expected, strict=True))
    gen = torch.Generator().manual_seed(ctx.budget.seed)
    expected = InteractionSampler(data.train, data.n_users, data.n_items).epoch(gen)
    assert all(torch.equal(a, b) for a, b in zip(rec["epochs"][0], expected, strict=True))
    assert not torch.equal(rec["epochs"][0][0], rec_user["epochs"][0][0])
    assert len(rec["epochs"]) == len(rec_user["epochs"]) == 3
    # everything else is the same schedule; the trained tables differ
    for key in ("iterations_per_epoch", "t_end_planned", "update_interval", "explorations_done"):
        assert default.settings[key] == user.settings[key], key
    assert (default.settings["sampler"], user.settings["sampler"]) == ("interaction", "user")
    assert rec["lr"] == rec_user["lr"] == [ctx.budget.lr] * default.settings["iterations_done"]
    assert not torch.equal(default.module.layer0(), user.module.layer0())


def skewed_data() -> InteractionData:
    """User u trains on u + 1 items (1 to 20) of 30; one valid and one test item each."""
    rng = np.random.default_rng(0)
    train, valid, test = [], [], []
    for u in range(20):
        items = rng.permutation(30)
        train += [(u, i) for i in items[: u + 1]]
        valid.append((u, items[u + 1]))
        test.append((u, items[u + 2]))
    return InteractionData("skewed", 20, 30, np.array(train), np.array(valid), np.array(test))


def test_user_sampler_draws_users_uniformly_not_by_degree():
    data = skewed_data()
    ctx = method_context(0, data=data)
    assert DSL().epoch_sampler(ctx) is None  # the harness default: every interaction once
    sampler = DSL(sampler="user").epoch_sampler(ctx)
    assert isinstance(sampler, MultiNegativeSampler) and sampler.n_neg == 1
    assert sampler.triples_per_epoch == len(data.train) == 210
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(20)
    positives = set(map(tuple, data.train.tolist()))
    for _ in range(20):
        users, pos, neg = sampler.epoch(gen)
        assert users.numel() == 210
        counts += np.bincount(users.numpy(), minlength=20)
        assert all((u, i) in positives for u, i in zip(users.tolist(), pos.tolist(), strict=True))
        assert not any((u, i) in positives for u, i in zip(users.tolist(), neg.tolist(), strict=True))
    # 4200 draws, 210 expected per user; by degree the last user would get 20x the first's
    assert counts.max() / counts.min() < 1.5 and abs(counts.mean() - 210) < 1e-9
    by_degree = np.bincount(InteractionSampler(data.train, 20, 30).epoch(gen)[0].numpy(), minlength=20)
    assert by_degree.tolist() == list(range(1, 21))


def test_cosine_lr_schedule_is_followed_and_the_constant_default_is_unchanged(monkeypatch):
    budget = {"lr": 0.05, "lr_schedule": "cosine", "lr_min": 1e-3, "lr_period": 2}
    ctx, out, rec = recorded_run(monkeypatch, {"update_interval": 4}, **budget)
    per_epoch = out.settings["iterations_per_epoch"]
    config = ctx.train_config(**budget)
    expected = [scheduled_lr(config, 1 + step // per_epoch) for step in range(3 * per_epoch)]
    assert rec["lr"] == expected
    assert expected[0] == 0.05 and expected[-1] == 1e-3 and len(set(expected)) == 3
    # the default constant schedule: DSL's result equals the training path without the options
    # (no sampler given to the loop, the budget's constant lr), bit for bit
    _, default, _ = recorded_run(monkeypatch, {"update_interval": 4})
    _, given, _ = recorded_run(monkeypatch, {"update_interval": 4, "sampler": "interaction"},
                               lr_schedule="constant", lr_min=1e-3, lr_period=2)
    ctx = method_context(0, epochs=3, eval_every=1, patience=100)
    seed_everything(0)
    model, _ = DSL.initial_model(ctx, Target(0.5))
    t_end = 3 * math.ceil(len(ctx.data.train) / ctx.budget.batch_size)
    hook = DSLHook(model, t_end, 4, 0.5, 0.005, "cosine", rng=ctx.rng("dsl"))
    result = ctx.fit(model, ctx.train_config(), hooks=[hook])
    for run in (default, given):
        assert torch.equal(run.module.mask, model.mask)
        assert torch.equal(run.module.layer0(), model.layer0())
        assert run.settings["best_epoch"] == result.best_epoch
    assert not torch.equal(out.module.layer0(), model.layer0())


# --- cost helpers (invariant 13) and evaluation (12) -----------------------------------------------

def test_paper_style_costs_and_memory():
    macs_in = paper_style_inference_macs(3, 64, 2_474_518, 69_716)  # Yelp2018, L = 3, d = 64
    assert macs_in == pytest.approx(3.31e13, rel=0.01)
    assert macs_in * 1_209_000 == pytest.approx(4.00e19, rel=0.01)
    assert paper_style_sparse_factor(0.5, 3) == pytest.approx(2 / 3)
    assert paper_style_sparse_factor(0.5, 4) == pytest.approx(0.625)
    assert macs_in * paper_style_sparse_factor(0.5, 3) == pytest.approx(2.22e13, rel=0.01)
    n = 69_716 * 64
    dense = {sparse_storage_bits(69_716, 64, round(r * n))["dense"] for r in (0.1, 0.5, 1.0)}
    assert dense == {32 * n}  # (b) dense-with-zeros does not depend on r
    assert training_state_bytes(n) == {"dense": 16 * n, "dsl": 17 * n}


def test_evaluation_never_ranks_train_items():
    # user 0 scores its train item 0 highest and its test item 1 next: masking train makes it a hit
    scores = torch.tensor([[9.0, 5.0, 1.0, 0.0]])
    train = sp.csr_matrix(([1], ([0], [0])), shape=(1, 4))
    test = sp.csr_matrix(([1], ([0], [1])), shape=(1, 4))
    from bench.evaluation import evaluate_scores

    res = evaluate_scores(lambda u: scores[u], test, [train], ks=(1,))
    assert res.metrics["recall@1"] == 1.0


# --- end to end through the harness ---------------------------------------------------------------

def test_run_matrix_end_to_end(tiny_root, tmp_path):
    cell = run_single_cell(tiny_root, tmp_path / "out", 'datasets = ["tiny"]\nmethods = ["dsl"]\n'
                           "emb_targets = [0.5]\nseeds = [0]\n")
    assert cell["status"] == "ok" and not cell["flagged"]
    m = cell["measurements"]
    assert m["emb_achieved"] == round(0.5 * N_ENTRIES) / N_ENTRIES
    assert m["params"] == round(0.5 * N_ENTRIES)
    assert m["emb_bytes_dense_with_zeros"] == 4 * N_ENTRIES
    assert m["emb_bytes_sparse"] == N_ENTRIES // 8 + 4 * 400 < m["emb_bytes_dense_with_zeros"]
    assert m["bits"] == 8 * m["emb_bytes_sparse"]
    for name in ("emb_bytes_nominal", "flops_propagation_sparse_aware", "paper_style_macs_train",
                 "training_state_bytes_analytic", "dsl_explorations"):
        assert name in m, name
    assert m["flops_propagation_sparse_aware"] <= m["flops_propagation"]
    assert cell["settings"]["storage_format"] == "bitmap"
    assert cell["settings"]["update_interval"] == 18  # auto: 2.5 x 7 iterations per epoch
