"""Compositional embeddings shared by LEGCF and LERG: a small codebook and a sparse assignment.

See docs/methods/legcf.md (LEGCF, SIGIR 2024) and docs/methods/lerg.md (LERG). Every entity's layer-0
embedding is composed from a codebook ``E_meta`` (c x d) through a sparse assignment ``S`` (N x c)
with exactly ``t`` stored entries per row: ``x_p = tanh(S_p E_meta)`` (LEGCF paper Eq. 1; the tanh
is in the authors' code, not the paper). ``S`` is never trained by gradient; LEGCF updates it in closed form
(:func:`assignment_update`, paper Eq. 10-16), LERG keeps it fixed.

* :func:`metis_partition` (:func:`metis_parts`: its labels) / :func:`metis_assignment`: the METIS
  initialisation (LEGCF paper §3.4), k-way or recursive bisection by cut quality, no part empty
  (anchor weight ``w*`` on the entity's part, ``t - 1`` distinct random other columns sharing ``1 - w*``);
  :func:`random_assignment`: the "random init" ablation.
* :class:`Assignment`: ``S`` as ``(N, t)`` column indices and values, with the sparse products.
* :func:`expanded_graph`: LEGCF's ``Â'`` over entities and meta nodes (paper Eq. 5).
* :class:`CompositionalLightGCN`: LightGCN whose layer-0 table is composed, on ``Â'`` (LEGCF) or on
  ``Â`` (LERG), optionally with an LSQ-quantised codebook (:mod:`methods.shared.quantization`).
* :func:`legcf_params`, :func:`legcf_index_bits`: the parameter counts (docs/methods/legcf.md,
  "Costs").
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.api import NormalizedGraph, sparse_matmul, unique_pairs
from methods.shared.quantization import MIN_STEP, fake_quantize, init_steps

EXPANDED_BASES = ("norm_adj", "raw_adj")
CODEBOOK_INITS = ("normal", "xavier")


class PartitionError(ValueError):
    """METIS could not produce ``c`` non-empty parts."""


# --- initialisation (LEGCF paper §3.4) ---------------------------------------------------------------


def _symmetric_csr(n_users: int, n_items: int, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(xadj, adjncy)`` of the user-item graph ``A`` (users, then items offset by ``n_users``)."""
    kept = unique_pairs(pairs, n_items)
    u, i = kept[:, 0], kept[:, 1] + n_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    order = np.lexsort((cols, rows))
    n = n_users + n_items
    xadj = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return xadj.astype(np.int64), cols[order].astype(np.int64)


PARTITION_MODES = ("auto", "kway", "recursive")
# the rule metis_partition follows; part of the cached stages' keys, so a change rebuilds them
PARTITION_RULE = "metis-auto-v2"


@dataclass(frozen=True)
class Partition:
    """A METIS partition of the user-item graph and how it was obtained.

    ``labels``: part in ``[0, c)`` of every entity (users, then items); ``method``: the METIS mode
    kept (``kway``, ``recursive``, or ``single`` for ``c = 1``); ``edges_inside``: share of the
    distinct train edges whose two endpoints lie in the same part (the complement of METIS's
    edge-cut objective, after the repair); ``empty_repaired``: parts METIS left empty that were
    filled by moving one entity each; ``candidates``: per mode tried, its empty parts, edges inside
    and seconds, before any repair.
    """

    labels: np.ndarray
    method: str
    edges_inside: float
    empty_repaired: int
    candidates: dict[str, dict[str, float]]

    def info(self) -> dict[str, Any]:
        """The flat ``partition_*`` entries a method reports (JSON-able)."""
        sizes = np.bincount(self.labels)
        return {"partition_method": self.method, "partition_edges_inside": self.edges_inside,
                "partition_empty_repaired": self.empty_repaired,
                "part_size_min": int(sizes.min()), "part_size_max": int(sizes.max()),
                "partition_candidates": self.candidates}


def _inside_count(labels: np.ndarray, xadj: np.ndarray, adjncy: np.ndarray) -> int:
    """Edges of the symmetric CSR graph whose endpoints share a label (each edge counted once)."""
    rows = np.repeat(np.arange(len(xadj) - 1), np.diff(xadj))
    return int(np.count_nonzero(labels[rows] == labels[adjncy])) // 2


