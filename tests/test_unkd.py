"""UnKD (docs/methods/unkd.md): invariants U1-U8 and M3, and one cell end to end."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.backbone.lightgcn import LightGCN
from bench.contract import MethodError, Target
from bench.data.loading import load_dataset
from bench.measure.flops import count_train_macs_per_epoch
from bench.measure.size import achieved_compression
from bench.registry import get_method
from bench.runner import run_matrix
from bench.store import ResultStore
from methods.unkd import (
    LOG2,
    PairSampler,
    UnKD,
    UnKDStudent,
    allocate_pairs,
    build_candidates,
    fallback_groups,
    freeze,
    greedy_groups,
    item_popularity,
    kd_pair_loss,
    popularity_groups,
    position_weights,
    sample_position_pairs,
    sample_positions,
    share_weights,
    student_dim,
)
from tests.helpers import method_context, tiny_config

QUIET = {"progress": False, "log": lambda m: None, "report": False}


# --- helpers -------------------------------------------------------------------------------------


def check_groups(groups: list[np.ndarray], pop: np.ndarray, k: int, exact: bool) -> None:
    """U1: disjoint, union = {pop > 0}, K (or <= K) groups, popularity ordered, mass bound."""
    pop = np.asarray(pop)
    assert len(groups) == k if exact else 1 <= len(groups) <= k
    allitems = np.concatenate(groups)
    assert len(allitems) == len(set(allitems.tolist()))
    assert set(allitems.tolist()) == set(np.flatnonzero(pop > 0).tolist())
    for g in range(len(groups) - 1):
        assert pop[groups[g]].min() >= pop[groups[g + 1]].max()
    bound = 1.5 * pop.sum() / k + pop.max()
    assert all(pop[g].sum() <= bound for g in groups)


def random_setting(seed: int, n_users: int = 40, n_items: int = 90, per_user: int = 12, dim: int = 6):
    """Interactions with a skewed item popularity and random teacher representations."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pairs = np.concatenate([
        np.stack([np.full(per_user, u), rng.choice(n_items, per_user, replace=False, p=p / p.sum())], 1)
        for u in range(n_users)
    ]).astype(np.int64)
    import scipy.sparse as sp

    train = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items))
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=gen)
    items = torch.randn(n_items, dim, generator=gen)
    return pairs, train, users, items


@pytest.fixture(scope="module")
def ctx():
    """One tiny context (60 users x 40 items, dim 8) whose base model is trained once for the module."""
    return method_context(0, epochs=4)


@pytest.fixture(scope="module")
def setup(ctx):
    return UnKD().setup(ctx, Target(0.5))


# --- U1 popularity groups ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pops(shared_datasets):
    out = {}
    for name in ("citeulike", "yelp-lightgnn"):
        data = load_dataset(name, shared_datasets)
        out[name] = (data, item_popularity(data.train, data.n_items))
    return out


def test_greedy_groups_match_the_spec_check_values_on_yelp(shared_pops):
    data, pop = shared_pops["yelp-lightgnn"]
    groups = popularity_groups(pop, 4)
    assert not groups.fallback
    assert groups.sizes == [1029, 2818, 6229, 16414]
    assert groups.masses == pytest.approx([45_600] * 4, abs=50)  # "masses ~45.6k each"
    assert sum(groups.masses) == len(data.train)


def test_greedy_groups_match_the_spec_check_values_on_citeulike(shared_datasets, shared_pops):
    # the spec's CiteULike numbers count the lines of train.txt, which holds 23 duplicate pairs;
    # the loader keeps distinct pairs (pop = distinct users per item), which moves 2-3 items
    lines = np.loadtxt(shared_datasets / "citeulike" / "train.txt", dtype=np.int64)
    data, pop = shared_pops["citeulike"]
    line_pop = np.bincount(lines[:, 1], minlength=data.n_items)
    groups = greedy_groups(line_pop, 4)
    assert [len(g) for g in groups] == [1021, 2791, 4600, 8496]
    assert [line_pop[g].sum() for g in groups] == pytest.approx([37_980] * 4, abs=20)  # "~37.98k each"
    distinct = np.unique(lines[:, 0] * data.n_items + lines[:, 1])
    assert np.array_equal(pop, np.bincount(distinct % data.n_items, minlength=data.n_items))
    assert line_pop.sum() - pop.sum() == len(lines) - len(distinct) > 0
    loaded = popularity_groups(pop, 4)
    assert not loaded.fallback
    check_groups(list(loaded.items), pop, 4, exact=True)
    assert sum(abs(a - b) for a, b in zip(loaded.sizes, [1021, 2791, 4600, 8496], strict=True)) <= 6


