"""Unstructured masks over the LightGCN embedding table, shared by every entry-pruning method.

Used by ``random-drop`` (random mask), ``magnitude`` (OMP and MagPrune) and ``dsl`` (dynamic
mask). Conventions (docs/methods/random-drop.md, docs/methods/magnitude.md, docs/methods/dsl.md):

* the mask covers the concatenated ``(U + I) x d`` layer-0 table (users first), one global mask
  over both tables unless a method says otherwise;
* a budget of ``k = round(r (U + I) d)`` entries is kept exactly;
* masked entries are exactly 0 after every optimiser step (:class:`KeepMasked`), so the stored
  table is what the model computes with;
* the artifact stores only kept entries, in the smallest of the sparse formats of
  :func:`sparse_table_parts`, and reports the dense-with-zeros size beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import (
    ArtifactPart,
    DeviceCheck,
    LightGCN,
    MethodError,
    NormalizedGraph,
    TrainHook,
    normalized_adjacency,
)


def kept_count(ratio: float, n: int) -> int:
    """``round(ratio * n)`` (Python rounds half to even), the exact budget of a kept fraction."""
    if not 0 <= ratio <= 1:
        raise MethodError(f"kept fraction must lie in [0, 1], got {ratio}")
    return round(ratio * n)


def exact_random_mask(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A flat boolean mask with exactly ``k`` of ``n`` entries set, uniform without replacement."""
    if not 0 <= k <= n:
        raise MethodError(f"cannot keep {k} of {n} entries")
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def per_row_random_mask(n_rows: int, dim: int, k_row: int, rng: np.random.Generator) -> np.ndarray:
    """``n_rows x dim`` mask keeping exactly ``k_row`` uniformly chosen entries in every row."""
    if not 0 <= k_row <= dim:
        raise MethodError(f"cannot keep {k_row} of {dim} entries per row")
    order = np.argsort(rng.random((n_rows, dim)), axis=1)
    mask = np.zeros((n_rows, dim), dtype=bool)
    np.put_along_axis(mask, order[:, :k_row], True, axis=1)
    return mask


