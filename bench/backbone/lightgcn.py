"""LightGCN backbone (He et al., SIGIR 2020), shared by the reference method and every method.

* Layer-0 tables ``E_u`` (U x d) and ``E_i`` (I x d).
* Propagation (Eq. 7): ``E^{l+1} = Â E^l``; readout (Eq. 8): ``E = mean_{l=0..L} E^l``.
* Score (Eq. 9): ``s(u, i) = <e_u, e_i>``.
* Loss (Eq. 15): BPR ``-log sigmoid(s(u,i+) - s(u,i-))`` averaged over the batch plus an L2
  penalty on the batch's layer-0 rows (see :func:`l2_penalty` for the two conventions).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.backbone.graph import NormalizedGraph

INITS = ("xavier_uniform", "xavier_normal", "normal")
REG_FORMS = ("squared", "norm")


def l2_penalty(*rows: torch.Tensor, form: str = "squared") -> torch.Tensor:
    """L2 penalty of a batch's layer-0 rows, divided by the batch size B.

    ``squared`` (LightGCN paper, Eq. 15): ``0.5 * sum_t ||rows_t||_F^2 / B``.
    ``norm`` (RecBole 1.2.1 ``EmbLoss`` with ``require_pow=False``): ``sum_t ||rows_t||_F / B``.
    """
    b = rows[-1].shape[0]
    if form == "squared":
        return 0.5 * sum(r.pow(2).sum() for r in rows) / b
    if form == "norm":
        return sum(torch.linalg.vector_norm(r) for r in rows) / b
    raise ValueError(f"unknown L2 form {form!r}; choose from {REG_FORMS}")


def layer_sum(layers: list[torch.Tensor], start: int) -> torch.Tensor:
    """``Σ_{l >= start} E^l``: the sum readout (``start = 0``) or LightGNN's embedding-KD target
    (``start = 2``, the sum of teacher layers 2 and up; docs/methods/lightgnn.md, paper Eq. 6)."""
    picked = layers[start:]
    if not picked:
        raise ValueError(f"no layers from index {start} among {len(layers)}")
    acc = picked[0]
    for x in picked[1:]:
        acc = acc + x
    return acc


def propagation_sum(graph: NormalizedGraph, x: torch.Tensor, n_layers: int,
                    scratch: list[torch.Tensor] | None = None,
                    last: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_{l=0..L} Â^l x`` by Horner's rule, ``t <- x + Â t`` L times: L sparse products and L adds.

    The sum readout of Eq. 8 without keeping the layers. Intermediate sums go to the two ``scratch``
    tensors when given (alternately), the result to ``last`` when given, else to a fresh tensor
    (also for ``L = 0``); none of them may be ``x``.
    """
    if n_layers == 0:
        return x.clone() if last is None else last.copy_(x)
    acc = x
    for layer in range(n_layers):
        if layer == n_layers - 1:
            target = last
        else:
            target = scratch[layer % 2] if scratch else None
        acc = graph.product(acc, out=target).add_(x)
    return acc