@pytest.mark.parametrize("name", ["citeulike", "yelp-lightgnn"])
@pytest.mark.parametrize("k", [2, 3, 4, 5, 10])
def test_greedy_gives_exactly_k_groups_on_the_shared_datasets(shared_pops, name, k):
    _, pop = shared_pops[name]
    groups = greedy_groups(pop, k)
    check_groups(groups, pop, k, exact=True)
    result = popularity_groups(pop, k)
    assert not result.fallback and result.n_groups == k
    assert all(np.array_equal(a, b) for a, b in zip(result.items, groups, strict=True))


def test_ref_failure_case_falls_back_to_k_groups():
    pop = np.array([20] * 5)
    assert len(greedy_groups(pop, 4)) == 5  # REF would crash here
    groups = popularity_groups(pop, 4)
    assert groups.fallback and groups.n_groups == 4
    check_groups(list(groups.items), pop, 4, exact=True)
    # ties broken by item id, cumulative-mass buckets: masses before = 0, 20, 40, 60, 80 of 100
    assert [g.tolist() for g in groups.items] == [[0, 1], [2], [3], [4]]


@pytest.mark.parametrize("seed", range(6))
def test_groups_invariants_on_random_popularities(seed):
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.6, size=300).clip(max=500) * (rng.random(300) > 0.2)  # with pop = 0 items
    for k in (1, 2, 3, 4, 7):
        result = popularity_groups(pop, k)
        check_groups(list(result.items), pop, k, exact=not result.fallback)
        assert (result.labels() >= 0).sum() == (pop > 0).sum()
        assert np.all(result.labels()[pop == 0] == -1)  # pop = 0: in no group, never a candidate
        again = popularity_groups(pop.copy(), k)  # deterministic
        assert all(np.array_equal(a, b) for a, b in zip(result.items, again.items, strict=True))
        check_groups(fallback_groups(pop, k), pop, k, exact=False)


def test_popularity_counts_distinct_users():
    pairs = np.array([[0, 1], [1, 1], [1, 1], [2, 3]])
    assert item_popularity(pairs, 5).tolist() == [0, 2, 0, 1, 0]


# --- U2 allocation -------------------------------------------------------------------------------


def test_allocation_cases():
    assert allocate_pairs(30, [0.25] * 4) == [8, 8, 8, 8]
    assert allocate_pairs(10, [0.25] * 4) == [3, 3, 2, 2]
    assert allocate_pairs(30, [1.0]) == [30]
    assert allocate_pairs(7, [1.0]) == [7]
    rng = np.random.default_rng(0)
    for _ in range(50):
        k, s = int(rng.integers(1, 8)), int(rng.integers(0, 60))
        w = rng.random(k)
        n = allocate_pairs(s, list(w / w.sum()))
        assert len(n) == k and sum(n) >= s and min(n) >= 0


def test_share_weights_equal_for_lam_zero_and_favour_unpopular_groups_otherwise():
    pop = np.random.default_rng(1).zipf(1.5, 500).clip(max=300)
    groups = popularity_groups(pop, 4)
    assert share_weights(groups, 0.0) == [0.25] * 4
    w = share_weights(groups, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(w))  # REF's q_g: inverse popularity
    assert w[-1] > w[0]
    q = groups.ref_weights()
    assert share_weights(groups, 2.0) == pytest.approx([x**2 / sum(y**2 for y in q) for x in q])


# --- U3 candidate lists --------------------------------------------------------------------------