def _fill_empty_parts(labels: np.ndarray, c: int, xadj: np.ndarray, adjncy: np.ndarray) -> int:
    """Give every empty part one entity, in place; return how many parts were empty.

    Each empty part, in increasing order, takes from the currently largest part (lowest label on
    ties; it has >= 2 entities since ``c <= N``) the entity with the fewest neighbours inside that
    part (highest id on ties), so the repair cuts as few edges as possible. Deterministic.
    """
    sizes = np.bincount(labels, minlength=c)
    empty = np.flatnonzero(sizes == 0)
    for part in empty:
        donor = int(np.argmax(sizes))
        members = np.flatnonzero(labels == donor)
        inside = np.array([np.count_nonzero(labels[adjncy[xadj[v]:xadj[v + 1]]] == donor) for v in members])
        node = int(members[np.flatnonzero(inside == inside.min())[-1]])
        labels[node] = part
        sizes[donor] -= 1
        sizes[part] += 1
    return len(empty)


def metis_partition(n_users: int, n_items: int, pairs: np.ndarray, c: int, seed: int,
                    mode: str = "auto") -> Partition:
    """METIS on ``A``'s pattern into ``c`` non-empty parts (LEGCF's initialisation, step 1).

    Unweighted, users and items as nodes of one graph, isolated nodes included, METIS's seed fixed.
    ``mode="auto"`` runs both METIS k-way (the authors' call) and recursive bisection and keeps the
    one with the fewest empty parts, then the most train edges inside parts (k-way on ties). Neither
    wins everywhere, so the cut is measured rather than the mode fixed by ``c``: share of the train
    edges inside parts, k-way / recursive (empty k-way parts), pymetis 2025.2, seed 0:

    ====== ====================== ========================== =====================
    c      citeulike (22,531 N)   yelp-lightgnn (69,534 N)   gowalla (70,839 N)
    ====== ====================== ========================== =====================
    98     .446 / .421            .537 / .528                .433 / .440
    500    .283 / .261            .440 / .433                .269 / .257
    774    .128 (2) / .228        .422 / .416                .237 / .220
    1901   .083 (22) / .169       .378 / .386                .181 / .166
    2390   .074 (71) / .153       .274 / .377                .151 / .154
    5866   .070 (1807) / .089     .314 (26) / .336           .067 (4) / .117
    ====== ====================== ========================== =====================

    Recursive bisection left no part empty there and ran 2-11x faster than k-way (0.2-3.3 s
    against 0.5-20 s on a shared CPU), so ``auto`` costs about 1.1-1.8x k-way alone.
    Parts a mode still leaves empty are filled by :func:`_fill_empty_parts`.
    """
    import pymetis

    if mode not in PARTITION_MODES:
        raise ValueError(f"partition mode must be one of {PARTITION_MODES}, got {mode!r}")
    n = n_users + n_items
    if not 1 <= c <= n:
        raise PartitionError(f"cannot split {n} entities into {c} non-empty parts")
    xadj, adjncy = _symmetric_csr(n_users, n_items, pairs)
    n_edges = len(adjncy) // 2
    if c == 1:
        labels = np.zeros(n, dtype=np.int64)
        return Partition(labels, "single", 1.0 if n_edges else 0.0, 0, {})
    modes = ("kway", "recursive") if mode == "auto" else (mode,)
    graph = pymetis.CSRAdjacency(xadj, adjncy)
    results: dict[str, tuple[np.ndarray, int, int]] = {}
    candidates: dict[str, dict[str, float]] = {}
    for m in modes:
        t0 = time.perf_counter()
        _, raw = pymetis.part_graph(c, adjacency=graph, recursive=m == "recursive",
                                    options=pymetis.Options(seed=int(seed) % (2**31 - 1)))
        seconds = time.perf_counter() - t0
        labels = np.asarray(raw, dtype=np.int64)
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= c)):
            raise PartitionError(f"METIS ({m}) returned labels outside [0, {c}) or of the wrong length")
        empty = int(np.count_nonzero(np.bincount(labels, minlength=c) == 0))
        inside = _inside_count(labels, xadj, adjncy)
        results[m] = (labels, empty, inside)
        candidates[m] = {"empty_parts": empty, "edges_inside": inside / n_edges if n_edges else 0.0,
                         "seconds": seconds}
    best = min(modes, key=lambda m: (results[m][1], -results[m][2], modes.index(m)))
    labels = results[best][0]
    repaired = _fill_empty_parts(labels, c, xadj, adjncy)
    inside = _inside_count(labels, xadj, adjncy) if repaired else results[best][2]
    return Partition(labels, best, inside / n_edges if n_edges else 0.0, repaired, candidates)


