"""random-drop (docs/methods/random-drop.md): invariants R1-R5, M3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbone.graph import normalized_adjacency, unique_pairs
from bench.backbone.lightgcn import LightGCN
from bench.contract import Target
from bench.measure.size import achieved_compression
from bench.training import TrainHook
from methods.random_drop import RandomDrop, drop_edges, dropped_graph
from methods.shared.masking import MaskedLightGCN
from tests.helpers import method_context, random_interactions


def _graph_dict(g) -> dict[tuple[int, int], float]:
    return {(int(r), int(c)): float(v) for r, c, v in zip(g.rows, g.cols, g.values, strict=True)}


@pytest.fixture
def universe():
    rng = np.random.default_rng(0)
    pairs = random_interactions(rng, 30, 20, 6)
    return unique_pairs(pairs, 20)


@pytest.mark.parametrize("ratio", [0.05, 0.33, 0.5, 0.77, 1.0])
def test_r1_exact_edge_count_from_the_train_set_and_symmetric(universe, ratio):
    kept = drop_edges(universe, ratio, np.random.default_rng([7, 1]))
    assert len(kept) == round(ratio * len(universe))
    codes = set((universe[:, 0] * 20 + universe[:, 1]).tolist())
    kept_codes = (kept[:, 0] * 20 + kept[:, 1]).tolist()
    assert len(set(kept_codes)) == len(kept_codes) and set(kept_codes) <= codes
    g = dropped_graph(30, 20, universe, kept, "recompute", "csr", torch.device("cpu"))
    d = _graph_dict(g)
    assert all(d[(c, r)] == v for (r, c), v in d.items())  # Â symmetric
    assert g.n_edges == len(kept)


def test_r1_full_ratio_is_the_dense_graph_and_zero_edges_leave_layer0(universe):
    kept = drop_edges(universe, 1.0, np.random.default_rng([0, 1]))
    g = dropped_graph(30, 20, universe, kept, "recompute", "csr", torch.device("cpu"))
    dense = normalized_adjacency(30, 20, universe[:, 0], universe[:, 1])
    for name in ("rows", "cols", "values"):
        assert torch.equal(getattr(g, name), getattr(dense, name))
    empty = dropped_graph(30, 20, universe, drop_edges(universe, 0.0, np.random.default_rng(0)),
                          "recompute", "csr", torch.device("cpu"))
    torch.manual_seed(0)
    model = LightGCN(30, 20, 4, 3, empty)
    users, items = model.propagate()
    assert torch.allclose(torch.cat([users, items]), model.layer0() / 4)


def test_r2_degree_normalisation_conventions(universe):
    kept = drop_edges(universe, 0.4, np.random.default_rng([3, 1]))
    full = _graph_dict(normalized_adjacency(30, 20, universe[:, 0], universe[:, 1]))
    rec = _graph_dict(dropped_graph(30, 20, universe, kept, "recompute", "csr", torch.device("cpu")))
    orig = _graph_dict(dropped_graph(30, 20, universe, kept, "original", "csr", torch.device("cpu")))
    du = np.bincount(kept[:, 0], minlength=30)
    di = np.bincount(kept[:, 1], minlength=20)
    expected_keys = {(int(u), int(i) + 30) for u, i in kept} | {(int(i) + 30, int(u)) for u, i in kept}
    assert set(rec) == set(orig) == expected_keys
    for u, i in kept:
        assert rec[(u, i + 30)] == pytest.approx(1 / np.sqrt(du[u] * di[i]), rel=1e-6)
        assert orig[(u, i + 30)] == full[(u, i + 30)]
    with pytest.raises(ValueError, match="edge_norm"):
        dropped_graph(30, 20, universe, kept, "both", "csr", torch.device("cpu"))


def test_per_user_variant_isolates_no_user(universe):
    kept = drop_edges(universe, 0.2, np.random.default_rng(5), per_user=True)
    deg = np.bincount(universe[:, 0], minlength=30)
    kept_deg = np.bincount(kept[:, 0], minlength=30)
    assert (kept_deg == np.ceil(0.2 * deg)).all()
    assert drop_edges(universe, 0.7, np.random.default_rng(5), per_user=True)[:, 0].tolist().count(0) == 5


class _Recorder(TrainHook):
    """Records the masks at the first and last epoch (R4)."""

    def __init__(self, model):
        self.model, self.first, self.last = model, None, None

    def epoch_start(self, epoch):
        if self.first is None:
            self.first = self.model.mask.clone()

    def step_end(self, step, optimizer):
        self.last = self.model.mask.clone()


def _compress(seed=0, target=None, torch_seed=0, **options):
    target = target or Target(0.5)
    ctx = method_context(seed)
    torch.manual_seed(torch_seed)
    return ctx, RandomDrop(**options).compress(ctx, target)


@pytest.mark.parametrize("per_row", [False, True])
def test_r3_entry_mask_exact_and_masked_entries_zero(per_row):
    ctx, cm = _compress(target=Target(0.3), per_row=per_row)
    model = cm.module
    assert isinstance(model, MaskedLightGCN)
    n_rows, d = 100, 8
    mask = model.mask
    if per_row:
        assert (mask.sum(dim=1) == round(0.3 * d)).all()
    else:
        assert int(mask.sum()) == round(0.3 * n_rows * d)
    table = torch.cat([model.user_emb, model.item_emb]).detach()
    assert (table[~mask] == 0).all() and (table[mask] != 0).any()
    state = model.state_dict()
    assert (torch.cat([state["user_emb"], state["item_emb"]])[~mask] == 0).all()
    model.zero_grad()
    bpr, pen = model.bpr_loss(torch.tensor([0, 5]), torch.tensor([1, 2]), torch.tensor([3, 4]), reg=1e-3)
    (bpr + pen).backward()
    assert (torch.cat([model.user_emb.grad, model.item_emb.grad])[~mask] == 0).all()
    # M3: reported preservation = nnz / ((U + I) d)
    sizes = achieved_compression(cm, 60, 40, len(ctx.data.train), d)
    assert sizes["emb_achieved"] == int(mask.sum()) / (n_rows * d)


def test_r4_masks_fixed_seeded_and_independent_of_the_model_init(monkeypatch):
    recorders = []
    original_fit = type(method_context()).fit

    def fit(self, model, config=None, hooks=(), extra_macs_per_epoch=0.0):
        if not isinstance(model, MaskedLightGCN):
            return original_fit(self, model, config, hooks, extra_macs_per_epoch)
        rec = _Recorder(model)
        recorders.append(rec)
        return original_fit(self, model, config, [*hooks, rec], extra_macs_per_epoch)

    monkeypatch.setattr(type(method_context()), "fit", fit)
    _, a = _compress(seed=0)
    assert torch.equal(recorders[-1].first, recorders[-1].last)
    assert torch.equal(recorders[-1].last, a.module.mask)
    _, b = _compress(seed=0, torch_seed=99)  # another model init, same run seed
    _, c = _compress(seed=1)
    _, both = _compress(seed=0, target=Target(0.5, 0.5))
    assert torch.equal(a.module.mask, b.module.mask)
    assert not torch.equal(a.module.mask, c.module.mask)
    assert not torch.equal(a.module.user_emb, b.module.user_emb)
    assert torch.equal(both.module.mask, a.module.mask)  # RandBoth's entry mask is RandEmb's
    _, e1 = _compress(seed=0, target=Target(1.0, 0.5))
    _, e2 = _compress(seed=0, target=Target(1.0, 0.5), torch_seed=5)
    assert torch.equal(e1.graph.rows, e2.graph.rows) and torch.equal(e1.graph.cols, e2.graph.cols)
    assert torch.equal(both.graph.rows, e1.graph.rows)  # RandBoth's edges are RandEdge's


def test_r5_dropped_pairs_stay_bpr_positives(monkeypatch):
    seen: list[torch.Tensor] = []
    original = LightGCN.bpr_loss

    def recording(self, users, pos, neg, reg, reg_form="squared"):
        if self.training:
            seen.append(torch.stack([users, pos], 1))
        return original(self, users, pos, neg, reg, reg_form)

    monkeypatch.setattr(LightGCN, "bpr_loss", recording)
    ctx, cm = _compress(target=Target(1.0, 0.3))
    graph_pairs = {(int(r), int(c) - 60) for r, c in zip(cm.graph.rows, cm.graph.cols, strict=True) if r < 60}
    trained = {tuple(p) for p in torch.cat(seen).tolist()}
    train = {tuple(p) for p in ctx.data.train.tolist()}
    dropped = train - graph_pairs
    assert len(graph_pairs) == round(0.3 * len(train))
    assert dropped and train <= trained  # every training pair, dropped or kept, was a positive
    assert cm.settings["kept_edges"] == len(graph_pairs)


def test_random_drop_through_the_matrix_reaches_its_targets(tiny_root, tmp_path):
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore
    from tests.helpers import tiny_config

    body = ('datasets = ["tiny"]\nmethods = ["random-drop"]\nseeds = [0]\n'
            'targets = [{emb = 0.5}, {emb = 1.0, edge = 0.5}, {emb = 0.25, edge = 0.75}]\n')
    cfg = load_config(tiny_config(tiny_root, body))
    run_matrix(cfg, tmp_path / "out", progress=False, log=lambda m: None, report=False)
    cells = ResultStore(tmp_path / "out" / "results.sqlite").cells()
    assert len(cells) == 3 and all(c["status"] == "ok" and not c["flagged"] for c in cells)
    for c in cells:
        m = c["measurements"]
        assert abs(m["emb_achieved"] - c["emb_target"]) < 1e-9
        assert abs(m["edge_achieved"] - (c["edge_target"] or 1.0)) < 0.01
        if c["emb_target"] < 1:
            assert m["emb_bytes_dense_with_zeros"] == 100 * 8 * 4
            assert m["flops_propagation_sparse_aware"] <= m["flops_propagation"]