@pytest.mark.parametrize("cmax", [5, 1000])
def test_candidate_lists(cmax):
    pairs, train, users, items = random_setting(0)
    pop = item_popularity(pairs, items.shape[0])
    groups = popularity_groups(pop, 3)
    # a tiny memory budget forces many user blocks; the result must not depend on it
    cands = build_candidates(users, items, train, groups, cmax, memory_bytes=1)
    whole = build_candidates(users, items, train, groups, cmax, memory_bytes=2**30)
    assert np.array_equal(cands.items, whole.items) and np.array_equal(cands.lengths, whole.lengths)
    assert cands.macs == users.shape[0] * items.shape[0] * users.shape[1]
    scores = (users @ items.T).numpy()
    seen = [set(train[u].indices.tolist()) for u in range(train.shape[0])]
    for u in range(train.shape[0]):
        for g, members in enumerate(groups.items):
            n = cands.lengths[u, g]
            c = cands.items[u, g, :n]
            allowed = set(members.tolist()) - seen[u]
            assert n == min(cmax, len(allowed)) <= cmax
            assert set(c.tolist()) <= allowed and len(set(c.tolist())) == n
            assert np.all(cands.items[u, g, n:] == -1)
            s = scores[u, c]
            assert np.all(np.diff(s) <= 0)  # teacher scores non-increasing
            rest = np.array(sorted(allowed - set(c.tolist())), dtype=np.int64)
            if len(rest) and n:
                assert scores[u, rest].max() <= s[-1]  # the list is the top of the group


# --- U4 pairs ------------------------------------------------------------------------------------


def test_pairs_are_ordered_unobserved_same_group_items():
    pairs, train, users, items = random_setting(1)
    pop = item_popularity(pairs, items.shape[0])
    groups = popularity_groups(pop, 3)
    cands = build_candidates(users, items, train, groups, 40)
    alloc = allocate_pairs(10, share_weights(groups, 0.0))
    kd = PairSampler(cands, alloc, 20.0, np.random.default_rng(0)).draw()
    assert kd.pos.shape == (users.shape[0], sum(alloc)) and kd.slot_group.tolist() == np.repeat(
        np.arange(3), alloc).tolist()
    labels = groups.labels()
    scores = (users @ items.T).numpy()
    rows = np.arange(users.shape[0])[:, None]
    g = np.broadcast_to(kd.slot_group[None, :], kd.pos.shape)
    v = kd.valid
    assert np.array_equal(v, cands.lengths[rows, g] >= 2) and v.mean() > 0.5
    u = np.broadcast_to(rows, kd.pos.shape)[v]
    pos, neg, g = kd.pos[v], kd.neg[v], g[v]
    assert np.all(pos != neg)
    assert np.all(labels[pos] == g) and np.all(labels[neg] == g)
    dense = train.toarray().astype(bool)
    assert not dense[u, pos].any() and not dense[u, neg].any()
    assert np.all(scores[u, pos] >= scores[u, neg])
    assert np.all(kd.pos_rank[v] < kd.neg_rank[v])
    assert np.array_equal(cands.items[u, g, kd.pos_rank[v]], pos)
    assert np.array_equal(cands.items[u, g, kd.neg_rank[v]], neg)


def test_users_with_short_lists_get_no_pairs_from_that_group():
    pairs, train, users, items = random_setting(2, n_users=6, n_items=30, per_user=4)
    pop = item_popularity(pairs, 30)
    groups = popularity_groups(pop, 2)
    cands = build_candidates(users, items, train, groups, 10)
    cands.lengths[0, 0] = 1  # user 0: one candidate in group 0; user 1: none anywhere
    cands.items[0, 0, 1:] = -1
    cands.lengths[1, :] = 0
    cands.items[1] = -1
    kd = PairSampler(cands, [3, 2], 20.0, np.random.default_rng(0)).draw()  # terminates
    assert not kd.valid[0, :3].any() and kd.valid[0, 3:].all()
    assert not kd.valid[1].any() and kd.valid[2:].all()
    assert np.all(kd.pos[~kd.valid] == 0) and np.all(kd.neg[~kd.valid] == 0)  # in range for gathers
    # L_KD convention: a row without pairs adds 0 and counts in the average over rows
    student = UnKDStudent(6, 30, 4, 0, None)
    student.set_pairs(kd)
    u_reps, i_reps = student.propagate()
    batch = torch.tensor([1, 2])
    alone = student.kd_loss(torch.tensor([2]), u_reps, i_reps)
    assert student.kd_loss(batch, u_reps, i_reps).item() == pytest.approx(alone.item() / 2)
    assert student.kd_loss(torch.tensor([1]), u_reps, i_reps).item() == 0.0


