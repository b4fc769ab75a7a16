"""LERG's graph-side steps: entity importance, LP selection, the rewired graph, placeholders.

See docs/methods/lerg.md, step 2 (importance scores, the BIP relaxed to an LP with
rounding at 0.5 and an exact-count fix-up), step 3 (delete the pruned entities' edges and re-route
dangling ones to 2-hop substitutes; the rewired ``Â_rw``), step 4 (k-means placeholder codebook over
the pruned entities' pretrained rows), checked by invariants 13-16 in ``tests/test_lerg_graph.py``.

Entities are numbered users first (``0..U-1``), then items (``U..U+I-1``); ``pairs`` are
``(user, item)`` rows with item ids ``0..I-1`` (not offset), possibly with duplicates. The
importance objective and the re-routing rule are inferred ([I] in docs/methods/lerg.md): results that
depend on them must say so. Everything here is deterministic and never builds a dense ``N x N``.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from bench.api import MethodError, NormalizedGraph, normalized_adjacency, unique_pairs

IMPORTANCE_MODES = ("global_cos", "neighbour_cos")
REROUTE_MODES = ("substitute", "isolated_only", "none")

# Re-routing works on pruned rows in chunks: a chunk holds at most this many 2-hop paths (an upper
# bound on its nonzeros), and the cosines are gathered this many nonzeros at a time.
_PATH_BUDGET = 1 << 22
_GATHER_CHUNK = 1 << 16
# a chunk's dense cosine block (rows x candidates, float64) holds at most this many cells, and is
# used instead of gathers when at least 1 in _DENSE_DENSITY of its cells is a 2-hop candidate
_DENSE_CELLS = 1 << 22
_DENSE_DENSITY = 64
# cosines this close to a row's best count as tied; the smaller id wins
_TIE_TOL = 1e-12
# an LP value counts as fractional when it is this far from both 0 and 1
_FRACTIONAL_TOL = 1e-9


def _unit_rows(H: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows of ``H`` scaled to unit length in float64; a zero row stays zero (step 2)."""
    if isinstance(H, torch.Tensor):
        x = H.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(H, dtype=np.float64)
    if x.ndim != 2:
        raise MethodError(f"H must be a 2-D (entities x dim) table, got shape {tuple(x.shape)}")
    norms = np.linalg.norm(x, axis=1)
    out = np.zeros_like(x)
    nz = norms > 0
    out[nz] = x[nz] / norms[nz, None]
    return out


