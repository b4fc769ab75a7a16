"""Graphs whose stored entries carry learnable weights, and the weighted LightGCN that uses them.

See docs/methods/lightgnn.md (the LightGNN authors' code, followed over the paper):

* :func:`self_loop_graph`: ``Â = D^-1/2 (A + I) D^-1/2`` with ``D_xx = deg_x + 1``; its stored
  entries are the ``2|E|`` directed user-item entries plus ``N`` self-loops.
* :func:`closure_graph`: ``Ĉ = D_C^-1/2 C D_C^-1/2`` with ``C = I + A + ... + A^h`` keeping path
  counts and ``D_C`` the weighted row sums. With ``h = 2`` the user-item block of ``C`` is
  ``R`` itself: the "augmentation" adds only user-user and item-item co-interaction entries.
* :func:`plain_graph`: the harness's LightGCN ``Â`` (no self-loops) as an :class:`EntryGraph`.
* :class:`WeightedLightGCN` (paper Eq. 4 in the code's form): every stored entry ``e`` propagates with value
  ``Â_e w_e m_e`` (``w`` learnable, ``m`` a binary mask), the layer-0 table is ``M ⊙ E⁰``, the
  degrees are never recomputed, and the readout is the sum (code) or mean of layers ``0..L``.

The product ``(Â ⊙ w ⊙ m) X`` (:func:`weighted_matmul`) runs on a CSR view of the fixed index
arrays with the current values (no sorting or coalescing per step); its backward uses the
precomputed transposed order for ``∂X`` and a sampled dense-dense product (SDDMM) for ``∂values``,
so memory stays at a few ``n x d`` tables plus one value per entry even on the 5.6 M-entry closure
graph. Under ``torch.jit.trace`` it is the
counted operator ``recshrink::spmm`` (``nnz x d`` multiply-adds).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from bench.api import DeviceCheck, GraphSize, layer_sum, normalized_adjacency, sparse_matmul, unique_pairs

GRAPH_KINDS = ("self_loops", "plain", "closure")
READOUTS = ("sum", "mean")


@dataclass
class EntryGraph(GraphSize):
    """A fixed sparse ``N x N`` pattern (users first, then items) with normalised base values.

    ``rows``/``cols`` are sorted row-major (the canonical entry order: every per-entry
    vector is indexed in this order). ``kind`` says how it was built.
    """

    n_users: int
    n_items: int
    rows: torch.Tensor  # int64 (nnz,)
    cols: torch.Tensor  # int64 (nnz,)
    values: torch.Tensor  # float32 (nnz,)
    kind: str = "self_loops"
    _csr: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def user_item_entries(self) -> torch.Tensor:
        """Boolean (nnz,): the entry links a user and an item (either direction)."""
        return (self.rows < self.n_users) != (self.cols < self.n_users)

    @property
    def n_edges(self) -> float:
        """Directed user-item entries / 2: the undirected edges of a symmetric graph (harness)."""
        return float(self.user_item_entries().sum().item()) / 2

    def codes(self) -> torch.Tensor:
        """``row * N + col`` per entry, ascending (the canonical order)."""
        return self.rows * self.n_nodes + self.cols

    def positions(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Index of each entry ``(rows[k], cols[k])`` in this graph's order (-1 if not stored)."""
        codes = self.codes()
        want = rows.to(codes.device) * self.n_nodes + cols.to(codes.device)
        pos = torch.searchsorted(codes, want).clamp(max=max(self.nnz - 1, 0))
        found = codes[pos] == want if self.nnz else torch.zeros_like(want, dtype=torch.bool)
        return torch.where(found, pos, torch.full_like(pos, -1))

    def subgraph(self, keep: torch.Tensor, values: torch.Tensor | None = None) -> EntryGraph:
        """The graph of the entries where ``keep`` is True (order kept), optionally new values."""
        keep = keep.to(torch.bool)
        vals = (self.values if values is None else values)[keep]
        return EntryGraph(self.n_users, self.n_items, self.rows[keep], self.cols[keep],
                          vals.detach().clone(), self.kind)

    def to(self, device: torch.device | str) -> EntryGraph:
        return EntryGraph(self.n_users, self.n_items, self.rows.to(device), self.cols.to(device),
                          self.values.to(device), self.kind)

    def csr_parts(self) -> dict[str, torch.Tensor]:
        """Row offsets of the pattern and of its transpose, and the transposing permutation."""
        if not self._csr:
            n = self.n_nodes
            rows, cols = self.rows.cpu().numpy(), self.cols.cpu().numpy()
            perm_t = np.lexsort((rows, cols))
            dev = self.device
            self._csr.update(
                crow=torch.from_numpy(np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)).to(dev),
                crow_t=torch.from_numpy(
                    np.searchsorted(cols[perm_t], np.arange(n + 1)).astype(np.int64)).to(dev),
                cols_t=torch.from_numpy(rows[perm_t].astype(np.int64)).to(dev),
                perm_t=torch.from_numpy(perm_t.astype(np.int64)).to(dev),
            )
        return self._csr


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "beta" CSR support, invariant checks off
        return torch.sparse_csr_tensor(crow, cols, values, (n, n), check_invariants=False)