# --- U5 sampler law ------------------------------------------------------------------------------


def test_pair_sampler_law_chi_square():
    n, length, mu = 200_000, 50, 20.0
    lo, hi = sample_position_pairs(np.full(n, length), mu, np.random.default_rng(12345))
    assert np.all(lo < hi) and lo.min() >= 0 and hi.max() < length
    w = np.exp(-(np.arange(length) + 1) / mu)
    a, b = np.triu_indices(length, k=1)
    expected = 2 * w[a] * w[b]  # P(lo=a, hi=b) ∝ w_a w_b + w_b w_a, a < b
    expected = expected / expected.sum() * n
    observed = np.bincount(lo * length + hi, minlength=length * length)[a * length + b]
    assert expected.min() > 5
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_position_law_is_conditioned_on_the_list_length():
    rng = np.random.default_rng(7)
    for length in (1, 3, 17):
        pos = sample_positions(np.full(100_000, length), 20.0, rng)
        assert pos.min() >= 0 and pos.max() < length
        observed = np.bincount(pos, minlength=length)
        if length > 1:
            assert stats.chisquare(observed, position_weights(length, 20.0) * len(pos)).pvalue > 1e-3
    # mixed lengths; lists of length 2 always give (0, 1); length < 2 entries are left alone
    lengths = np.array([2, 0, 1, 2, 1000] * 1000)
    lo, hi = sample_position_pairs(lengths, 20.0, rng)
    assert np.all(lo[lengths == 2] == 0) and np.all(hi[lengths == 2] == 1)
    assert np.all(hi[lengths == 1] == 0) and np.all(hi[lengths == 0] == 0)
    assert hi[lengths == 1000].max() < 1000


# --- U6 teacher frozen ---------------------------------------------------------------------------


def test_teacher_is_frozen_and_unchanged_by_training(ctx, setup):
    teacher = setup.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = setup.student
    setup.hook.epoch_start(1)
    data = ctx.data
    users = torch.from_numpy(data.train[:32, 0])
    pos, neg = torch.from_numpy(data.train[:32, 1]), torch.zeros(32, dtype=torch.long)
    bpr, pen = student.bpr_loss(users, pos, neg, 1e-4)
    (bpr + pen).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.user_emb.grad is not None
    student.zero_grad(set_to_none=True)
    result = ctx.fit(student, ctx.train_config(dim=student.dim, epochs=2, eval_every=1), hooks=[setup.hook])
    assert result.epochs == 2
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in teacher.parameters())
    # the teacher is the shared base checkpoint itself
    base = ctx.base().model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)


# --- U7 loss -------------------------------------------------------------------------------------


def test_kd_weight_zero_is_exactly_the_lightgcn_bpr_loss(ctx, setup):
    s = setup.student
    graph = s.graph
    gen = torch.Generator().manual_seed(3)
    plain = LightGCN(ctx.data.n_users, ctx.data.n_items, s.dim, s.n_layers, graph)
    zero = UnKDStudent(ctx.data.n_users, ctx.data.n_items, s.dim, s.n_layers, graph, kd_weight=0.0)
    one = UnKDStudent(ctx.data.n_users, ctx.data.n_items, s.dim, s.n_layers, graph, kd_weight=1.0)
    zero.load_state_dict(plain.state_dict())
    one.load_state_dict(plain.state_dict())
    kd = setup.sampler.draw()
    zero.set_pairs(kd)
    one.set_pairs(kd)
    users = torch.randint(ctx.data.n_users, (50,), generator=gen)
    pos = torch.randint(ctx.data.n_items, (50,), generator=gen)
    neg = torch.randint(ctx.data.n_items, (50,), generator=gen)
    ref = plain.bpr_loss(users, pos, neg, 1e-3)
    got = zero.bpr_loss(users, pos, neg, 1e-3)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    total, penalty = one.bpr_loss(users, pos, neg, 1e-3)
    assert torch.equal(penalty, ref[1]) and one.last_kd is not None and one.last_kd > 0
    assert total.item() == pytest.approx(ref[0].item() + one.last_kd.item(), rel=1e-6)
    assert one.last_kd.item() == pytest.approx(one.kd_loss(users, *one.propagate()).item(), rel=1e-6)