def magnitude_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask (same shape) of the ``k`` largest ``|values|``; ties go to the lower flat index.

    OMP's global ranking (docs/methods/magnitude.md): stable sort of ``-|E|`` over the flattened
    table.
    """
    flat = values.detach().reshape(-1)
    if not 0 <= k <= flat.numel():
        raise MethodError(f"cannot keep {k} of {flat.numel()} entries")
    order = torch.argsort(-flat.abs(), stable=True)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:k]] = True
    return mask.reshape(values.shape)


# the numpy random streams of the random masks (MethodContext.rng): [seed, 1] for an edge mask,
# [seed, 2] for an embedding mask (docs/methods/random-drop.md); a method that draws them declares
# them in its random_streams
MASK_STREAMS = {"edge_mask": 1, "emb_mask": 2}


class MaskedLightGCN(LightGCN):
    """LightGCN whose layer-0 tables carry fixed-shape boolean masks (buffers ``user_mask``,
    ``item_mask``, saved with the state).

    ``mask_in_forward=True`` computes the forward on ``E * M`` (masked entries get zero gradient:
    static masks, as in random-drop and OMP). ``False`` computes it on ``E`` itself, whose masked entries are
    kept at 0 by :class:`KeepMasked`; then masked entries receive their true gradient, which DSL's
    growth step needs (docs/methods/dsl.md: regrowth by gradient magnitude).
    """

    def __init__(self, n_users: int, n_items: int, dim: int, n_layers: int, graph: NormalizedGraph,
                 mask: torch.Tensor, mask_in_forward: bool = True, init: str = "xavier_uniform") -> None:
        super().__init__(n_users, n_items, dim, n_layers, graph, init=init)
        if tuple(mask.shape) != (n_users + n_items, dim):
            raise MethodError(f"mask shape {tuple(mask.shape)} != table shape {(n_users + n_items, dim)}")
        self.mask_in_forward = mask_in_forward
        # the tables are created on the CPU (the caller moves the module): the mask goes with them
        mask = mask.to(device=self.user_emb.device, dtype=torch.bool)
        self.register_buffer("user_mask", mask[:n_users].clone())
        self.register_buffer("item_mask", mask[n_users:].clone())
        self.apply_mask_()

    @classmethod
    def from_lightgcn(cls, model: LightGCN, mask: torch.Tensor, mask_in_forward: bool = True,
                      graph: NormalizedGraph | None = None) -> MaskedLightGCN:
        """A masked copy of ``model``'s tables (same graph unless ``graph`` is given)."""
        out = cls(model.n_users, model.n_items, model.dim, model.n_layers, graph or model.graph,
                  mask.to(model.user_emb.device), mask_in_forward)
        with torch.no_grad():
            out.user_emb.copy_(model.user_emb)
            out.item_emb.copy_(model.item_emb)
        out.apply_mask_()
        return out.to(model.user_emb.device)

    @property
    def mask(self) -> torch.Tensor:
        """The ``(U + I) x d`` mask, users first."""
        return torch.cat([self.user_mask, self.item_mask], dim=0)

    def set_mask_(self, mask: torch.Tensor) -> None:
        with torch.no_grad():
            self.user_mask.copy_(mask[: self.n_users])
            self.item_mask.copy_(mask[self.n_users :])
        self.apply_mask_()

    def _float_mask(self, name: str) -> torch.Tensor:
        """``name``'s mask as the table's dtype, cached until the mask changes (multiplying by a
        float mask is several times faster than by a bool one on CPU)."""
        mask = getattr(self, name)
        cache = self.__dict__.setdefault("_float_masks", {})
        hit = cache.get(name)
        if hit is None or hit[0] is not mask or hit[1] != mask._version:
            hit = (mask, mask._version, mask.to(self.user_emb.dtype))
            cache[name] = hit
        return hit[2]

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the masked entries of both tables in place."""
        self.user_emb.mul_(self._float_mask("user_mask"))
        self.item_emb.mul_(self._float_mask("item_mask"))

    def layer0(self) -> torch.Tensor:
        if self.mask_in_forward:
            # the cached float masks: the same products as with the boolean buffers, several times faster
            return torch.cat([self.user_emb * self._float_mask("user_mask"),
                              self.item_emb * self._float_mask("item_mask")], dim=0)
        return super().layer0()

    def nnz(self) -> int:
        return int(self.user_mask.sum() + self.item_mask.sum())


class KeepMasked(TrainHook):
    """After every optimiser step, multiply the tables by their masks (no drift from Adam)."""

    def __init__(self, model: MaskedLightGCN) -> None:
        self.model = model

    def step_end(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.model.apply_mask_()

    def state_dict(self) -> dict[str, Any]:
        return {}  # the masks are the model's buffers


def sparse_storage_bits(n_rows: int, dim: int, k: int, value_bits: int = 32) -> dict[str, int]:
    """Bits of a ``n_rows x dim`` table with ``k`` kept entries in each storage format.

    ``dense``: every entry, zeros included; ``bitmap``: a 1-bit mask plus the kept values;
    ``csr8`` / ``csr32``: kept values, their column (uint8 when ``dim <= 256``, else not offered /
    int32) and ``n_rows + 1`` int32 row offsets.
    """
    n = n_rows * dim
    out = {
        "dense": n * value_bits,
        "bitmap": n + k * value_bits,
        "csr32": k * (value_bits + 32) + 32 * (n_rows + 1),
    }
    if dim <= 256:
        out["csr8"] = k * (value_bits + 8) + 32 * (n_rows + 1)
    return out


def sparse_table_parts(table: torch.Tensor, mask: torch.Tensor, prefix: str = "emb"
                       ) -> tuple[list[ArtifactPart], dict[str, Any]]:
    """Artifact of a masked table in its smallest format, and the sizes of all formats.

    Returns the parts and ``{"storage_format": name, "bytes_<format>": ...,
    "bytes_nominal": 4 k}`` (``nominal`` is the paper-style figure: kept values only, no index).
    The kept values are ``param`` parts (``k`` parameters); masks and offsets are not. The dense
    format is used only when every entry is kept, so stored parameters always equal kept entries.
    """
    table = table.detach()
    mask = mask.detach().to(torch.bool)
    n_rows, dim = table.shape
    k = int(mask.sum())
    bits = sparse_storage_bits(n_rows, dim, k, table.element_size() * 8)
    # dense only when nothing is pruned: stored parameters then equal kept entries
    candidates = ["dense"] if k == mask.numel() else [f for f in bits if f != "dense"]
    fmt = min(candidates, key=lambda f: (bits[f], f))
    values = table[mask]  # row-major order of the kept entries
    if fmt == "dense":
        parts = [ArtifactPart(f"{prefix}_table", "values", table)]
    elif fmt == "bitmap":
        parts = [ArtifactPart(f"{prefix}_values", "values", values),
                 ArtifactPart(f"{prefix}_mask", "mask", mask.reshape(-1))]
    else:
        cols = mask.nonzero()[:, 1]
        offsets = torch.zeros(n_rows + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(mask.sum(dim=1).cpu(), 0).to(torch.int32)
        col_dtype, col_bits = (torch.uint8, 8) if fmt == "csr8" else (torch.int32, 32)
        parts = [ArtifactPart(f"{prefix}_values", "values", values),
                 ArtifactPart(f"{prefix}_columns", "indices", cols.to(col_dtype), col_bits),
                 ArtifactPart(f"{prefix}_row_offsets", "indices", offsets, 32)]
    info: dict[str, Any] = {"storage_format": fmt, "bytes_nominal": k * table.element_size()}
    info.update({f"bytes_{f}": b // 8 + (b % 8 > 0) for f, b in bits.items()})
    return parts, info


def masked_model_parts(model: MaskedLightGCN) -> tuple[list[ArtifactPart], dict[str, Any]]:
    """:func:`sparse_table_parts` of a masked LightGCN's concatenated table."""
    return sparse_table_parts(model.layer0(), model.mask)