class _WeightedSpMM(torch.autograd.Function):
    """``Y = A(values) X`` over a fixed pattern, with gradients to ``values`` and ``X``."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, x: torch.Tensor, graph: EntryGraph) -> torch.Tensor:  # type: ignore[override]
        parts = graph.csr_parts()
        ctx.graph = graph
        ctx.save_for_backward(values, x)
        return _csr(parts["crow"], graph.cols, values.contiguous(), graph.n_nodes) @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        values, x = ctx.saved_tensors
        graph: EntryGraph = ctx.graph
        parts = graph.csr_parts()
        grad = grad.contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            # index_select, not values[perm_t]: the same gather, several times faster on CPU
            values_t = values.index_select(0, parts["perm_t"])
            at = _csr(parts["crow_t"], parts["cols_t"], values_t, graph.n_nodes)
            grad_x = at @ grad
        if ctx.needs_input_grad[0]:
            # ∂values_e = <grad[row_e], x[col_e]>: (grad @ x^T) sampled on the pattern (SDDMM),
            # values in the canonical row-major order; ~15x faster than a gather on CPU
            pattern = _csr(parts["crow"], graph.cols, values.detach(), graph.n_nodes)
            grad_values = torch.sparse.sampled_addmm(pattern, grad, x.T, beta=0.0).values()
        return grad_values, grad_x, None


def weighted_matmul(graph: EntryGraph, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``A X`` where ``A[rows[e], cols[e]] = values[e]`` (gradients to both inputs).

    Traced (FLOP counting) as ``recshrink::spmm``: ``nnz x d`` multiply-adds.
    """
    if torch.jit.is_tracing():
        return sparse_matmul(graph.rows, graph.cols, values, x, graph.n_nodes)
    return _WeightedSpMM.apply(values, x, graph)


# --- graph builders -------------------------------------------------------------------------------


def _adjacency(n_users: int, n_items: int, pairs: np.ndarray) -> sp.csr_matrix:
    """Binary symmetric ``A = [[0, R], [R^T, 0]]`` of the distinct pairs (float64)."""
    kept = unique_pairs(pairs, n_items)
    n = n_users + n_items
    r = sp.csr_matrix((np.ones(len(kept)), (kept[:, 0], kept[:, 1] + n_users)), shape=(n, n))
    return (r + r.T).tocsr()


def _entry_graph(n_users: int, n_items: int, m: sp.spmatrix, kind: str, device) -> EntryGraph:
    coo = sp.coo_matrix(m)
    order = np.lexsort((coo.col, coo.row))
    return EntryGraph(
        n_users, n_items,
        torch.from_numpy(coo.row[order].astype(np.int64)).to(device),
        torch.from_numpy(coo.col[order].astype(np.int64)).to(device),
        torch.from_numpy(coo.data[order].astype(np.float32)).to(device),
        kind,
    )