def test_kd_loss_is_log2_when_student_scores_are_equal():
    weights = torch.full((5, 8), 1 / 8)
    assert kd_pair_loss(torch.zeros(5, 8), weights).item() == pytest.approx(LOG2, rel=1e-6)
    # a student (no propagation) whose item rows are all equal scores every item the same
    pairs, train, users, items = random_setting(3, n_users=10, n_items=30, per_user=3)
    groups = popularity_groups(item_popularity(pairs, 30), 2)
    kd = PairSampler(build_candidates(users, items, train, groups, 10), [4, 4], 20.0,
                     np.random.default_rng(0)).draw()
    student = UnKDStudent(10, 30, 4, 0, None)
    with torch.no_grad():
        student.item_emb.copy_(torch.randn(1, 4).expand(30, 4))
    student.set_pairs(kd)
    loss = student.kd_loss(torch.arange(10), *student.propagate())
    assert loss.item() == pytest.approx(LOG2, rel=1e-6)


def test_kd_loss_at_most_log2_when_student_scores_equal_teacher_scores(ctx):
    full = UnKD().setup(ctx, Target(1.0))
    student, teacher = full.student, full.teacher
    assert student.dim == teacher.dim
    student.load_state_dict(teacher.state_dict())
    kd = full.sampler.draw()
    student.set_pairs(kd)
    with torch.no_grad():
        u_reps, i_reps = student.propagate()
        users = torch.arange(ctx.data.n_users)
        diff = (u_reps[:, None, :] * (i_reps[kd.pos] - i_reps[kd.neg])).sum(-1)
        loss = student.kd_loss(users, u_reps, i_reps)
    assert torch.all(diff[torch.from_numpy(kd.valid)] >= -1e-5)  # every pair has s+ >= s-
    assert loss.item() <= LOG2 + 1e-6


# --- U8 student and determinism ------------------------------------------------------------------


def test_student_dimension_and_shape(ctx, setup):
    assert [student_dim(r, 64) for r in (0.33, 0.26, 0.11, 0.08)] == [21, 17, 7, 5]
    assert student_dim(0.01, 8) == 1 and student_dim(1.0, 8) == 8
    d_t = setup.teacher.dim
    assert setup.student.layer0().shape == (ctx.data.n_users + ctx.data.n_items, round(0.5 * d_t))
    assert setup.student.n_layers == setup.teacher.n_layers == ctx.budget.n_layers
    assert setup.student.graph.n_edges == len(ctx.data.train)  # full graph
    st = setup.settings
    assert st["student_dim"] == round(0.5 * d_t) and st["ratio"] == st["student_dim"] / d_t
    assert st["group_sizes"] == setup.groups.sizes and st["allocation"] == [8, 8, 8, 8]
    assert st["pairs_per_user"] == 32 and st["grouping"] in ("greedy", "fallback")
    assert st["candidate_macs"] == ctx.data.n_users * ctx.data.n_items * d_t


def draws(seed: int, n: int):
    """A fresh context and setup for ``seed``, and ``n`` successive epochs' pairs."""
    s = UnKD().setup(method_context(seed, epochs=2), Target(0.5))
    return s, [s.sampler.draw() for _ in range(n)]


def test_pairs_same_seed_identical_and_differ_across_epochs():
    s, first = draws(0, 3)
    _, again = draws(0, 3)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.pos, b.pos) and np.array_equal(a.neg, b.neg)
    assert not np.array_equal(first[0].pos, first[1].pos)
    assert not np.array_equal(first[1].neg, first[2].neg)
    # the stream is numpy default_rng([seed, 3])
    own = PairSampler(s.candidates, s.allocation, 20.0, np.random.default_rng([0, 3])).draw()
    assert np.array_equal(own.pos, first[0].pos) and np.array_equal(own.neg, first[0].neg)
    _, (other,) = draws(1, 1)
    assert not (np.array_equal(other.pos, first[0].pos) and np.array_equal(other.neg, first[0].neg))