def masked_model_report(model: MaskedLightGCN) -> tuple[list[ArtifactPart], dict[str, Any], dict[str, float]]:
    """Artifact, settings and extra measurements of a masked LightGCN, the same for every method.

    Measurements: ``emb_bytes_sparse`` (the chosen format), ``emb_bytes_dense_with_zeros`` (what a
    dense implementation stores), ``emb_bytes_nominal`` (kept values only, paper style) and
    ``flops_propagation_sparse_aware`` (:func:`sparse_aware_propagation_macs`; fvcore's
    ``flops_propagation`` is the dense count). Settings: kept entries and the storage format.
    """
    parts, storage = masked_model_parts(model)
    fmt = storage["storage_format"]
    settings = {"kept_entries": model.nnz(), "table_entries": model.mask.numel(), "storage_format": fmt}
    measurements = {
        "emb_bytes_sparse": float(storage[f"bytes_{fmt}"]),
        "emb_bytes_dense_with_zeros": float(storage["bytes_dense"]),
        "emb_bytes_nominal": float(storage["bytes_nominal"]),
        "flops_propagation_sparse_aware": float(
            sparse_aware_propagation_macs(model.graph, model.mask, model.n_layers)),
    }
    return parts, settings, measurements


@torch.no_grad()
def sparse_aware_propagation_macs(graph: NormalizedGraph | None, support: torch.Tensor, n_layers: int) -> int:
    """Multiply-adds of ``L`` propagation layers that skip zero entries of each layer's input.

    Layer ``l`` costs ``sum_c deg(c) * nnz(row c of E^(l-1))``. The support of
    ``E^(l)`` is that of ``A_bin E^(l-1)`` (no cancellation assumed), so every layer's count is
    exact for the given layer-0 support. The dense count is ``L * nnz(A) * d``.
    """
    if graph is None or n_layers == 0 or graph.nnz == 0:
        return 0
    rows, cols = graph.rows.cpu(), graph.cols.cpu()
    n = graph.n_nodes
    s = support.detach().to(torch.float32).cpu()
    total = 0
    for layer in range(n_layers):
        row_nnz = (s > 0).sum(dim=1).to(torch.float64)
        total += int(row_nnz[cols].sum().item())
        if layer + 1 < n_layers:
            nxt = torch.zeros(n, s.shape[1])
            nxt.index_add_(0, rows, (s[cols] > 0).to(torch.float32))
            s = nxt
    return total