def _sym_normalise(c: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 C D^-1/2`` with ``D`` the (weighted) row sums of ``C``; zero rows stay zero."""
    deg = np.asarray(c.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    d = sp.diags(inv)
    return (d @ c @ d).tocsr()


def self_loop_graph(n_users: int, n_items: int, pairs: np.ndarray, device="cpu") -> EntryGraph:
    """``Â = D^-1/2 (A + I) D^-1/2``, ``D_xx = deg_x + 1``: ``2|E| + N`` entries."""
    a = _adjacency(n_users, n_items, pairs)
    c = (a + sp.identity(a.shape[0], format="csr")).tocsr()
    return _entry_graph(n_users, n_items, _sym_normalise(c), "self_loops", device)


def plain_graph(n_users: int, n_items: int, pairs: np.ndarray, device="cpu") -> EntryGraph:
    """The harness's LightGCN adjacency (no self-loops, :func:`bench.backbone.graph.normalized_adjacency`)."""
    g = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], device=device)
    return EntryGraph(n_users, n_items, g.rows, g.cols, g.values, "plain")


def closure_graph(n_users: int, n_items: int, pairs: np.ndarray, hops: int = 2,
                  sample_ratio: float | None = None, device="cpu") -> EntryGraph:
    """``Ĉ = D_C^-1/2 C D_C^-1/2``, ``C = I + A + A^2 + ... + A^hops`` with path counts (the
    code's closure graph; docs/methods/lightgnn.md).

    ``D_C`` is the weighted row sum of ``C``. ``sample_ratio`` (the code's ``adj_aug_sample``):
    of the entries that only the powers ``A^2 .. A^hops`` add, keep the ``round(ratio x n)`` with
    the largest counts (ties: canonical order); ``I`` and ``A`` are always kept.
    """
    if hops < 1:
        raise ValueError(f"closure hops must be >= 1, got {hops}")
    a = _adjacency(n_users, n_items, pairs)
    n = a.shape[0]
    base = (a + sp.identity(n, format="csr")).tocsr()
    higher = sp.csr_matrix((n, n))
    power = a
    for _ in range(hops - 1):
        power = (power @ a).tocsr()
        higher = higher + power
    higher = sp.csr_matrix(higher)
    if sample_ratio is not None:
        if not 0 < sample_ratio <= 1:
            raise ValueError(f"closure sample ratio must lie in (0, 1], got {sample_ratio}")
        coo = higher.tocoo()
        order = np.lexsort((coo.col, coo.row))
        rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
        protected = base[rows, cols].A1 > 0  # entries that I + A hold anyway
        cand = np.flatnonzero(~protected)
        keep_n = round(sample_ratio * len(cand))
        ranked = cand[np.argsort(-vals[cand], kind="stable")[:keep_n]]
        keep = np.zeros(len(vals), dtype=bool)
        keep[protected] = True
        keep[ranked] = True
        higher = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    c = (base + higher).tocsr()
    c.sum_duplicates()
    return _entry_graph(n_users, n_items, _sym_normalise(c), "closure", device)


def build_graph(kind: str, n_users: int, n_items: int, pairs: np.ndarray, device="cpu",
                hops: int = 2, sample_ratio: float | None = None) -> EntryGraph:
    """One of :data:`GRAPH_KINDS` over the training pairs."""
    if kind == "self_loops":
        return self_loop_graph(n_users, n_items, pairs, device)
    if kind == "plain":
        return plain_graph(n_users, n_items, pairs, device)
    if kind == "closure":
        return closure_graph(n_users, n_items, pairs, hops, sample_ratio, device)
    raise ValueError(f"unknown graph kind {kind!r}; choose from {GRAPH_KINDS}")


# --- the weighted model (paper Eq. 4 in the code's form) ------------------------------------------