def _distinct_rows(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted distinct values of ``idx`` (node ids below ``n``) and each entry's position among
    them, by a mark table over the nodes (O(n + len(idx)), no sort)."""
    marked = torch.zeros(n, dtype=torch.bool, device=idx.device)
    marked[idx] = True
    distinct = marked.nonzero().squeeze(1)
    slot = torch.empty(n, dtype=torch.int64, device=idx.device)
    slot[distinct] = torch.arange(distinct.numel(), device=idx.device)
    return distinct, slot.index_select(0, idx)


class _ReadoutRows(torch.autograd.Function):
    """Rows ``idx`` of the readout ``E = (Σ_l Â^l) E^0 / (L+1)`` (Eq. 7-8) and of ``E^0`` itself.

    One training step needs the final embeddings of the batch's users and items only, and the
    gradient of ``E^0`` is ``(Σ_l Â^l) G / (L+1)`` for the scattered row gradients ``G`` (Â is
    symmetric). Both directions run Horner's rule (:func:`propagation_sum`: L sparse products, L
    adds) instead of autograd's per-layer graph, which writes and reads about a dozen more
    ``(U+I) x d`` tensors per step (layer sums, the division, slice and index backward buffers). The
    forward's last product is needed for the batch's distinct rows only
    (:meth:`NormalizedGraph.row_product`, bit-identical to the full product's rows). Intermediate
    sums live in three work tensors kept on the graph (:meth:`NormalizedGraph.scratch`, 3 (U+I) x d
    floats).
    """

    @staticmethod
    def forward(ctx, user_emb: torch.Tensor, item_emb: torch.Tensor,  # type: ignore[override]
                graph: NormalizedGraph, n_layers: int, idx: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.graph, ctx.n_layers, ctx.n_users = graph, n_layers, user_emb.shape[0]
        ctx.save_for_backward(idx)
        work = graph.scratch(user_emb, 3)
        e0 = work[2]  # E^0 = [E_u; E_i], in a work tensor (torch.cat would allocate it every step)
        e0[: ctx.n_users].copy_(user_emb)
        e0[ctx.n_users :].copy_(item_emb)
        # index_select, not x[idx]: advanced indexing is ~7x slower for a gather of whole rows on CPU
        rows0 = e0.index_select(0, idx)
        if n_layers == 0:
            return rows0.clone(), rows0
        # Horner's rule for L - 1 layers over every node; the last layer only for the batch's rows:
        # rows = idx rows of E^0 + Â acc, where acc = Σ_{l<L} Â^l E^0 (E^0 itself when L = 1)
        acc = e0 if n_layers == 1 else propagation_sum(graph, e0, n_layers - 1, scratch=work[:2],
                                                       last=work[(n_layers - 2) % 2])
        distinct, position = _distinct_rows(idx, graph.n_nodes)
        last = graph.row_product(distinct, acc).index_select(0, position)
        rows = last.add_(rows0).mul_(1.0 / (n_layers + 1))
        return rows, rows0

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor, grad_e0_rows: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        work = ctx.graph.scratch(grad_rows, 3)
        # index_add_ with alpha (~3.5x slower on CPU than without) rounds alpha * row once per entry:
        # scaling the rows first rounds twice and changes results in the last bit, so it stays
        g = work[2].zero_().index_add_(0, idx, grad_rows, alpha=1.0 / (ctx.n_layers + 1))
        out = propagation_sum(ctx.graph, g, ctx.n_layers, scratch=work[:2])  # a fresh result: the gradient
        out.index_add_(0, idx, grad_e0_rows)
        return out[: ctx.n_users], out[ctx.n_users :], None, None, None


class LightGCN(nn.Module):
    """LightGCN with ``n_layers`` propagation layers over a fixed normalised graph."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        n_layers: int,
        graph: NormalizedGraph,
        init: str = "xavier_uniform",
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dimension must be >= 1, got {dim}")
        if n_layers < 0:
            raise ValueError(f"number of layers must be >= 0, got {n_layers}")
        self.n_users, self.n_items, self.dim, self.n_layers = n_users, n_items, dim, n_layers
        self.graph = graph
        self.user_emb = nn.Parameter(torch.empty(n_users, dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "xavier_uniform") -> None:
        """Initialise both tables (RecBole and LightGNN: Xavier-uniform; LightGCN: N(0, 0.1))."""
        for w in (self.user_emb, self.item_emb):
            if init == "xavier_uniform":
                nn.init.xavier_uniform_(w)
            elif init == "xavier_normal":
                nn.init.xavier_normal_(w)
            elif init == "normal":
                nn.init.normal_(w, std=0.1)
            else:
                raise ValueError(f"unknown init {init!r}; choose from {INITS}")

    def layer0(self) -> torch.Tensor:
        """Concatenated layer-0 table (users first), ``(U + I) x d``."""
        return torch.cat([self.user_emb, self.item_emb], dim=0)

    def layers(self) -> list[torch.Tensor]:
        """``[E^0, ..., E^L]`` with ``E^{l+1} = Â E^l`` (Eq. 7)."""
        x = self.layer0()
        out = [x]
        for _ in range(self.n_layers):
            x = self.graph.matmul(x)
            out.append(x)
        return out

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item representations: mean of layers 0..L (Eq. 7-8)."""
        out = layer_sum(self.layers(), 0) / (self.n_layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def bpr_loss(
        self,
        users: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        reg: float,
        reg_form: str = "squared",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BPR loss and the weighted L2 term for a batch of (user, positive, negative) triples."""
        if self._fused_readout():
            b = users.numel()
            idx = torch.cat([users, pos + self.n_users, neg + self.n_users])
            rows, rows0 = _ReadoutRows.apply(self.user_emb, self.item_emb, self.graph, self.n_layers, idx)
            u, p, n = rows.split(b)
            penalty = reg * l2_penalty(*rows0.split(b), form=reg_form)
        else:
            u_all, i_all = self.propagate()
            # index_select, not x[idx]: the same rows, and its backward (one index_add_ into zeros)
            # adds the same terms in the same order as advanced indexing's index_put_, faster on CPU
            u, p, n = u_all.index_select(0, users), i_all.index_select(0, pos), i_all.index_select(0, neg)
            penalty = reg * l2_penalty(self.user_emb.index_select(0, users),
                                       self.item_emb.index_select(0, pos),
                                       self.item_emb.index_select(0, neg), form=reg_form)
        diff = (u * p).sum(dim=1) - (u * n).sum(dim=1)
        bpr = F.softplus(-diff).mean()
        return bpr, penalty

    def _fused_readout(self) -> bool:
        """Whether :meth:`bpr_loss` may use :class:`_ReadoutRows`: plain LightGCN propagation over a
        symmetric :class:`NormalizedGraph` (subclasses that change the layers keep autograd's path),
        and not under tracing (FLOP counting records the per-layer operators)."""
        cls = type(self)
        return (cls.layer0 is LightGCN.layer0 and cls.layers is LightGCN.layers
                and cls.propagate is LightGCN.propagate and isinstance(self.graph, NormalizedGraph)
                and not torch.jit.is_tracing())