def _check_pairs(pairs: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Distinct ``(user, item)`` rows, sorted, after checking both ids are in range."""
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
        raise MethodError(f"pairs must be an (E, 2) array of (user, item), got shape {arr.shape}")
    arr = arr.reshape(-1, 2)
    if arr.size:
        if arr[:, 0].min() < 0 or arr[:, 0].max() >= n_users:
            raise MethodError(f"pairs hold user ids outside [0, {n_users})")
        if arr[:, 1].min() < 0 or arr[:, 1].max() >= n_items:
            raise MethodError(f"pairs hold item ids outside [0, {n_items}) (items are not offset)")
    return unique_pairs(arr, max(n_items, 1))


def _check_ids(ids: np.ndarray, n: int, what: str) -> np.ndarray:
    """Sorted distinct entity ids in ``[0, n)``."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise MethodError(f"{what} ids must lie in [0, {n})")
    out = np.unique(arr)
    if out.size != arr.size:
        raise MethodError(f"{what} ids must be distinct")
    return out


def importance_scores(
    H: torch.Tensor,
    mode: str = "global_cos",
    pairs: np.ndarray | None = None,
    n_users: int | None = None,
) -> np.ndarray:
    """Entity importance ``s`` (float64, ``(N,)``) from the pretrained final embeddings (step 2, [I]).

    ``global_cos``: ``s_i = Σ_j cos(h_i, h_j) = ĥ_i · Σ_j ĥ_j`` over all entities (``j = i``
    included), ``O(N d)``. ``neighbour_cos``: ``s_i = Σ_{j ∈ N(i)} cos(h_i, h_j)`` over the
    deduplicated bipartite train graph given by ``pairs`` and ``n_users``; isolated entities get 0.
    Zero rows of ``H`` have cosine 0 with everything.
    """
    if mode not in IMPORTANCE_MODES:
        raise MethodError(f"unknown importance mode {mode!r}; choose from {list(IMPORTANCE_MODES)}")
    hn = _unit_rows(H)
    n = hn.shape[0]
    if mode == "global_cos":
        return hn @ hn.sum(axis=0)
    if pairs is None or n_users is None:
        raise MethodError("importance 'neighbour_cos' needs the train pairs and n_users")
    if not 0 <= n_users <= n:
        raise MethodError(f"n_users={n_users} must lie in [0, N={n}]")
    edges = _check_pairs(pairs, n_users, n - n_users)
    u, i = edges[:, 0], edges[:, 1] + n_users
    cos = np.einsum("ij,ij->i", hn[u], hn[i])
    return np.bincount(u, weights=cos, minlength=n) + np.bincount(i, weights=cos, minlength=n)


def _rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by the smaller index first."""
    return np.lexsort((np.arange(scores.size), -scores))


def _side_blocks(n: int, n_users: int | None, per_side: tuple[int, int] | None, m: int
                 ) -> list[tuple[int, int, int]]:
    """The ``(start, stop, budget)`` blocks the cardinality constraints range over."""
    if per_side is None:
        return [(0, n, m)]
    if n_users is None:
        raise MethodError("per_side budgets need n_users")
    if not 0 <= n_users <= n:
        raise MethodError(f"n_users={n_users} must lie in [0, N={n}]")
    m_u, m_i = (int(v) for v in per_side)
    if not 0 <= m_u <= n_users:
        raise MethodError(f"per_side user budget {m_u} must lie in [0, n_users={n_users}]")
    if not 0 <= m_i <= n - n_users:
        raise MethodError(f"per_side item budget {m_i} must lie in [0, n_items={n - n_users}]")
    if m_u + m_i != m:
        raise MethodError(f"per_side budgets {m_u} + {m_i} must sum to m={m}")
    return [(0, n_users, m_u), (n_users, n, m_i)]


def _selection_budget(scores: np.ndarray, m: int, n_users: int | None, per_side: tuple[int, int] | None
                      ) -> tuple[np.ndarray, int, list[tuple[int, int, int]]]:
    """The checked scores (float64), ``m`` and the :func:`_side_blocks` of a selection problem."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise MethodError(f"scores must be 1-D, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MethodError("scores must be finite")
    if isinstance(m, bool) or int(m) != m:
        raise MethodError(f"m must be an integer count of entities, got {m!r}")
    m = int(m)
    if not 0 <= m <= s.size:
        raise MethodError(f"m={m} retained entities is outside [0, N={s.size}]")
    return s, m, _side_blocks(s.size, n_users, per_side, m)


def lp_relaxation(scores: np.ndarray, m: int, n_users: int | None = None,
                  per_side: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Solve ``max Σ s_i x_i`` s.t. ``Σ x_i = m`` (or one budget per side), ``0 ≤ x ≤ 1`` (step 2).

    HiGHS through ``scipy.optimize.linprog`` with a sparse constraint matrix. Returns ``x``
    (float64, ``(N,)``) and the solver status (0 = optimal).
    """
    s, m, blocks = _selection_budget(scores, m, n_users, per_side)
    n = s.size
    if n == 0:
        return np.zeros(0), 0
    rows = np.concatenate([np.full(stop - start, k) for k, (start, stop, _) in enumerate(blocks)])
    a_eq = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(blocks), n))
    b_eq = np.array([budget for _, _, budget in blocks], dtype=np.float64)
    # HiGHS presolve takes ~35 s at N = 70k on this one-row LP; the simplex itself needs < 1 s
    res = linprog(-s, A_eq=a_eq, b_eq=b_eq, bounds=(0, 1), method="highs", options={"presolve": False})
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"the selection LP failed (status {res.status}): {res.message}")
    return np.clip(np.asarray(res.x, dtype=np.float64), 0.0, 1.0), int(res.status)


def select_entities(scores: np.ndarray, m: int, n_users: int | None = None,
                    per_side: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """The ``m`` retained entities: LP relaxation, keep ``x_i ≥ 0.5``, fix up to exactly ``m`` (step 2).

    The fix-up drops the lowest-scored retained or adds the highest-scored unselected entities
    (ties: the smaller id ranks higher), per side when ``per_side=(m_users, m_items)`` is given
    (users are the first ``n_users`` entries). With distinct scores the result is top-``m`` by
    score (one cardinality row is totally unimodular). Returns the sorted int64 ids and an info
    dict: ``lp_status``, ``n_fractional``, ``n_fixed_up``, ``m``, ``objective``.
    """
    s, m, blocks = _selection_budget(scores, m, n_users, per_side)
    n = s.size
    if m == 0 or m == n:
        kept = np.arange(n, dtype=np.int64) if m else np.zeros(0, dtype=np.int64)
        info = {"lp_status": "trivial", "n_fractional": 0, "n_fixed_up": 0, "m": m,
                "objective": float(s[kept].sum())}
        return kept, info
    x, status = lp_relaxation(s, m, n_users, per_side)
    chosen = x >= 0.5
    n_fractional = int(np.count_nonzero((x > _FRACTIONAL_TOL) & (x < 1 - _FRACTIONAL_TOL)))
    fixed = 0
    for start, stop, budget in blocks:
        block = np.arange(start, stop)
        order = block[_rank_order(s[start:stop])]
        have = int(chosen[start:stop].sum())
        if have > budget:
            drop = order[chosen[order]][::-1][: have - budget]
            chosen[drop] = False
            fixed += drop.size
        elif have < budget:
            add = order[~chosen[order]][: budget - have]
            chosen[add] = True
            fixed += add.size
    kept = np.flatnonzero(chosen).astype(np.int64)
    info = {"lp_status": status, "n_fractional": n_fractional, "n_fixed_up": fixed, "m": m,
            "objective": float(s[kept].sum())}
    return kept, info


def _row_argmax(indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Per CSR row, the column of the largest value; values within ``_TIE_TOL`` of the row's
    maximum tie and the smallest column wins; -1 for an empty row. ``O(nnz)``, no sort."""
    n_rows = indptr.size - 1
    out = np.full(n_rows, -1, dtype=np.int64)
    counts = np.diff(indptr)
    nonempty = counts > 0
    if not nonempty.any():
        return out
    starts = indptr[:-1][nonempty]
    row_of = np.repeat(np.arange(n_rows), counts)
    row_max = np.full(n_rows, -np.inf)
    row_max[nonempty] = np.maximum.reduceat(vals, starts)
    at_max = vals >= row_max[row_of] - _TIE_TOL
    key = np.where(at_max, cols, np.iinfo(np.int64).max)
    out[nonempty] = np.minimum.reduceat(key, starts)
    return out


def _best_substitutes(
    adj: sp.csr_matrix,
    pruned: np.ndarray,
    candidates: np.ndarray,
    hn_rows: np.ndarray,
    hn_cand: np.ndarray,
) -> np.ndarray:
    """For each row ``p`` in ``pruned`` of one side, the candidate with the highest ``cos(h_p, h_b)``
    among the candidates sharing a neighbour with ``p`` (ties: smaller id); -1 if there is none.

    ``adj`` is that side's ``(side x other side)`` incidence matrix, ``candidates`` the sorted
    retained ids of the side (never in ``pruned``, so ``b ≠ p``), ``hn_rows``/``hn_cand`` the unit
    rows (float64) of ``pruned`` and ``candidates``. Works on chunks of pruned rows whose 2-hop
    path count stays under ``_PATH_BUDGET`` and whose dense cosine block stays under
    ``_DENSE_CELLS``; only the nonzeros of the pattern ``adj[P] @ adj[candidates].T`` are candidates.
    Their cosines come from a dense block product when the chunk's pattern is dense enough,
    otherwise from row gathers (both float64; they differ by rounding only, far below ``_TIE_TOL``).
    """
    best = np.full(pruned.size, -1, dtype=np.int64)
    if pruned.size == 0 or candidates.size == 0:
        return best
    cand_t = adj[candidates].T.tocsr()  # (other side x candidates)
    # paths p - x - b with b a candidate: an upper bound on the row's nonzeros
    through = np.diff(cand_t.indptr).astype(np.float64)
    sub = adj[pruned]
    bounds = np.cumsum(np.asarray(sub @ through).reshape(-1))
    max_rows = max(1, _DENSE_CELLS // candidates.size)
    start = 0
    while start < pruned.size:
        base = bounds[start - 1] if start else 0.0
        stop = int(np.searchsorted(bounds, base + _PATH_BUDGET, side="right"))
        stop = min(max(start + 1, stop), start + max_rows, pruned.size)
        prod = (sub[start:stop] @ cand_t).tocsr()
        if prod.nnz:
            cols = prod.indices.astype(np.int64)
            rows = np.repeat(np.arange(stop - start), np.diff(prod.indptr))
            used = np.zeros(candidates.size, dtype=bool)
            used[cols] = True
            used_cols = np.flatnonzero(used)
            if prod.nnz * _DENSE_DENSITY >= (stop - start) * used_cols.size:
                # the block over the chunk's rows and the candidates it reaches, then its nonzeros
                slot = np.cumsum(used) - 1
                cos = (hn_rows[start:stop] @ hn_cand[used_cols].T)[rows, slot[cols]]
            else:
                cos = np.empty(rows.size)
                for g in range(0, rows.size, _GATHER_CHUNK):
                    r, c = rows[g:g + _GATHER_CHUNK], cols[g:g + _GATHER_CHUNK]
                    cos[g:g + _GATHER_CHUNK] = np.einsum("ij,ij->i", hn_rows[start + r], hn_cand[c])
            arg = _row_argmax(prod.indptr.astype(np.int64), cols, cos)
            found = arg >= 0
            best[start:stop][found] = candidates[arg[found]]
        start = stop
    return best


def rewire(
    pairs: np.ndarray,
    n_users: int,
    n_items: int,
    retained: np.ndarray,
    H: torch.Tensor,
    mode: str = "substitute",
) -> tuple[np.ndarray, dict]:
    """The rewired user-item edges on the retained entities (step 3, [I] for the rule).

    Every edge touching a pruned entity is deleted. ``substitute``: each deleted edge ``(a, p)``
    with ``a`` retained is re-routed to ``(a, b*)``, where ``b*`` is the retained entity of ``p``'s
    type exactly 2 hops from ``p`` in the original graph with the highest ``cos(h_p, h_b)`` (ties:
    smaller id); it is skipped if ``(a, b*)`` already exists (no fall-back to the next best) and
    dropped if ``p`` has no candidate. ``isolated_only`` re-routes only the deleted edges whose
    retained end ``a`` has degree 0 after the deletion; ``none`` only deletes. An added edge
    therefore joins two retained entities 3 hops apart, and ``|E_rw| ≤ |E_train|``.

    Returns the sorted distinct ``(user, item)`` rows (original ids, items not offset) and an
    info dict: ``edges_train``, ``edges_kept``, ``edges_deleted``, ``edges_dangling`` (deleted with
    one end retained), ``reroute_attempted``, ``edges_added``, ``reroute_skipped_existing`` (the
    substitute edge was already there, kept or added earlier), ``reroute_no_candidate``,
    ``edges_rewired`` and ``edge_ratio`` (``ρ_edge = |E_rw| / |E_train|``).
    """
    if mode not in REROUTE_MODES:
        raise MethodError(f"unknown reroute mode {mode!r}; choose from {list(REROUTE_MODES)}")
    n_users, n_items = int(n_users), int(n_items)
    n = n_users + n_items
    edges = _check_pairs(pairs, n_users, n_items)
    kept_ids = _check_ids(retained, n, "retained")
    if H.shape[0] != n:
        raise MethodError(f"H has {H.shape[0]} rows, expected N = n_users + n_items = {n}")
    alive = np.zeros(n, dtype=bool)
    alive[kept_ids] = True
    u, i = edges[:, 0], edges[:, 1]
    u_alive, i_alive = alive[u], alive[n_users + i]
    keep = u_alive & i_alive
    kept_edges = edges[keep]
    dangling = u_alive ^ i_alive
    info = {
        "mode": mode,
        "edges_train": int(edges.shape[0]),
        "edges_kept": int(keep.sum()),
        "edges_deleted": int((~keep).sum()),
        "edges_dangling": int(dangling.sum()),
        "reroute_attempted": 0,
        "edges_added": 0,
        "reroute_skipped_existing": 0,
        "reroute_no_candidate": 0,
    }
    added = np.zeros((0, 2), dtype=np.int64)
    if mode != "none" and dangling.any():
        du, di = u[dangling], i[dangling]
        user_pruned = ~u_alive[dangling]  # else the item is the pruned end
        if mode == "isolated_only":
            deg_u = np.bincount(kept_edges[:, 0], minlength=n_users)
            deg_i = np.bincount(kept_edges[:, 1], minlength=n_items)
            a_deg = np.where(user_pruned, deg_i[di], deg_u[du])
            attempt = a_deg == 0
            du, di, user_pruned = du[attempt], di[attempt], user_pruned[attempt]
        info["reroute_attempted"] = int(du.size)
        hn = _unit_rows(H)
        r = sp.csr_matrix((np.ones(u.size, dtype=np.float32), (u, i)), shape=(n_users, n_items))
        new_u, new_i = du.copy(), di.copy()
        ok = np.ones(du.size, dtype=bool)
        # pruned users: substitutes are retained users sharing an item; pruned items: the reverse
        for side_pruned, adj, offset, n_side in (
            (user_pruned, r, 0, n_users),
            (~user_pruned, r.T.tocsr(), n_users, n_items),
        ):
            if not side_pruned.any():
                continue
            p_ids = du[side_pruned] if offset == 0 else di[side_pruned]
            uniq, inv = np.unique(p_ids, return_inverse=True)
            cands = kept_ids[(kept_ids >= offset) & (kept_ids < offset + n_side)] - offset
            best = _best_substitutes(adj, uniq, cands, hn[offset + uniq], hn[offset + cands])
            b = best[inv]
            if offset == 0:
                new_u[side_pruned] = b
            else:
                new_i[side_pruned] = b
            ok[side_pruned] = b >= 0
        info["reroute_no_candidate"] = int((~ok).sum())
        cand_codes = new_u[ok] * n_items + new_i[ok]
        uniq_codes = np.unique(cand_codes)
        existing = np.isin(uniq_codes, kept_edges[:, 0] * n_items + kept_edges[:, 1])
        new_codes = uniq_codes[~existing]
        info["edges_added"] = int(new_codes.size)
        info["reroute_skipped_existing"] = int(cand_codes.size - new_codes.size)
        added = np.stack([new_codes // n_items, new_codes % n_items], axis=1)
    out = unique_pairs(np.concatenate([kept_edges, added]), max(n_items, 1)) if added.size else kept_edges
    info["edges_rewired"] = int(out.shape[0])
    info["edge_ratio"] = out.shape[0] / edges.shape[0] if edges.shape[0] else 1.0
    return out.astype(np.int64, copy=False), info


def rewired_graph(
    n_users: int,
    n_items: int,
    retained: np.ndarray,
    edges: np.ndarray,
    device: torch.device | str = "cpu",
) -> tuple[NormalizedGraph, np.ndarray, np.ndarray]:
    """``Â_rw``: the symmetric-normalised ``m x m`` bipartite adjacency of the rewired graph (step 3).

    Retained users are renumbered ``0..m_u-1`` and retained items ``0..m_i-1`` in increasing
    original id order; the graph is built on these compact ids with the rewired degrees. Returns
    ``(graph, user_ids, item_ids)``, the last two the original ids (items not offset) of the
    compact rows.
    """
    n_users, n_items = int(n_users), int(n_items)
    kept_ids = _check_ids(retained, n_users + n_items, "retained")
    user_ids = kept_ids[kept_ids < n_users]
    item_ids = kept_ids[kept_ids >= n_users] - n_users
    e = _check_pairs(edges, n_users, n_items)
    alive = np.zeros(n_users + n_items, dtype=bool)
    alive[kept_ids] = True
    if not np.all(alive[e[:, 0]] & alive[n_users + e[:, 1]]):
        raise MethodError("the rewired edges touch an entity that is not retained")
    cu = np.searchsorted(user_ids, e[:, 0])
    ci = np.searchsorted(item_ids, e[:, 1])
    graph = normalized_adjacency(user_ids.size, item_ids.size, cu, ci, device=device)
    return graph, user_ids, item_ids


def placeholder_codebook(H: torch.Tensor, pruned: np.ndarray, r: int, seed: int
                         ) -> tuple[torch.Tensor, np.ndarray]:
    """k-means placeholders for the pruned entities (step 4, [I] for clustering final ``H`` jointly).

    ``r' = min(r, #pruned)`` centroids (sklearn ``KMeans``, k-means++ init, ``n_init=1``,
    ``random_state=seed``) over the rows ``H[pruned]``, users and items together. Returns the
    centroid table (``r' x d`` float32, on ``H``'s device) and each pruned entity's centroid index
    (int64, in the order of ``pruned``, in ``[0, r')``). With fewer distinct rows than ``r'`` some
    centroids coincide; the table still has ``r'`` rows.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if isinstance(r, bool) or int(r) != r or r < 1:
        raise MethodError(f"the placeholder codebook size r must be a positive integer, got {r!r}")
    if H.ndim != 2:
        raise MethodError(f"H must be a 2-D (entities x dim) table, got shape {tuple(H.shape)}")
    n, d = H.shape
    ids = np.asarray(pruned, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise MethodError(f"pruned ids must lie in [0, {n})")
    if np.unique(ids).size != ids.size:
        raise MethodError("pruned ids must be distinct")
    if ids.size == 0:
        return torch.zeros(0, d, dtype=torch.float32, device=H.device), np.zeros(0, dtype=np.int64)
    k = min(int(r), ids.size)
    x = H.detach()[torch.from_numpy(ids).to(H.device)].to("cpu", torch.float32).numpy()
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed)
    with warnings.catch_warnings():
        # fewer distinct points than clusters: sklearn warns and returns duplicated centroids
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = km.fit_predict(x)
    centers = torch.from_numpy(np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)).to(H.device)
    return centers, labels.astype(np.int64)