class WeightedLightGCN(nn.Module):
    """LightGCN with one learnable weight per stored entry and masks on entries and the table.

    Parameters ``user_emb``, ``item_emb`` (Xavier-uniform, separately), ``edge_weight`` (nnz, init
    1, unconstrained); buffers ``edge_mask`` (nnz, float 0/1), ``user_mask``/``item_mask`` (float
    0/1). ``train_edge_weights=False`` freezes ``w`` (a plain LightGCN on the same graph).
    """

    def __init__(self, n_users: int, n_items: int, dim: int, n_layers: int, graph: EntryGraph,
                 readout: str = "sum", train_edge_weights: bool = True, init: str = "xavier_uniform"
                 ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose from {READOUTS}")
        if n_layers < 0 or dim < 1:
            raise ValueError(f"need dim >= 1 and n_layers >= 0, got {dim}, {n_layers}")
        self.n_users, self.n_items, self.dim, self.n_layers = n_users, n_items, dim, n_layers
        self.graph, self.readout = graph, readout
        dev = graph.device
        self.user_emb = nn.Parameter(torch.empty(n_users, dim, device=dev))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim, device=dev))
        if init == "xavier_uniform":
            nn.init.xavier_uniform_(self.user_emb)
            nn.init.xavier_uniform_(self.item_emb)
        elif init == "normal":
            nn.init.normal_(self.user_emb, std=0.1)
            nn.init.normal_(self.item_emb, std=0.1)
        else:
            raise ValueError(f"unknown init {init!r}")
        self.edge_weight = nn.Parameter(torch.ones(graph.nnz, device=dev),
                                        requires_grad=train_edge_weights)
        self.register_buffer("edge_mask", torch.ones(graph.nnz, device=dev))
        self.register_buffer("user_mask", torch.ones(n_users, dim, device=dev))
        self.register_buffer("item_mask", torch.ones(n_items, dim, device=dev))

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    def table(self) -> torch.Tensor:
        """The raw layer-0 table ``E⁰`` (users first), without the mask."""
        return torch.cat([self.user_emb, self.item_emb], dim=0)

    @property
    def emb_mask(self) -> torch.Tensor:
        """``M`` as one ``N x d`` float tensor (users first)."""
        return torch.cat([self.user_mask, self.item_mask], dim=0)

    def layer0(self) -> torch.Tensor:
        """``Ẽ⁰ = M ⊙ E⁰``."""
        return torch.cat([self.user_emb * self.user_mask, self.item_emb * self.item_mask], dim=0)

    def edge_values(self) -> torch.Tensor:
        """``Â_e w_e m_e`` per stored entry."""
        return self.graph.values * self.edge_weight * self.edge_mask

    def layers(self) -> list[torch.Tensor]:
        """``[E⁰, ..., E^L]`` with ``E^l = Â_{w,m} E^{l-1}`` (paper Eq. 4, code's form)."""
        x = self.layer0()
        out = [x]
        if self.n_layers:
            values = self.edge_values()
            for _ in range(self.n_layers):
                x = weighted_matmul(self.graph, values, x)
                out.append(x)
        return out

    def readout_of(self, layers: list[torch.Tensor]) -> torch.Tensor:
        acc = layer_sum(layers, 0)
        return acc if self.readout == "sum" else acc / len(layers)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.readout_of(self.layers())
        return out[: self.n_users], out[self.n_users :]

    @torch.no_grad()
    def set_state_(self, table: torch.Tensor, emb_mask: torch.Tensor, edge_weight: torch.Tensor,
                   edge_mask: torch.Tensor) -> None:
        """Load ``E⁰``, ``M``, ``w`` and ``m`` (the state carried over from the previous pruning run)."""
        u = self.n_users
        self.user_emb.copy_(table[:u])
        self.item_emb.copy_(table[u:])
        self.user_mask.copy_(emb_mask[:u])
        self.item_mask.copy_(emb_mask[u:])
        self.edge_weight.copy_(edge_weight)
        self.edge_mask.copy_(edge_mask)

    def alive_entries(self) -> int:
        return int((self.edge_mask > 0).sum().item())

    def kept_entries(self) -> int:
        return int((self.user_mask > 0).sum().item() + (self.item_mask > 0).sum().item())


def expected_entries(graph_kind: str, n_users: int, n_items: int, n_pairs: int) -> int:
    """``2|E| + N`` for :func:`self_loop_graph`, ``2|E|`` for :func:`plain_graph` (invariant 1)."""
    n = n_users + n_items
    return 2 * n_pairs + (n if graph_kind == "self_loops" else 0)


def csr_graph_bits(n_alive: int, n_nodes: int, value_bits: int = 32) -> int:
    """Bits of a directed entry list in CSR: a column id and a value per entry, ``N + 1`` offsets."""
    return n_alive * (32 + value_bits) + 32 * (n_nodes + 1)



# --- device checks --------------------------------------------------------------------------------


def _check_pairs(seed: int, n_users: int, n_items: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], axis=1)


