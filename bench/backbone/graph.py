"""The user-item propagation graph: normalised bipartite adjacency and sparse products.

Nodes are numbered users first (0..U-1), then items (U..U+I-1). The LightGCN adjacency
(He et al., SIGIR 2020, Eq. 7) is ``Â = D^-1/2 A D^-1/2`` with ``A = [[0, R], [R^T, 0]]``,
no self loops; a node of degree 0 gets a zero row and column.

Backends for ``Â @ X`` (all give equal results; ``tests/test_backbone.py`` checks it):
``csr`` (torch sparse CSR, the default), ``coo`` (torch sparse COO) and ``torch_sparse``
(the optional ``torch-sparse`` package, extra ``sparse``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from bench.data.preprocess import sorted_unique

BACKENDS = ("csr", "coo", "torch_sparse")
# NormalizedGraph.row_product slices the selected rows only when they hold at most this share of
# the entries. Measured on CPU (d = 32, 1 thread): slicing costs about 8 ns per selected entry and
# the product 7-30 ns per entry (more on graphs whose table outgrows the cache), so slicing loses
# on citeulike's batches (56% of the entries: 4.1 vs 2.2-3.3 ms for the full product) and wins on
# yelp-lightgnn's (29%: 3.9-4.7 vs 7.2-8.9 ms).
ROW_SLICE_MAX_FRACTION = 0.5


class GraphSize:
    """Sizes of a graph stored as entries ``(rows, cols, values)`` over users then items."""

    n_users: int
    n_items: int
    values: torch.Tensor

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def nnz(self) -> int:
        return int(self.values.numel())


@dataclass
class NormalizedGraph(GraphSize):
    """Symmetric normalised adjacency of a bipartite user-item graph, ready to multiply."""

    n_users: int
    n_items: int
    rows: torch.Tensor  # int64 (nnz,), sorted by (row, col)
    cols: torch.Tensor  # int64 (nnz,)
    values: torch.Tensor  # float32 (nnz,)
    backend: str = "csr"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown propagation backend {self.backend!r}; choose from {BACKENDS}")
        n = self.n_nodes
        with warnings.catch_warnings():
            # torch warns that sparse CSR is "beta" and that invariant checks are off
            warnings.simplefilter("ignore", UserWarning)
            self._build(n)

    def _build(self, n: int) -> None:
        if self.backend == "csr":
            mat = torch.sparse_coo_tensor(
                torch.stack([self.rows, self.cols]), self.values, (n, n)
            ).coalesce().to_sparse_csr()
            if max(n, mat.values().numel()) < 2**31:
                # int32 indices: with int64 ones, every CPU product first converts both index arrays
                # to int32 for the MKL kernel (an nnz-sized copy per product)
                mat = torch.sparse_csr_tensor(mat.crow_indices().int(), mat.col_indices().int(),
                                              mat.values(), (n, n))
            self._mat = mat
        elif self.backend == "coo":
            self._mat = torch.sparse_coo_tensor(
                torch.stack([self.rows, self.cols]), self.values, (n, n)
            ).coalesce()
        else:
            try:
                from torch_sparse import SparseTensor
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                raise ImportError(
                    "backend 'torch_sparse' needs the optional package torch-sparse: "
                    "pip install 'recshrink[sparse]'"
                ) from exc
            self._mat = SparseTensor(
                row=self.rows, col=self.cols, value=self.values, sparse_sizes=(n, n)
            )

    @property
    def n_edges(self) -> int:
        """Undirected user-item edges (each stored twice in the symmetric matrix)."""
        return self.nnz // 2

    def to(self, device: torch.device | str) -> NormalizedGraph:
        return NormalizedGraph(
            self.n_users,
            self.n_items,
            self.rows.to(device),
            self.cols.to(device),
            self.values.to(device),
            self.backend,
        )

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``Â @ x`` with gradient to ``x`` (Â is symmetric, so the backward is ``Â @ grad``).

        Under ``torch.jit.trace`` (FLOP counting) the product is the traceable operator
        ``recshrink::spmm`` instead, which :mod:`bench.measure.flops` counts as nnz x d
        multiply-adds.
        """
        if torch.jit.is_tracing():
            return sparse_matmul(self.rows, self.cols, self.values, x, self.n_nodes)
        return _SymmetricSpMM.apply(x, self)

    def product(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``Â @ x`` with no autograd bookkeeping (for code that supplies its own backward), written
        into ``out`` when given (an ``(n_nodes, d)`` tensor that does not overlap ``x``)."""
        if self.backend == "csr":
            # addmm into an uninitialised output with beta = 0 (the input is then ignored, NaNs
            # included): ``mat @ x`` and ``torch.sparse.mm`` zero-fill a result, compute into a
            # temporary and copy it over, 1.6x the time on CPU (4.7 vs 7.6 ms on yelp-lightgnn, d=64)
            if out is None:
                out = x.new_empty(self.n_nodes, x.shape[1])
            return torch.addmm(out, self._mat, x, beta=0, out=out)
        y = self._mat @ x
        return y if out is None else out.copy_(y)

    def row_product(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(Â x)[rows]`` for sorted distinct node ids ``rows``, with no autograd bookkeeping.

        With the ``csr`` backend, when those rows hold at most :data:`ROW_SLICE_MAX_FRACTION` of the
        entries, only they are multiplied: their entries are sliced into a ``len(rows) x n`` CSR
        matrix (a few passes over the selected entries) and the same kernel as :meth:`product`
        computes each row from the same entries in the same order, so every row equals the full
        product's bit for bit. Otherwise, and with other backends, the full product is computed and
        the rows selected.
        """
        if self.backend != "csr":
            return self.product(x).index_select(0, rows)
        mat = self._mat
        crow = self.__dict__.get("_crow64")
        if crow is None:
            crow = self.__dict__.setdefault("_crow64", mat.crow_indices().long())
        starts = crow.index_select(0, rows)
        counts = crow.index_select(0, rows + 1).sub_(starts)
        sub_crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(counts, 0, out=sub_crow[1:])
        n_sub = int(sub_crow[-1])
        if n_sub > ROW_SLICE_MAX_FRACTION * self.nnz:
            return self.product(x).index_select(0, rows)
        # entry k of selected row j sits at starts[j] + (k - sub_crow[j]) in the full matrix
        entries = torch.repeat_interleave(starts - sub_crow[:-1], counts, output_size=n_sub)
        entries += torch.arange(n_sub, device=rows.device)
        index_dtype = mat.col_indices().dtype
        sub = torch.sparse_csr_tensor(sub_crow.to(index_dtype), mat.col_indices().index_select(0, entries),
                                      mat.values().index_select(0, entries), (rows.numel(), self.n_nodes))
        out = x.new_empty(rows.numel(), x.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR is "beta"
            return torch.addmm(out, sub, x, beta=0, out=out)

    def scratch(self, like: torch.Tensor, count: int) -> list[torch.Tensor]:
        """``count`` reusable ``(n_nodes, d)`` work tensors of ``like``'s dtype and device, kept on the
        graph between calls: a fresh allocation of this size costs its page faults on every step."""
        key = (like.dtype, like.device, like.shape[1])
        bufs = self.__dict__.setdefault("_scratch", {}).setdefault(key, [])
        while len(bufs) < count:
            bufs.append(like.new_empty(self.n_nodes, like.shape[1]))
        return bufs[:count]


class _SymmetricSpMM(torch.autograd.Function):
    """``y = Â x`` for a constant symmetric sparse Â: the gradient is ``Â grad_y``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, graph: NormalizedGraph) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        return graph.product(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.graph.product(grad.contiguous()), None


@torch.library.custom_op("recshrink::spmm", mutates_args=())
def _spmm_op(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
             n_rows: int) -> torch.Tensor:
    out = torch.zeros(n_rows, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, rows, values.unsqueeze(1) * x[cols])


@_spmm_op.register_fake
def _(rows, cols, values, x, n_rows):
    return x.new_empty(n_rows, x.shape[1])


def sparse_matmul(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
                  n_rows: int) -> torch.Tensor:
    """``A @ x`` for the COO matrix ``A[rows[k], cols[k]] = values[k]`` (``n_rows`` rows).

    One operator, ``recshrink::spmm``, that ``torch.jit.trace`` records with its inputs, so the
    FLOP counter sees ``nnz = len(values)`` and charges ``nnz x d`` multiply-adds. Methods with
    their own sparse products (learned edge weights, sparse assignment matrices) use it too.
    """
    return _spmm_op(rows, cols, values, x, n_rows)


def unique_pairs(pairs: np.ndarray, n_items: int) -> np.ndarray:
    """The distinct ``(user, item)`` rows of ``pairs`` (``m x 2``), sorted by (user, item)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    codes = sorted_unique(pairs[:, 0] * n_items + pairs[:, 1])
    return np.stack([codes // n_items, codes % n_items], axis=1)


def normalized_adjacency(
    n_users: int,
    n_items: int,
    users: np.ndarray,
    items: np.ndarray,
    backend: str = "csr",
    device: torch.device | str = "cpu",
    degree_pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> NormalizedGraph:
    """Build ``Â = D^-1/2 A D^-1/2`` from (deduplicated) training pairs ``(users[k], items[k])``.

    LightGCN Eq. 7. Degrees count distinct neighbours; zero-degree nodes get no entries.
    ``degree_pairs`` (users, items): take the degrees from this graph instead (a pruned graph
    that keeps the full graph's coefficients ``1/sqrt(d_u d_i)`` on its kept edges).
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape:
        raise ValueError("users and items must have the same length")
    kept = unique_pairs(np.stack([users, items], axis=1), n_items)
    u, i = kept[:, 0], kept[:, 1] + n_users
    if degree_pairs is None:
        du, di = u, i
    else:
        full = unique_pairs(np.stack([np.asarray(x, dtype=np.int64) for x in degree_pairs], axis=1), n_items)
        du, di = full[:, 0], full[:, 1] + n_users
    deg = np.bincount(np.concatenate([du, di]), minlength=n_users + n_items).astype(np.float64)
    inv_sqrt = np.zeros_like(deg)
    nz = deg > 0
    inv_sqrt[nz] = deg[nz] ** -0.5
    w = inv_sqrt[u] * inv_sqrt[i]
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    vals = np.concatenate([w, w])
    order = np.lexsort((cols, rows))
    return NormalizedGraph(
        n_users,
        n_items,
        torch.from_numpy(rows[order]).to(device),
        torch.from_numpy(cols[order]).to(device),
        torch.from_numpy(vals[order].astype(np.float32)).to(device),
        backend,
    )