def _masked_table_kernels(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """A masked LightGCN (30 users, 50 items, d = 8, 2 layers, 40% of entries kept), made by
    :meth:`MaskedLightGCN.from_lightgcn` from a dense model on ``device``, with the mask in the
    forward and outside it: ``M ⊙ E⁰``, the propagated representations, the gradients of
    ``<(users, items), G>`` to both tables, the tables after a step and :meth:`~MaskedLightGCN.apply_mask_`,
    the stored artifact (:func:`sparse_table_parts`) and the sparse-aware multiply-adds."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_users, n_items, dim = 30, 50, 8
    pairs = np.stack([rng.integers(0, n_users, 300), rng.integers(0, n_items, 300)], axis=1)
    n_entries = (n_users + n_items) * dim
    mask = torch.from_numpy(exact_random_mask(n_entries, kept_count(0.4, n_entries), rng))
    mask = mask.reshape(n_users + n_items, dim)
    table = torch.randn(n_users + n_items, dim, generator=gen)
    weight = torch.randn(n_users + n_items, dim, generator=gen)
    update = torch.randn(n_users + n_items, dim, generator=gen)
    graph = normalized_adjacency(n_users, n_items, pairs[:, 0], pairs[:, 1], device=device)
    dense = LightGCN(n_users, n_items, dim, 2, graph)
    with torch.no_grad():
        dense.user_emb.copy_(table[:n_users])
        dense.item_emb.copy_(table[n_users:])
    dense = dense.to(device)
    out: dict[str, torch.Tensor] = {}
    for in_forward in (True, False):
        tag = "in_forward" if in_forward else "kept_masked"
        # the way every method builds it: a masked copy of a dense model already on the device
        model = MaskedLightGCN.from_lightgcn(dense, mask, mask_in_forward=in_forward)
        users, items = model.propagate()
        (torch.cat([users, items]) * weight.to(device)).sum().backward()
        out[f"{tag}_layer0"] = model.layer0().detach()
        out[f"{tag}_representations"] = torch.cat([users, items]).detach()
        out[f"{tag}_grad_users"] = model.user_emb.grad
        out[f"{tag}_grad_items"] = model.item_emb.grad
        with torch.no_grad():
            model.user_emb.add_(update[:n_users].to(device))
            model.item_emb.add_(update[n_users:].to(device))
        model.apply_mask_()
        out[f"{tag}_after_step"] = model.layer0().detach()
    parts, _ = masked_model_parts(model)
    out.update({f"artifact_{p.name}": p.tensor for p in parts})
    out["sparse_aware_macs"] = torch.tensor(sparse_aware_propagation_macs(graph, model.mask, 2))
    return out


def masked_table_device_check() -> DeviceCheck:
    """The masked embedding table (:class:`MaskedLightGCN`, :meth:`~MaskedLightGCN.apply_mask_`,
    :func:`sparse_table_parts`) as a :class:`~bench.api.DeviceCheck`.

    Tolerance: masking is exact (a masked entry is 0 on both devices; the kept values, masks and
    indices must be equal), but the two propagation layers and their backward are CSR products whose
    float32 row sums (n <= ~20 terms of O(1)) the GPU may add in another order: about
    sqrt(n) * eps * sum|terms| = 5 * 6e-8 * 5 = 2e-6 per layer. rtol 1e-4 with atol 1e-5 (for sums
    that cancel to near 0) leaves a margin of about 10 and still catches a wrong entry (off by O(0.1)).
    """
    return DeviceCheck("shared.masked_table", _masked_table_kernels, rtol=1e-4, atol=1e-5,
                       description="masked LightGCN tables (mask in the forward and kept at 0 after "
                                   "a step): layer 0, propagation, gradients, artifact, sparse-aware MACs")