def _weighted_product_kernels(kind: str):
    """``run(device, seed)`` of the weighted product on a ``kind`` graph (40 users, 60 items, d = 16):
    ``Y = (Â ⊙ w) X`` and the gradients of ``<Y, G>`` to ``w`` (the SDDMM
    ``torch.sparse.sampled_addmm`` on the pattern) and to ``X`` (the transposed CSR product)."""

    def run(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        graph = build_graph(kind, 40, 60, _check_pairs(seed, 40, 60, 250))
        w = torch.rand(graph.nnz, generator=gen) + 0.5
        x = torch.randn(graph.n_nodes, 16, generator=gen)
        g = torch.randn(graph.n_nodes, 16, generator=gen)
        graph = graph.to(device)
        w = w.to(device).requires_grad_(True)
        x = x.to(device).requires_grad_(True)
        y = weighted_matmul(graph, graph.values * w, x)
        (y * g.to(device)).sum().backward()
        return {"product": y.detach(), "grad_weights": w.grad, "grad_x": x.grad}

    return run


def _weighted_lightgcn_kernels(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """:class:`WeightedLightGCN` (self-loop graph, 30 users, 50 items, d = 8, 2 layers, sum readout)
    with random entry weights, an entry mask and a table mask: the final representations and the
    gradients of ``<(users, items), G>`` to both tables and the entry weights."""
    gen = torch.Generator().manual_seed(seed)
    graph = self_loop_graph(30, 50, _check_pairs(seed, 30, 50, 200))
    n, d = graph.n_nodes, 8
    table = torch.randn(n, d, generator=gen)
    emb_mask = (torch.rand(n, d, generator=gen) < 0.6).float()
    weights = torch.rand(graph.nnz, generator=gen) + 0.5
    edge_mask = (torch.rand(graph.nnz, generator=gen) < 0.8).float()
    g = torch.randn(n, d, generator=gen)
    model = WeightedLightGCN(30, 50, d, 2, graph.to(device))
    model.set_state_(table.to(device), emb_mask.to(device), weights.to(device), edge_mask.to(device))
    users, items = model.propagate()
    reps = torch.cat([users, items])
    (reps * g.to(device)).sum().backward()
    return {"representations": reps.detach(), "grad_users": model.user_emb.grad,
            "grad_items": model.item_emb.grad, "grad_edge_weight": model.edge_weight.grad}


# Tolerance of every check below: each output is a CSR product or an SDDMM, a float32 sum of n terms
# (n <= ~100: a row of the 100-node closure graph; d = 16 for the SDDMM) that the GPU may add in
# another order (``sampled_addmm`` as a batched dot product). Reordering a sum of random-sign terms
# moves it by about sqrt(n) * eps * sum|terms| = 10 * 6e-8 * 10 = 6e-6 at worst here, and the model
# stacks two layers: rtol 1e-4 with atol 1e-5 (for sums that cancel to near 0) leaves a margin of
# about 10 without hiding a wrong entry, which is off by O(0.1).
_RTOL, _ATOL = 1e-4, 1e-5


def weighted_graph_device_checks() -> tuple[DeviceCheck, ...]:
    """The weighted product (:func:`weighted_matmul` forward, its transposed-CSR ``∂X`` and its
    ``sampled_addmm`` ``∂values``) on the self-loop and the closure graph, and the whole
    :class:`WeightedLightGCN` forward and backward, as :class:`~bench.api.DeviceCheck` s."""
    return (
        DeviceCheck("lightgnn.weighted_matmul[self_loops]", _weighted_product_kernels("self_loops"),
                    _RTOL, _ATOL, "(Â ⊙ w) X on the self-loop graph; gradients to w (SDDMM) and X"),
        DeviceCheck("lightgnn.weighted_matmul[closure]", _weighted_product_kernels("closure"),
                    _RTOL, _ATOL, "(Ĉ ⊙ w) X on the 2-hop closure graph; gradients to w (SDDMM) and X"),
        DeviceCheck("lightgnn.weighted_lightgcn", _weighted_lightgcn_kernels, _RTOL, _ATOL,
                    "WeightedLightGCN with entry and table masks: representations, gradients to "
                    "tables and entry weights"),
    )