def metis_parts(n_users: int, n_items: int, pairs: np.ndarray, c: int, seed: int) -> np.ndarray:
    """Part label in ``[0, c)`` of every entity, all ``c`` parts non-empty: the labels of
    :func:`metis_partition` (``mode="auto"``)."""
    return metis_partition(n_users, n_items, pairs, c, seed).labels


def _other_columns(anchor: np.ndarray, c: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct columns per row, uniformly among the ``c - 1`` columns other than ``anchor``."""
    n = len(anchor)
    out = np.empty((n, k), dtype=np.int64)
    for j in range(k):
        col = rng.integers(0, c - 1, n)
        col = col + (col >= anchor)  # skip the anchor
        while True:
            bad = np.zeros(n, dtype=bool)
            for prev in range(j):
                bad |= col == out[:, prev]
            if not bad.any():
                break
            redraw = rng.integers(0, c - 1, int(bad.sum()))
            col[bad] = redraw + (redraw >= anchor[bad])
        out[:, j] = col
    return out


def metis_assignment(parts: np.ndarray, c: int, t: int, w_star: float, rng: np.random.Generator
                     ) -> Assignment:
    """``S`` of LEGCF's initialisation, step 2: ``S[p, part(p)] = w*`` (column 0), ``t - 1``
    distinct other columns with ``(1 - w*)/(t - 1)`` each; every row sums to 1 (``t = 1``: the
    anchor alone, weight 1)."""
    _check_t(t, c)
    if not 0 < w_star <= 1 or (t > 1 and w_star >= 1):
        raise ValueError(f"w_star must lie in (0, 1) (or be 1 with t = 1) so that every stored entry is "
                         f"positive, got {w_star} with t={t}")
    parts = np.asarray(parts, dtype=np.int64)
    n = len(parts)
    index = np.empty((n, t), dtype=np.int64)
    value = np.empty((n, t), dtype=np.float32)
    index[:, 0] = parts
    value[:, 0] = w_star if t > 1 else 1.0
    if t > 1:
        index[:, 1:] = _other_columns(parts, c, t - 1, rng)
        value[:, 1:] = (1.0 - w_star) / (t - 1)
    return Assignment(torch.from_numpy(index), torch.from_numpy(value), c)


def random_assignment(n: int, c: int, t: int, rng: np.random.Generator, w_first: float = 0.9
                      ) -> Assignment:
    """The "random init" ablation (LEGCF paper Table 3): ``t`` distinct random columns per row with weights
    ``0.9`` and ``0.1/(t - 1)`` (the code's values)."""
    _check_t(t, c)
    first = rng.integers(0, c, n)
    return metis_assignment(first, c, t, w_first, rng)


def _check_t(t: int, c: int) -> None:
    if t < 1 or t > c:
        raise ValueError(f"need 1 <= t <= c for t distinct columns per row, got t={t}, c={c}")


# --- the assignment and its products -------------------------------------------------------------------


def _csr_product(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mat @ x`` for a sparse CSR ``mat`` into a fresh tensor.

    ``addmm`` with ``beta = 0`` writes every output row (empty rows get 0) without reading the
    uninitialised output; ``torch.sparse.mm`` runs the same kernel but zero-fills a result, computes
    into a temporary and copies it over. Same values, bit for bit.
    """
    out = x.new_empty(mat.shape[0], x.shape[1])
    return torch.addmm(out, mat, x, beta=0, out=out)


class _ConstSpMM(torch.autograd.Function):
    """``y = M x`` for a constant sparse ``M`` (CSR) with its transpose precomputed for ``∂x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mat: torch.Tensor, mat_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.mat_t = mat_t
        return _csr_product(mat, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _csr_product(ctx.mat_t, grad.contiguous()), None, None


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
                ) -> torch.Tensor:
    """A sparse CSR tensor, with int32 indices when they fit (the CPU kernel converts int64 indices
    to int32 on every product otherwise: two index-sized copies per call)."""
    if max(*shape, vals.numel()) < 2**31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
        return torch.sparse_csr_tensor(crow, col, vals, shape)


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
        mat = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce().to_sparse_csr()
    return _csr_tensor(mat.crow_indices(), mat.col_indices(), mat.values(), shape)


@dataclass
class Assignment:
    """``S`` (N x c) with exactly ``t`` stored entries per row: ``index[p, k]``, ``value[p, k]``."""

    index: torch.Tensor  # int64 (N, t), distinct per row
    value: torch.Tensor  # float32 (N, t)
    n_meta: int
    _mats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.index.shape != self.value.shape or self.index.dim() != 2:
            raise ValueError(f"index {tuple(self.index.shape)} and value {tuple(self.value.shape)} "
                             "must both be (N, t)")

    @classmethod
    def of_state(cls, state: dict[str, torch.Tensor]) -> Assignment:
        """The ``S`` held in a :class:`CompositionalLightGCN` state dict."""
        return cls(state["assign_index"], state["assign_value"], int(state["meta"].shape[0]))

    @property
    def n(self) -> int:
        return int(self.index.shape[0])

    @property
    def t(self) -> int:
        return int(self.index.shape[1])

    def coo(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, values)`` in row-major order."""
        rows = torch.arange(self.n, device=self.index.device).repeat_interleave(self.t)
        return rows, self.index.reshape(-1), self.value.reshape(-1)

    def subset(self, rows: torch.Tensor) -> Assignment:
        """The rows ``rows`` of ``S`` (e.g. LERG's retained entities)."""
        return Assignment(self.index[rows], self.value[rows], self.n_meta)

    def to(self, device: torch.device | str) -> Assignment:
        return Assignment(self.index.to(device), self.value.to(device), self.n_meta)

    def matmul(self, table: torch.Tensor) -> torch.Tensor:
        """``S @ table`` (N x d), gradient to ``table`` only; traced as ``recshrink::spmm``
        (``t·N·d`` multiply-adds)."""
        if torch.jit.is_tracing():
            return sparse_matmul(*self.coo(), table, self.n)
        return _ConstSpMM.apply(table, *self.matrices())

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, Sᵀ)`` as CSR tensors, built once."""
        if "s" not in self._mats:
            rows, cols, vals = self.coo()
            self._mats["s"] = _csr(rows, cols, vals, (self.n, self.n_meta))
            self._mats["st"] = _csr(cols, rows, vals, (self.n_meta, self.n))
        return self._mats["s"], self._mats["st"]

    def columns_used(self) -> int:
        return int(torch.unique(self.index).numel())


@torch.no_grad()
def refit_values(h_rows: torch.Tensor, h_meta: torch.Tensor, index: torch.Tensor,
                 ridge: float = 1e-8) -> torch.Tensor:
    """Per row, the least-squares values on the kept columns: ``argmin_x ||x H_meta[J] - h||^2``.

    ``J = index[p]`` (t columns); solved by the t x t normal equations ``(A Aᵀ + ridge·I) x = A h``
    with ``A = H_meta[J]`` (``ridge`` only guards a singular ``A Aᵀ``, e.g. two equal meta rows).
    This is not the authors' update: it replaces the kept values of the minimum-norm solution,
    which for ``c > d`` carry only about ``d/c`` of each row's mass, by the best values on the same
    support, so ``S̃ H_meta`` approximates ``H_full`` as closely as ``t`` columns allow.
    """
    a = h_meta[index]  # (rows, t, d)
    gram = a @ a.transpose(1, 2)
    gram = gram + ridge * torch.eye(index.shape[1], dtype=gram.dtype, device=gram.device)
    rhs = (a @ h_rows.unsqueeze(2)).squeeze(2)
    return torch.linalg.solve(gram, rhs)


@torch.no_grad()
def assignment_update(h_full: torch.Tensor, h_meta: torch.Tensor, t: int, chunk: int = 4096,
                      eps: float = 1e-6, refit: bool = False) -> tuple[Assignment, int]:
    """LEGCF's closed-form update (docs/methods/legcf.md, paper Eq. 10-15):
    ``S̃ = H_full · pinv(H_meta)``, then per row the ``t`` largest **signed** values with their
    values (topk), everything else 0.

    Rows are batched (``chunk`` rows at a time: memory ``O(chunk·c + c·d)``), which gives the
    unbatched result. No renormalisation or softmax (the code has none); a kept value below ``eps``
    is clamped to ``eps`` so every row keeps ``t`` positive entries (our choice; the code
    would fail its ``Â' ∈ [0, 1]`` assertion instead). Returns the new ``S`` and the clamp count.

    With ``c > d`` the update shrinks ``S``: ``H_meta`` has rank ``d``, so the minimum-norm row of
    ``S̃`` is the projection of a row that reproduces ``H_full`` onto a ``d``-dimensional subspace
    of ``R^c``, which spreads its mass over about all ``c`` columns, and the ``t`` kept entries hold
    about ``d/c`` of it. Repeated every epoch, the factor compounds (the codebook can only partly
    grow back in between). ``refit = True`` (not the authors') replaces the kept values by the
    least-squares values on the same columns (:func:`refit_values`) before the clamp.
    """
    c = h_meta.shape[0]
    _check_t(t, c)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    pinv = torch.linalg.pinv(h_meta)  # d x c: minimum-norm least squares for c > d
    idx, val = [], []
    for start in range(0, h_full.shape[0], chunk):
        rows = h_full[start : start + chunk]
        top = torch.topk(rows @ pinv, t, dim=1)
        idx.append(top.indices)
        val.append(refit_values(rows, h_meta, top.indices) if refit else top.values)
    index = torch.cat(idx) if idx else torch.zeros(0, t, dtype=torch.int64)
    value = torch.cat(val) if val else torch.zeros(0, t)
    clamped = int((value < eps).sum())
    return Assignment(index, value.clamp_min(eps).to(torch.float32), c), clamped


# --- the expanded graph (LEGCF paper Eq. 5) -----------------------------------------------------------


def expanded_graph(base: NormalizedGraph, assignment: Assignment, raw: bool = False) -> NormalizedGraph:
    """``Â' = D'^-1/2 A' D'^-1/2`` with ``A' = [[Â, S], [Sᵀ, 0]]`` over N entities + c meta nodes.

    The code puts the **already normalised** ``Â`` in the top-left block and normalises again with
    the new row sums (``raw = False``, the default, the authors' code); ``raw = True`` uses the binary ``A``
    (the paper's Eq. 5). A zero row sum gives 0. The meta nodes are numbered after the items, so the
    result is a :class:`NormalizedGraph` with ``n_items + c`` "items" (its ``n_edges`` is not a
    user-item edge count). All values lie in [0, 1].
    """
    n, c = base.n_nodes, assignment.n_meta
    if assignment.n != n:
        raise ValueError(f"assignment has {assignment.n} rows for a graph of {n} entities")
    device = base.values.device
    s_rows, s_cols, s_vals = (x.to(device) for x in assignment.coo())
    top = torch.ones_like(base.values) if raw else base.values
    rows = torch.cat([base.rows, s_rows, s_cols + n])
    cols = torch.cat([base.cols, s_cols + n, s_rows])
    vals = torch.cat([top, s_vals, s_vals]).to(torch.float64)
    deg = torch.zeros(n + c, dtype=torch.float64, device=device).index_add_(0, rows, vals)
    inv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    vals = (vals * inv[rows] * inv[cols]).to(torch.float32)
    order = torch.argsort(rows * (n + c) + cols)
    return NormalizedGraph(base.n_users, base.n_items + c, rows[order], cols[order], vals[order],
                           base.backend)


# --- the readout at a batch's rows -------------------------------------------------------------------


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The concatenation of ``arange(starts[k], starts[k] + counts[k])`` over ``k``."""
    ends = counts.cumsum(0)
    return torch.arange(int(ends[-1]) if ends.numel() else 0, device=starts.device) + torch.repeat_interleave(
        starts - (ends - counts), counts)


class GraphRows:
    """Row and column blocks of a propagation graph ``Â`` whose stored pattern is symmetric.

    ``Â``'s entries are stored sorted by (row, col) (:class:`NormalizedGraph`); ``crow`` gives each
    row's range and ``transposed`` lists the entry positions sorted by (col, row), so with a
    symmetric pattern column ``j``'s entries sit at ``transposed[crow[j]:crow[j + 1]]``. Built
    once per graph (an argsort of its entries); :meth:`blocks` is then linear in the batch's entries.
    """

    def __init__(self, graph: NormalizedGraph) -> None:
        n = graph.n_nodes
        self.graph = graph
        counts = torch.bincount(graph.rows, minlength=n)
        self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.transposed = torch.argsort(graph.cols * n + graph.rows)

    @classmethod
    def of(cls, graph: NormalizedGraph) -> GraphRows | None:
        """The index of ``graph``, or None when its entries are not sorted, distinct and symmetric in
        pattern (then only the per-layer products apply)."""
        n = graph.n_nodes
        keys = graph.rows * n + graph.cols
        if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            return None
        index = cls(graph)
        t = index.transposed
        if not (torch.equal(graph.rows[t], graph.cols) and torch.equal(graph.cols[t], graph.rows)):
            return None
        return index

    def blocks(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Â[rows, :], Â[:, rows])`` as CSR tensors for sorted distinct ``rows``.

        Both keep ``Â``'s stored values in ``Â``'s per-row entry order: row ``k`` of the first holds
        row ``rows[k]``'s entries, row ``r`` of the second the entries ``(r, j)``, ``j`` in ``rows``,
        by increasing ``j``. A CSR product sums a row's entries in that order, so
        ``Â[rows, :] @ x`` equals ``(Â @ x)[rows]`` and ``Â[:, rows] @ g`` equals ``Â @ G`` for
        ``G`` zero outside ``rows`` and ``g`` on them (the skipped terms are exact zeros).
        """
        g, n, m = self.graph, self.graph.n_nodes, rows.numel()
        starts = self.crow[rows]
        counts = self.crow[rows + 1] - starts
        pos = _ranges(starts, counts)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        by_rows = _csr_tensor(crow, g.cols[pos], g.values[pos], (m, n))
        # the entries (r, j) of the columns j in rows, in (r, j) order: positions sort that way
        pos_t = self.transposed[pos].sort().values
        crow_t = torch.cat([counts.new_zeros(1), torch.bincount(g.rows[pos_t], minlength=n).cumsum(0)])
        by_cols = _csr_tensor(crow_t, torch.searchsorted(rows, g.cols[pos_t]), g.values[pos_t], (n, m))
        return by_rows, by_cols


class _ExpandedLayer0(torch.autograd.Function):
    """LEGCF's layer 0 over entities and meta nodes, ``[tanh(S E_meta); E_meta]`` (paper Eq. 1 and 5),
    written into one ``(N + c, d)`` tensor: ``torch.cat`` of the two parts would write and read the
    ``N x d`` rows once more on every step. The values and gradients are those of
    ``cat([tanh(S E), E'])`` (the ``tanh`` backward is aten's ``tanh_backward``, as autograd's);
    ``table`` (E) and ``meta`` (E') are separate inputs, as :meth:`CompositionalLightGCN.codebook`
    is called once per use."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, meta: torch.Tensor, mat: torch.Tensor,  # type: ignore[override]
                mat_t: torch.Tensor, tanh: bool) -> torch.Tensor:
        n = mat.shape[0]
        out = table.new_empty(n + meta.shape[0], table.shape[1])
        ent = out[:n]
        torch.addmm(ent, mat, table, beta=0, out=ent)
        if tanh:
            torch.tanh(ent, out=ent)
        out[n:].copy_(meta)
        ctx.mat_t, ctx.n, ctx.tanh = mat_t, n, tanh
        if tanh:
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        n = ctx.n
        g = grad[:n]
        if ctx.tanh:
            (out,) = ctx.saved_tensors
            g = torch.ops.aten.tanh_backward(g, out[:n])
        return _csr_product(ctx.mat_t, g.contiguous()), grad[n:], None, None, None


class _ReadoutAt(torch.autograd.Function):
    """Rows ``rows`` of LightGCN's mean readout ``H = (Σ_{l=0..L} Â^l X) / (L + 1)`` (LightGCN
    Eq. 7-8) and of ``X`` itself, with the values and gradients of the per-layer formulation
    (``x_{l+1} = Â x_l``, ``acc = x_0 + x_1 + ... + x_L``, ``acc / (L + 1)``) bit for bit.

    A training step reads ``H`` at the batch's rows only, so the last layer is needed there only:
    layers ``1 .. L-1`` are full products, layer ``L`` is ``Â[rows, :] @ x_{L-1}``, and its
    backward ``Â[:, rows] @ g``; autograd's per-layer graph runs both as full products and writes
    ``(N, d)`` tensors for the sums, the division and the gathers' backward. Each gradient is
    summed in the order autograd summed it there: ``Â g_{l+1} + g_acc`` per layer, then the
    penalty's gradient on ``X``'s rows (``penalty_first``: ``(g_pen + g_acc) + Â g_1``, where
    ``X`` is the composed table itself; otherwise ``(Â g_1 + g_acc) + g_pen``, where ``X``
    concatenates it with the codebook).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: GraphRows, n_layers: int, rows: torch.Tensor,  # type: ignore[override]
                penalty_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        graph = index.graph
        by_rows, by_cols = index.blocks(rows) if n_layers else (None, None)
        ctx.graph, ctx.by_cols, ctx.n_layers, ctx.penalty_first = graph, by_cols, n_layers, penalty_first
        ctx.n_nodes = x.shape[0]
        ctx.save_for_backward(rows)
        x_rows = x.index_select(0, rows)
        acc, cur = x_rows, x
        for _ in range(n_layers - 1):
            cur = graph.product(cur)
            acc = acc + cur.index_select(0, rows)
        if n_layers:
            acc = acc + _csr_product(by_rows, cur)
        return acc / (n_layers + 1), x_rows

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor, grad_x_rows: torch.Tensor):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        g_acc = grad_h / (ctx.n_layers + 1)
        if ctx.n_layers:
            g = _csr_product(ctx.by_cols, g_acc)
            for _ in range(ctx.n_layers - 1):
                g = ctx.graph.product(g.index_add_(0, rows, g_acc))
        else:
            g = g_acc.new_zeros(ctx.n_nodes, g_acc.shape[1])
        if grad_x_rows is None:
            g.index_add_(0, rows, g_acc)
        elif ctx.penalty_first:
            g.index_add_(0, rows, grad_x_rows + g_acc)
        else:
            g.index_add_(0, rows, g_acc).index_add_(0, rows, grad_x_rows)
        return g, None, None, None, None


# --- the model --------------------------------------------------------------------------------------


class CompositionalLightGCN(nn.Module):
    """LightGCN over a composed layer-0 table (docs/methods/legcf.md, docs/methods/lerg.md).

    ``expanded = True`` (LEGCF): layer 0 is ``[tanh(S E_meta); E_meta]`` on ``Â'`` (entities and
    meta nodes), mean readout over ``L + 1`` layers, scores from the entity rows. ``expanded =
    False`` (LERG): ``tanh(S Ê_meta)`` on ``Â`` only. ``bits``: the codebook is LSQ-quantised with
    one step per row (LSQ, docs/methods/lerg.md). ``S`` lives in buffers (``assign_index``,
    ``assign_value``), so a state dict carries it and loading one rebuilds ``Â'``.
    """

    def __init__(self, graph: NormalizedGraph, assignment: Assignment, dim: int, n_layers: int, *,
                 expanded: bool = True, raw_base: bool = False, tanh: bool = True, bits: int | None = None,
                 init: str = "normal") -> None:
        super().__init__()
        if init not in CODEBOOK_INITS:
            raise ValueError(f"unknown codebook init {init!r}; choose from {CODEBOOK_INITS}")
        self.graph = graph
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.dim, self.n_layers = dim, n_layers
        self.expanded, self.raw_base, self.tanh, self.bits = expanded, raw_base, tanh, bits
        self.meta = nn.Parameter(torch.empty(assignment.n_meta, dim))
        if init == "normal":  # the code's N(0, 1) (the paper says Xavier)
            nn.init.normal_(self.meta)
        else:
            nn.init.xavier_uniform_(self.meta)
        self.step = nn.Parameter(init_steps(self.meta, bits)) if bits else None
        self.register_buffer("assign_index", assignment.index.clone())
        self.register_buffer("assign_value", assignment.value.clone())
        self._rebuild()

    @property
    def n_meta(self) -> int:
        return int(self.meta.shape[0])

    def assignment(self) -> Assignment:
        return self._assignment

    def set_assignment(self, assignment: Assignment) -> None:
        """Install a new ``S`` and rebuild ``Â'`` (after every update, as LEGCF's Algorithm 1)."""
        with torch.no_grad():
            self.assign_index = assignment.index.to(self.assign_index.device).clone()
            self.assign_value = assignment.value.to(self.assign_value.device).clone()
        self._rebuild()

    def _rebuild(self) -> None:
        self._assignment = Assignment(self.assign_index, self.assign_value, self.n_meta)
        self.propagation_graph = (expanded_graph(self.graph, self._assignment, self.raw_base)
                                  if self.expanded else self.graph)
        self._graph_rows: GraphRows | bool | None = False  # built on the first training step

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # type: ignore[override]
        out = super().load_state_dict(state, strict=strict, assign=assign)
        self._rebuild()
        return out

    def clamp_step_(self) -> None:
        """Keep every step positive (clamp at 1e-8 after each optimiser step)."""
        if self.step is not None:
            with torch.no_grad():
                self.step.clamp_(min=MIN_STEP)

    def codebook(self) -> torch.Tensor:
        """``E_meta``, or ``Ê_meta = q · Δ`` when quantised."""
        return fake_quantize(self.meta, self.step, self.bits) if self.bits else self.meta

    def layer0_entities(self) -> torch.Tensor:
        """``tanh(S E_meta)`` (N x d)."""
        x = self._assignment.matmul(self.codebook())
        return torch.tanh(x) if self.tanh else x

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(layer-0 entity rows, H_full, H_meta)``; ``H_meta`` is None without meta nodes."""
        x_ent = self.layer0_entities()
        x = torch.cat([x_ent, self.codebook()], dim=0) if self.expanded else x_ent
        acc = x
        for _ in range(self.n_layers):
            x = self.propagation_graph.matmul(x)
            acc = acc + x
        h = acc / (self.n_layers + 1)
        n = self.n_users + self.n_items
        return x_ent, h[:n], (h[n:] if self.expanded else None)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, _ = self.forward_all()
        return h[: self.n_users], h[self.n_users :]

    def graph_rows(self) -> GraphRows | None:
        """The row index of the propagation graph (:class:`GraphRows`; None if it does not apply).

        CPU only: the row-order argument of :meth:`GraphRows.blocks` is checked for the CPU kernel;
        on a GPU, cuSPARSE may pick a different algorithm for a block than for the whole graph.
        """
        if self._graph_rows is False:
            graph = self.propagation_graph
            self._graph_rows = GraphRows.of(graph) if graph.values.device.type == "cpu" else None
        return self._graph_rows  # type: ignore[return-value]

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float,
                 reg_form: str = "squared") -> tuple[torch.Tensor, torch.Tensor]:
        """BPR (mean softplus of the score difference) and ``λ (‖x_u‖² + ‖x_i+‖² + ‖x_i-‖²)/B`` on the
        batch's layer-0 composed rows (LEGCF paper Eq. 4 in the code's form, so ``reg_form`` is not used).

        The readout is taken at the batch's distinct rows only (:class:`_ReadoutAt`, the same values
        and gradients as :meth:`bpr_loss_layers`); under tracing (FLOP counting) or on a graph
        :class:`GraphRows` cannot index, :meth:`bpr_loss_layers` runs.
        """
        index = None if torch.jit.is_tracing() else self.graph_rows()
        if index is None:
            return self.bpr_loss_layers(users, pos, neg, reg)
        idx = torch.cat([users, pos + self.n_users, neg + self.n_users])
        rows, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        if self.expanded:
            s, s_t = self._assignment.matrices()
            x = _ExpandedLayer0.apply(self.codebook(), self.codebook(), s, s_t, self.tanh)
        else:
            x = self.layer0_entities()
        h_rows, x0_rows = _ReadoutAt.apply(x, index, self.n_layers, rows, not self.expanded)
        u, p, q = h_rows.index_select(0, inverse).split(users.numel())
        bpr = F.softplus((u * q).sum(1) - (u * p).sum(1)).mean()
        penalty = reg * x0_rows.pow(2).sum(1).index_select(0, inverse).sum() / users.numel()
        return bpr, penalty

    def bpr_loss_layers(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`bpr_loss` through :meth:`forward_all`'s per-layer products (autograd's graph)."""
        x0, h, _ = self.forward_all()
        # one index_select per table (a gather of whole rows; advanced indexing is several times
        # slower on CPU, and its backward would zero-fill one full table per index)
        idx = torch.cat([users, pos + self.n_users, neg + self.n_users])
        u, p, q = h.index_select(0, idx).split(users.numel())
        bpr = F.softplus((u * q).sum(1) - (u * p).sum(1)).mean()
        # Σ over the batch's rows of ‖x0_row‖²: squared row norms once per entity, then gathered (a
        # row repeats n_neg times in LEGCF's batches; same value, a third of the work)
        penalty = reg * x0.pow(2).sum(1).index_select(0, idx).sum() / users.numel()
        return bpr, penalty


# --- sizes (docs/methods/legcf.md, "Costs") ----------------------------------------------------------


def index_bits(c: int) -> int:
    """Bits of one column index into ``c`` columns: ``ceil(log2 c)`` (at least 1)."""
    return max(1, math.ceil(math.log2(c))) if c > 1 else 1


def legcf_params(c: int, t: int, n: int, d: int) -> int:
    """The paper's #Param (Table 2): ``c·d + t·N`` (codebook plus S's values; indices not counted)."""
    return c * d + t * n


def legcf_honest_params(c: int, t: int, n: int, d: int) -> float:
    """#Param plus S's column indices as fp32 equivalents: ``c·d + t·N + t·N·ceil(log2 c)/32``."""
    return legcf_params(c, t, n, d) + t * n * index_bits(c) / 32
