"""LERG graph side (docs/methods/lerg.md): importance, LP selection, rewiring, ``Â_rw`` and the
placeholder codebook; invariants 13-16. Small synthetic graphs only."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from bench.backbone.graph import normalized_adjacency
from methods.lerg import graph as lg


def _random_graph(seed: int, n_users: int, n_items: int, n_edges: int) -> np.ndarray:
    """Random (user, item) pairs with some duplicates; items are not offset."""
    rng = np.random.default_rng(seed)
    pairs = np.stack([rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)], axis=1)
    return np.concatenate([pairs, pairs[: n_edges // 10]]).astype(np.int64)


def _adjacency_lists(pairs: np.ndarray, n_users: int, n: int) -> list[set[int]]:
    adj: list[set[int]] = [set() for _ in range(n)]
    for u, i in pairs:
        adj[int(u)].add(n_users + int(i))
        adj[n_users + int(i)].add(int(u))
    return adj


def _bfs(adj: list[set[int]], src: int) -> dict[int, int]:
    dist = {src: 0}
    queue = deque([src])
    while queue:
        x = queue.popleft()
        for y in adj[x]:
            if y not in dist:
                dist[y] = dist[x] + 1
                queue.append(y)
    return dist


def _reference_rewire(pairs, n_users, n_items, retained, H, mode):
    """The rewiring rule written out with BFS and loops (ties: smallest id)."""
    n = n_users + n_items
    adj = _adjacency_lists(pairs, n_users, n)
    alive = np.zeros(n, dtype=bool)
    alive[retained] = True
    h = H.double().numpy()
    hn = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-300)
    edges = {(int(u), n_users + int(i)) for u, i in pairs}
    kept = {e for e in edges if alive[e[0]] and alive[e[1]]}
    deg = {x: 0 for x in range(n)}
    for a, b in kept:
        deg[a] += 1
        deg[b] += 1
    out = set(kept)
    for u, i in sorted(edges - kept):
        if alive[u] == alive[i] or mode == "none":
            continue
        a, p = (u, i) if alive[u] else (i, u)
        if mode == "isolated_only" and deg[a] > 0:
            continue
        same_type = (lambda x: x < n_users) if p < n_users else (lambda x: x >= n_users)
        dist = _bfs(adj, p)
        cands = sorted(x for x, d in dist.items() if d == 2 and alive[x] and same_type(x) and x != p)
        if not cands:
            continue
        cos = [float(hn[p] @ hn[b]) for b in cands]
        best = cands[int(np.argmax(cos))]  # argmax returns the first (smallest id) of tied maxima
        out.add((min(a, best), max(a, best)))
    return {(x, y - n_users) for x, y in out}


# --- importance ---------------------------------------------------------------------------


def test_global_cos_equals_brute_force_cosine_sum():
    torch.manual_seed(0)
    H = torch.randn(9, 5)
    H[4] = 0  # a zero row has cosine 0 with everything, itself included
    s = lg.importance_scores(H, "global_cos")
    h = H.double().numpy()
    expected = np.zeros(9)
    for i in range(9):
        for j in range(9):
            ni, nj = np.linalg.norm(h[i]), np.linalg.norm(h[j])
            if ni > 0 and nj > 0:
                expected[i] += h[i] @ h[j] / (ni * nj)
    assert s.dtype == np.float64 and s.shape == (9,)
    np.testing.assert_allclose(s, expected, atol=1e-10)
    assert s[4] == 0.0


def test_neighbour_cos_equals_brute_force_loop():
    n_users, n_items = 5, 4
    # with duplicates; user 4 and item 2 are isolated
    pairs = np.array([[0, 0], [0, 1], [1, 1], [2, 3], [0, 0], [3, 1], [2, 3]])
    torch.manual_seed(1)
    H = torch.randn(n_users + n_items, 3)
    H[3] = 0
    s = lg.importance_scores(H, "neighbour_cos", pairs=pairs, n_users=n_users)
    h = H.double().numpy()
    expected = np.zeros(n_users + n_items)
    for u, i in {(int(u), int(i)) for u, i in pairs}:
        a, b = h[u], h[n_users + i]
        c = 0.0 if not (np.any(a) and np.any(b)) else a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        expected[u] += c
        expected[n_users + i] += c
    np.testing.assert_allclose(s, expected, atol=1e-10)
    assert s[4] == 0 and s[n_users + 2] == 0 and s[3] == 0


def test_importance_rejects_bad_mode_and_missing_graph():
    H = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"unknown importance mode 'cosine'.*global_cos.*neighbour_cos"):
        lg.importance_scores(H, "cosine")
    with pytest.raises(ValueError, match="needs the train pairs and n_users"):
        lg.importance_scores(H, "neighbour_cos")
    with pytest.raises(ValueError, match="item ids outside"):
        lg.importance_scores(H, "neighbour_cos", pairs=np.array([[0, 2]]), n_users=2)


# --- selection (invariant 13) ------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 7, 20, 39])
def test_lp_sums_to_m_and_selection_is_top_m(m):
    rng = np.random.default_rng(m)
    scores = rng.permutation(40).astype(float) + rng.random(40) * 0.1  # distinct
    x, status = lg.lp_relaxation(scores, m)
    assert status == 0
    assert x.sum() == pytest.approx(m, abs=1e-9)
    assert x.min() >= 0 and x.max() <= 1
    kept, info = lg.select_entities(scores, m)
    assert kept.dtype == np.int64 and kept.size == m and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept, np.sort(np.argsort(-scores)[:m]))
    assert info["lp_status"] == 0 and info["n_fixed_up"] == 0
    assert info["objective"] == pytest.approx(scores[kept].sum())


def test_selection_trivial_budgets():
    scores = np.array([3.0, 1.0, 2.0])
    assert lg.select_entities(scores, 0)[0].size == 0
    np.testing.assert_array_equal(lg.select_entities(scores, 3)[0], [0, 1, 2])


def test_selection_with_ties_keeps_exactly_m_and_is_optimal():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 1.0, 1.0])
    for m in range(1, 8):
        kept, _ = lg.select_entities(scores, m)
        assert kept.size == m
        dropped = np.setdiff1d(np.arange(scores.size), kept)
        assert scores[kept].min() >= scores[dropped].max()  # no better entity left out
        np.testing.assert_array_equal(kept, lg.select_entities(scores, m)[0])  # deterministic


def test_per_side_budgets_are_honoured():
    rng = np.random.default_rng(3)
    n_users, n_items = 12, 9
    scores = rng.random(n_users + n_items)
    scores[n_users:] += 5  # items dominate: one global budget would take them all first
    x, _ = lg.lp_relaxation(scores, 7, n_users=n_users, per_side=(4, 3))
    assert x[:n_users].sum() == pytest.approx(4) and x[n_users:].sum() == pytest.approx(3)
    kept, _ = lg.select_entities(scores, 7, n_users=n_users, per_side=(4, 3))
    users, items = kept[kept < n_users], kept[kept >= n_users]
    np.testing.assert_array_equal(users, np.sort(np.argsort(-scores[:n_users])[:4]))
    np.testing.assert_array_equal(items, n_users + np.sort(np.argsort(-scores[n_users:])[:3]))
    global_kept, _ = lg.select_entities(scores, 7)
    assert np.all(global_kept >= n_users)  # the per-side budget really changes the answer


def test_selection_rejects_bad_budgets():
    scores = np.arange(5.0)
    with pytest.raises(ValueError, match=r"m=6 retained entities is outside \[0, N=5\]"):
        lg.select_entities(scores, 6)
    with pytest.raises(ValueError, match=r"m=-1 retained entities is outside"):
        lg.select_entities(scores, -1)
    with pytest.raises(ValueError, match="integer"):
        lg.select_entities(scores, 2.5)
    with pytest.raises(ValueError, match="must sum to m=3"):
        lg.select_entities(scores, 3, n_users=2, per_side=(1, 1))
    with pytest.raises(ValueError, match="user budget 3 must lie in"):
        lg.select_entities(scores, 4, n_users=2, per_side=(3, 1))
    with pytest.raises(ValueError, match="need n_users"):
        lg.select_entities(scores, 2, per_side=(1, 1))
    with pytest.raises(ValueError, match="finite"):
        lg.select_entities(np.array([1.0, np.nan]), 1)


# --- rewiring (invariant 14) ---------------------------------------------------------------


def _tiny_graph_one():
    """Users 0..3, items 0..2 (ids 4..6); user 1 is pruned. Its 2-hop retained users are 0 and 2
    (through item 0); user 3 is 4 hops away although it is the most similar."""
    pairs = np.array([[0, 0], [1, 0], [1, 1], [2, 0], [2, 2], [3, 2]])
    H = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.01], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    retained = np.array([0, 2, 3, 4, 5, 6])
    return pairs, H, retained


def test_substitute_takes_the_most_similar_two_hop_entity_and_skips_existing_edges():
    pairs, H, retained = _tiny_graph_one()
    edges, info = lg.rewire(pairs, 4, 3, retained, H, "substitute")
    # (1, 0) -> (2, 0) already exists: skipped, not replaced by the next best; (1, 1) -> (2, 1) added
    np.testing.assert_array_equal(edges, [[0, 0], [2, 0], [2, 1], [2, 2], [3, 2]])
    assert edges.dtype == np.int64
    assert info["edges_kept"] == 4 and info["edges_deleted"] == 2 and info["edges_dangling"] == 2
    assert info["edges_added"] == 1 and info["reroute_skipped_existing"] == 1
    assert info["reroute_no_candidate"] == 0 and info["edges_rewired"] == 5


def test_substitute_ties_go_to_the_smallest_id():
    pairs, H, retained = _tiny_graph_one()
    H[0] = H[2]  # users 0 and 2 are now equally similar to user 1
    edges, info = lg.rewire(pairs, 4, 3, retained, H, "substitute")
    np.testing.assert_array_equal(edges, [[0, 0], [0, 1], [2, 0], [2, 2], [3, 2]])
    assert info["edges_added"] == 1 and info["reroute_skipped_existing"] == 1


def _tiny_graph_two():
    """Users 0..3, items 0..4 (ids 4..8). Pruned: user 1 (edges to items 0, 1, 3) and item 4 (only
    neighbour user 3, who has no other item, so item 4 has no 2-hop item). Item 2 is isolated."""
    pairs = np.array([[1, 0], [1, 1], [1, 3], [0, 0], [2, 3], [3, 4]])
    H = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.2], [0.5, 0.5]] + [[1.0, 0.0]] * 5)
    retained = np.array([0, 2, 3, 4, 5, 6, 7])
    return pairs, H, retained


def _counts(attempted: int, added: int, skipped: int, no_candidate: int) -> dict[str, int]:
    return {"reroute_attempted": attempted, "edges_added": added, "reroute_skipped_existing": skipped,
            "reroute_no_candidate": no_candidate}


@pytest.mark.parametrize(
    ("mode", "expected", "counts"),
    [
        ("substitute", [[0, 0], [2, 0], [2, 1], [2, 3]], _counts(4, 2, 1, 1)),
        # item 1 and user 3 lose every edge; item 0 (user 0) and item 3 (user 2) keep one
        ("isolated_only", [[0, 0], [2, 1], [2, 3]], _counts(2, 1, 0, 1)),
        ("none", [[0, 0], [2, 3]], _counts(0, 0, 0, 0)),
    ],
)
def test_rewire_modes_on_a_hand_built_graph(mode, expected, counts):
    pairs, H, retained = _tiny_graph_two()
    edges, info = lg.rewire(pairs, 4, 5, retained, H, mode)
    np.testing.assert_array_equal(edges, expected)
    assert {k: info[k] for k in counts} == counts
    assert info["edges_kept"] == 2 and info["edges_deleted"] == 4 and info["edges_dangling"] == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["substitute", "isolated_only", "none"])
def test_rewire_matches_a_bfs_reference_and_keeps_the_invariants(seed, mode):
    n_users, n_items = 30, 22
    n = n_users + n_items
    pairs = _random_graph(seed, n_users, n_items, 90)
    rng = np.random.default_rng(100 + seed)
    retained = np.sort(rng.choice(n, 33, replace=False))
    H = torch.from_numpy(rng.standard_normal((n, 6)).astype(np.float32))
    edges, info = lg.rewire(pairs, n_users, n_items, retained, H, mode)

    reference = _reference_rewire(pairs, n_users, n_items, retained, H, mode)
    assert {(int(u), int(i)) for u, i in edges} == reference
    alive = np.zeros(n, dtype=bool)
    alive[retained] = True
    assert alive[edges[:, 0]].all() and alive[n_users + edges[:, 1]].all()  # nothing touches a pruned entity
    assert edges[:, 0].max() < n_users and edges[:, 1].max() < n_items  # user-item only
    assert np.unique(edges, axis=0).shape[0] == edges.shape[0]  # no duplicates
    np.testing.assert_array_equal(edges, edges[np.lexsort((edges[:, 1], edges[:, 0]))])  # sorted
    n_train = np.unique(pairs, axis=0).shape[0]
    assert edges.shape[0] <= n_train and info["edges_train"] == n_train
    assert info["edges_rewired"] == edges.shape[0] == info["edges_kept"] + info["edges_added"]
    assert info["reroute_attempted"] == (
        info["edges_added"] + info["reroute_skipped_existing"] + info["reroute_no_candidate"])
    # every added edge joins two retained entities exactly 3 hops apart in the original graph
    original = {(int(u), int(i)) for u, i in pairs}
    adj = _adjacency_lists(pairs, n_users, n)
    added = [(int(u), int(i)) for u, i in edges if (int(u), int(i)) not in original]
    assert len(added) == info["edges_added"]
    for u, i in added:
        assert _bfs(adj, u).get(n_users + i) == 3
    if mode == "none":
        assert info["edges_added"] == 0
    if mode == "substitute" and seed == 0:
        assert info["edges_added"] > 0 and info["reroute_skipped_existing"] + info["reroute_no_candidate"] > 0


def test_isolated_only_reroutes_only_for_endpoints_left_without_edges():
    n_users, n_items = 30, 22
    pairs = _random_graph(5, n_users, n_items, 70)
    rng = np.random.default_rng(7)
    retained = np.sort(rng.choice(n_users + n_items, 26, replace=False))
    H = torch.from_numpy(rng.standard_normal((n_users + n_items, 4)).astype(np.float32))
    none, _ = lg.rewire(pairs, n_users, n_items, retained, H, "none")
    iso, info = lg.rewire(pairs, n_users, n_items, retained, H, "isolated_only")
    sub, _ = lg.rewire(pairs, n_users, n_items, retained, H, "substitute")
    had = set(none[:, 0].tolist()) | {n_users + int(i) for i in none[:, 1]}
    added = {(int(u), int(i)) for u, i in iso} - {(int(u), int(i)) for u, i in none}
    assert added and info["edges_added"] == len(added)
    for u, i in added:  # one end had degree 0 after the deletion
        assert u not in had or n_users + i not in had
    assert added <= {(int(u), int(i)) for u, i in sub}


@pytest.mark.parametrize(
    ("path_budget", "dense_cells", "dense_density"),
    [(1, 1, 0), (1, 1, 1 << 30), (1 << 22, 1 << 22, 0), (1 << 22, 1 << 22, 1 << 30), (3, 40, 64)],
)
def test_rewire_chunking_and_cosine_path_do_not_change_the_result(monkeypatch, path_budget, dense_cells,
                                                                   dense_density):
    n_users, n_items = 40, 25
    pairs = _random_graph(11, n_users, n_items, 160)
    rng = np.random.default_rng(12)
    retained = np.sort(rng.choice(n_users + n_items, 40, replace=False))
    H = torch.from_numpy(rng.standard_normal((n_users + n_items, 5)).astype(np.float32))
    expected, expected_info = lg.rewire(pairs, n_users, n_items, retained, H)
    monkeypatch.setattr(lg, "_PATH_BUDGET", path_budget)
    monkeypatch.setattr(lg, "_DENSE_CELLS", dense_cells)
    monkeypatch.setattr(lg, "_DENSE_DENSITY", dense_density)
    monkeypatch.setattr(lg, "_GATHER_CHUNK", 7)
    edges, info = lg.rewire(pairs, n_users, n_items, retained, H)
    np.testing.assert_array_equal(edges, expected)
    assert info == expected_info and info["edges_added"] > 0


def test_rewire_keeps_everything_when_nothing_is_pruned():
    pairs = _random_graph(2, 10, 8, 30)
    H = torch.randn(18, 3)
    edges, info = lg.rewire(pairs, 10, 8, np.arange(18), H)
    np.testing.assert_array_equal(edges, np.unique(pairs, axis=0))
    assert info["edges_deleted"] == 0 and info["edge_ratio"] == 1.0


def test_rewire_rejects_bad_input():
    pairs, H, retained = _tiny_graph_one()
    with pytest.raises(ValueError, match=r"unknown reroute mode 'all'.*substitute.*isolated_only.*none"):
        lg.rewire(pairs, 4, 3, retained, H, "all")
    with pytest.raises(ValueError, match=r"retained ids must lie in \[0, 7\)"):
        lg.rewire(pairs, 4, 3, np.array([0, 7]), H)
    with pytest.raises(ValueError, match="H has 6 rows"):
        lg.rewire(pairs, 4, 3, retained, H[:6])


# --- Â_rw (invariant 15) ----------------------------------------------------------------


def test_rewired_graph_is_the_normalised_compact_adjacency():
    n_users, n_items = 30, 22
    pairs = _random_graph(4, n_users, n_items, 100)
    rng = np.random.default_rng(4)
    retained = np.sort(rng.choice(n_users + n_items, 35, replace=False))
    H = torch.from_numpy(rng.standard_normal((n_users + n_items, 4)).astype(np.float32))
    edges, _ = lg.rewire(pairs, n_users, n_items, retained, H)
    graph, user_ids, item_ids = lg.rewired_graph(n_users, n_items, retained, edges)

    np.testing.assert_array_equal(user_ids, retained[retained < n_users])
    np.testing.assert_array_equal(item_ids, retained[retained >= n_users] - n_users)
    m = retained.size
    assert graph.n_nodes == m and graph.n_users == user_ids.size and graph.n_items == item_ids.size
    dense = torch.sparse_coo_tensor(torch.stack([graph.rows, graph.cols]), graph.values, (m, m)).to_dense()
    assert torch.equal(dense, dense.T) and torch.all(dense.diagonal() == 0)
    d_u = np.array([(edges[:, 0] == u).sum() for u in user_ids])
    d_i = np.array([(edges[:, 1] == i).sum() for i in item_ids])
    expected = np.zeros((m, m))
    for u, i in edges:
        cu, ci = np.searchsorted(user_ids, u), user_ids.size + np.searchsorted(item_ids, i)
        expected[cu, ci] = expected[ci, cu] = 1 / np.sqrt(d_u[cu] * d_i[ci - user_ids.size])
    np.testing.assert_allclose(dense.numpy(), expected, rtol=1e-6)
    full = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1])
    assert graph.nnz == 2 * edges.shape[0] <= full.nnz  # so L·nnz·d MACs never grow


def test_rewired_graph_rejects_edges_on_pruned_entities():
    with pytest.raises(ValueError, match="not retained"):
        lg.rewired_graph(3, 2, np.array([0, 1, 3]), np.array([[0, 0], [2, 0]]))


# --- placeholder codebook (invariant 16) ----------------------------------------------------


def test_placeholder_codebook_sizes_indices_and_nearest_centroid():
    rng = np.random.default_rng(0)
    H = torch.from_numpy(rng.standard_normal((60, 4)).astype(np.float32))
    pruned = rng.choice(60, 25, replace=False)
    table, index = lg.placeholder_codebook(H, pruned, r=6, seed=3)
    assert table.shape == (6, 4) and table.dtype == torch.float32
    assert index.shape == (25,) and index.dtype == np.int64
    assert index.min() >= 0 and index.max() < 6 and np.unique(index).size == 6
    dist = torch.cdist(H[torch.from_numpy(pruned)], table)
    assert torch.allclose(dist[torch.arange(25), torch.from_numpy(index)], dist.min(dim=1).values, atol=1e-5)
    table2, index2 = lg.placeholder_codebook(H, pruned, r=6, seed=3)
    assert torch.equal(table, table2) and np.array_equal(index, index2)  # deterministic


def test_placeholder_codebook_caps_r_at_the_pruned_count_and_handles_duplicates():
    H = torch.zeros(10, 3)
    H[5:] = 1.0  # the pruned rows have only 2 distinct points
    table, index = lg.placeholder_codebook(H, np.array([1, 6, 7, 2]), r=500, seed=0)
    assert table.shape == (4, 3) and index.shape == (4,)
    assert index.min() >= 0 and index.max() < 4
    np.testing.assert_allclose(table[torch.from_numpy(index)].numpy(), H[[1, 6, 7, 2]].numpy(), atol=1e-6)
    empty, none = lg.placeholder_codebook(H, np.array([], dtype=np.int64), r=5, seed=0)
    assert empty.shape == (0, 3) and none.shape == (0,)
    with pytest.raises(ValueError, match="positive integer"):
        lg.placeholder_codebook(H, np.array([1]), r=0, seed=0)