def test_compress_redraws_pairs_every_epoch_and_counts_kd_macs(monkeypatch):
    c = method_context(2, epochs=3, eval_every=1)
    seen: list[np.ndarray] = []
    original = PairSampler.draw

    def recording(self):
        out = original(self)
        seen.append(out.pos.copy())
        return out

    monkeypatch.setattr(PairSampler, "draw", recording)
    model = UnKD(sample_num=10).compress(c, Target(0.25))
    assert len(seen) == 3 and not np.array_equal(seen[0], seen[1])
    d_s = round(0.25 * 8)
    assert model.module.dim == d_s and type(model.module) is LightGCN
    # the harness's fvcore count of the BPR forward does not see the KD scoring (elementwise):
    # the method adds n_train x P x 2 d_s x 3, P = 10 pairs (K=4, S=10 -> [3, 3, 2, 2])
    plain = LightGCN(c.data.n_users, c.data.n_items, d_s, 2, model.graph)
    base = count_train_macs_per_epoch(plain, len(c.data.train), c.budget.batch_size, c.data.n_users,
                                      c.data.n_items)
    assert model.settings["allocation"] == [3, 3, 2, 2]
    extra = 3 * len(c.data.train) * 10 * 2 * d_s
    assert model.training.macs_per_epoch == pytest.approx(base + extra)
    assert model.settings["kd_macs_per_epoch"] == extra
    assert model.training.epochs == 3 and model.training.seconds > 0
    # M3: preservation = nnz / ((U + I) d_dense) = d_s / d_t, every edge kept
    m = achieved_compression(model, c.data.n_users, c.data.n_items, len(c.data.train), 8)
    assert m["emb_achieved"] == pytest.approx(d_s / 8) and m["edge_achieved"] == 1.0


def test_method_contract_and_option_checks():
    cls = get_method("unkd")
    assert cls is UnKD and cls.axes == ("emb",) and cls.uses_base
    knobs = {k.name: k.default for k in cls.knobs}
    assert knobs == {"groups": 4, "sample_num": 30, "kd_weight": 1.0, "mu": 20.0, "max_candidates": 1000,
                     "lam": 0.0}
    assert all(k.description for k in cls.knobs) and cls.simplifications
    for bad in ({"max_candidates": 1}, {"mu": 0.0}, {"groups": 0}, {"sample_num": -1}, {"kd_weight": -0.5}):
        (name,) = bad
        with pytest.raises(MethodError, match=f"unkd.{name} must be"):
            UnKD(**bad)
    with pytest.raises(MethodError, match="unknown option"):
        UnKD(temperature=2.0)
    with pytest.raises(MethodError, match="edge"):
        cls.check_target(Target(0.5, edge=0.5), 2)
    frozen = freeze(torch.nn.Linear(2, 2))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_nonzero_lam_shares_pairs_by_inverse_popularity(ctx):
    s = UnKD(lam=1.0).setup(ctx, Target(0.5))
    w = share_weights(s.groups, 1.0)
    assert s.allocation == allocate_pairs(30, w) and sum(s.allocation) >= 30
    assert s.allocation[-1] >= s.allocation[0]
    assert s.settings["lam"] == 1.0 and s.settings["pairs_per_user"] == sum(s.allocation)


# --- end to end (M3) -----------------------------------------------------------------------------


def test_unkd_cell_end_to_end(tiny_root, tmp_path):
    from bench.config import load_config

    cfg = load_config(tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["unkd"]\n'
                                             "emb_targets = [0.5]\nseeds = [0]\n", name="unkd"))
    out = tmp_path / "out"
    summary = run_matrix(cfg, out, **QUIET)
    assert (summary.total, summary.ok) == (1, 1)
    with ResultStore(out / "results.sqlite") as store:
        (cell,) = store.cells()
    assert cell["status"] == "ok" and cell["error"] is None and not cell["flagged"]
    m, st = cell["measurements"], cell["settings"]
    assert st["teacher_dim"] == 8 and st["student_dim"] == 4
    assert m["emb_achieved"] == st["student_dim"] / st["teacher_dim"] == st["ratio"]
    assert m["edge_achieved"] == 1.0
    assert m["params"] == (60 + 40) * 4
    assert m["train_macs_per_epoch"] > st["kd_macs_per_epoch"] > 0
    assert cell["base_checkpoint"]
    assert math.isfinite(cell["metrics"]["recall@10"])
