"""LightGNN's training objective (paper Eq. 11; the losses 1-6 of docs/methods/lightgnn.md): BPR,
prediction-level and embedding-level distillation, the two uniformity terms and the code's explicit
weight decay.

:class:`DistillationObjective` wraps a :class:`~methods.lightgnn.weighted_graph.WeightedLightGCN` so
the shared BPR loop (:func:`bench.training.fit_bpr`) trains it: its ``bpr_loss`` returns the BPR
term and, as the "penalty", the sum of all other terms. The loop's ``reg`` argument is ignored:
LightGNN regularises the whole tables every step (loss 6, as the authors' code does), with its own
``reg`` and ``ereg``.

Candidate sets: the paper's denominators run over **all** users or items (``candidates = None``),
computed in memory-bounded chunks (:mod:`methods.lightgnn.contrastive`). The ``cpu`` profile draws
``candidates`` users and items uniformly per step instead (the lite profile); the embedding-KD
denominator then is the sample plus the anchor's own positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from methods.lightgnn.contrastive import (
    DEFAULT_CHUNK_BYTES,
    chunked_logsumexp,
    chunked_positive_ce,
    contrast_macs,
)
from methods.lightgnn.weighted_graph import WeightedLightGCN

# part B's loosening factor δ by pruning run (loss 5, paper Eq. 10; the code's ``hyper_contr_loosen_factor``);
# run 1 has no part B, runs after 8 use 0
DELTA_BY_RUN = {2: 0, 3: 2, 4: 3, 5: 4, 6: 4, 7: 3, 8: 1}
PART_A_EPS = 1e-5
PRED_EPS = 1e-8


def delta_for_run(run: int) -> int | None:
    """δ of part B in pruning run ``run`` (None: part B off, i.e. run 1)."""
    if run < 2:
        return None
    return DELTA_BY_RUN.get(run, 0)


@dataclass(frozen=True)
class LossWeights:
    """Weights and temperatures of the losses (defaults: the authors' example scripts)."""

    softreg: float = 1.0  # λ1, prediction KD
    tempsoft: float = 0.03  # τ_p
    cdreg: float = 1e-2  # λ2, embedding KD
    tempcd: float = 0.1  # τ_e
    screg: float = 1.0  # uniformity part A
    tempsc: float = 1.0  # τ_A
    subspcreg: float = 1e-4  # λ3, part B
    tempsubsp: float = 1.0  # τ_B
    reg: float = 5e-7  # λ4 on the whole tables
    ereg: float = 1e-9  # λ_w on the edge weights
    kd_triples: int = 100_000
    candidates: int | None = None  # None: all users / items (paper); else sampled per step
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


@dataclass
class TeacherSignals:
    """A frozen teacher's outputs, precomputed once (T is frozen, its outputs detached).

    ``users``/``items``: final embeddings (prediction KD; the intermediate's also feed the σ-term
    of the importance score); ``target``: the embedding-KD target ``h`` (``N x d``, layers 2..L
    summed), row-normalised here.
    """

    users: torch.Tensor
    items: torch.Tensor
    target: torch.Tensor

    def __post_init__(self) -> None:
        self.users = self.users.detach()
        self.items = self.items.detach()
        self.target = normalise_rows(self.target.detach())


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-L2 normalisation after adding 1e-8 (loss 3, embedding KD)."""
    x = x + 1e-8
    return x / x.norm(dim=1, keepdim=True)


def _pair_margin(users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, j1: torch.Tensor,
                 j2: torch.Tensor) -> torch.Tensor:
    """``ŷ(u,j1) - ŷ(u,j2)`` as ``<e_u, e_j1 - e_j2>`` for index vectors ``u``, ``j1``, ``j2``."""
    diff = items.index_select(0, j1) - items.index_select(0, j2)
    return (users.index_select(0, u) * diff).sum(dim=1)


def prediction_kd(s_users: torch.Tensor, s_items: torch.Tensor, t_users: torch.Tensor,
                  t_items: torch.Tensor, u: torch.Tensor, j1: torch.Tensor, j2: torch.Tensor,
                  tau: float) -> torch.Tensor:
    """Prediction KD (loss 2, paper Eq. 5 as the code computes it): soft BCE between ``σ(Δ_T/τ)``
    and ``σ(Δ_S/τ)``, ``Δ = ŷ(u,j1) - ŷ(u,j2)``.

    Rows are gathered with ``index_select``, whose backward is one ``index_add_`` (about 1.5x
    faster on CPU than advanced indexing's accumulating ``index_put_``; same values)."""
    d_s = _pair_margin(s_users, s_items, u, j1, j2)
    with torch.no_grad():
        d_t = _pair_margin(t_users, t_items, u, j1, j2)
        q = torch.sigmoid(d_t / tau)
    p = torch.sigmoid(d_s / tau)
    return -(q * torch.log(p + PRED_EPS) + (1 - q) * torch.log(1 - p + PRED_EPS)).mean()


def embedding_kd(target: torch.Tensor, student: torch.Tensor, anchors: torch.Tensor, tau: float,
                 candidates: torch.Tensor | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
                 ) -> torch.Tensor:
    """Embedding KD (loss 3, paper Eq. 6) for one node type: mean over anchors ``a`` of
    ``-log exp(c(a,a)/τ) / Σ_b exp(c(a,b)/τ)``, ``c`` the cosine of teacher row ``a`` and student
    row ``b`` (``target`` already normalised; ``student`` normalised here). ``candidates``: indices
    of the denominator rows (None: all rows)."""
    s = normalise_rows(student)
    t_a = target[anchors]
    pos = (t_a * s[anchors]).sum(dim=1) / tau
    if candidates is None:
        lse = chunked_logsumexp(t_a, s, tau, chunk_bytes)
    else:
        lse = torch.logaddexp(chunked_logsumexp(t_a, s[candidates], tau, chunk_bytes), pos)
    return (lse - pos).mean()


def uniformity(anchors: torch.Tensor, cands: torch.Tensor, tau: float,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Uniformity part A (loss 4), one pairing: mean over anchors of ``log(Σ_b exp(<e_a, e_b>/τ) + 1e-5)``."""
    lse = chunked_logsumexp(anchors, cands, tau, chunk_bytes)
    return torch.logaddexp(lse, torch.full_like(lse, math.log(PART_A_EPS))).mean()


def positive_matrix(mask_a: torch.Tensor, mask_b: torch.Tensor, delta: int) -> torch.Tensor:
    """Uniformity part B's positive sets (loss 5, paper Eq. 10): ``P(x,y) = 1`` iff
    ``ov >= n_x - δ`` and ``ov >= n_y - δ`` (``ov = m_x · m_y``).

    ``mask_a``/``mask_b``: 0/1 float rows of the layer-0 mask. Returns a boolean matrix.
    """
    ov = mask_a @ mask_b.T
    n_a = mask_a.sum(dim=1, keepdim=True)
    n_b = mask_b.sum(dim=1)[None, :]
    return (ov >= n_a - delta) & (ov >= n_b - delta)


def positive_uniformity(anchors: torch.Tensor, cands: torch.Tensor, mask_a: torch.Tensor,
                        mask_b: torch.Tensor, delta: int, tau: float,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Uniformity part B (loss 5, paper Eq. 10), one pairing: mean over anchors of
    ``-Σ_b P(a,b) log softmax_b(<e_a,e_b>/τ)``."""

    def positives(s: int, e: int) -> torch.Tensor:
        return positive_matrix(mask_a[s:e], mask_b, delta)

    return chunked_positive_ce(anchors, cands, tau, positives, chunk_bytes).mean()


class DistillationObjective(nn.Module):
    """The LightGNN loss (paper Eq. 11) around a weighted model, in the shape
    :func:`bench.training.fit_bpr` trains.

    ``teacher``: the KD teacher's signals (None: BPR and decay only, the stage-1 teacher).
    ``delta``: part B's δ (None: part B off). ``generator``: draws the prediction-KD triples and
    the sampled candidates. ``macs`` accumulates the multiply-adds of every term outside the
    traced BPR forward (see :meth:`extra_macs`), ``terms`` the last step's term values.
    """

    def __init__(self, model: WeightedLightGCN, teacher: TeacherSignals | None, weights: LossWeights,
                 generator: torch.Generator, delta: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.teacher = teacher
        self.weights = weights
        self.generator = generator
        self.delta = delta
        self.macs = 0.0
        self.steps = 0
        self.terms: dict[str, float] = {}

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.propagate()

    def decay(self) -> torch.Tensor:
        """Weight decay (loss 6): ``λ4 (||E_U||² + ||E_I||²) + λ_w ||w||²`` (whole tables, every step)."""
        m, w = self.model, self.weights
        out = w.reg * (m.user_emb.pow(2).sum() + m.item_emb.pow(2).sum())
        if m.edge_weight.requires_grad and w.ereg:
            out = out + w.ereg * m.edge_weight.pow(2).sum()
        return out

    def _sample(self, n: int) -> torch.Tensor | None:
        k = self.weights.candidates
        if k is None or k >= n:
            return None
        return torch.randperm(n, generator=self.generator)[:k].to(self.model.user_emb.device)

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float = 0.0,
                 reg_form: str = "squared") -> tuple[torch.Tensor, torch.Tensor]:
        """``(BPR, everything else)`` for a batch; ``reg``/``reg_form`` are not used (see module)."""
        m, w = self.model, self.weights
        layers = m.layers()
        final = m.readout_of(layers)
        e_u, e_i = final[: m.n_users], final[m.n_users :]
        diff = (e_u[users] * e_i[pos]).sum(dim=1) - (e_u[users] * e_i[neg]).sum(dim=1)
        bpr = F.softplus(-diff).mean()
        rest = self.decay()
        if torch.jit.is_tracing() or (self.teacher is None and self.delta is None):
            return bpr, rest
        terms: dict[str, torch.Tensor] = {}
        d = m.dim
        macs = 0.0
        ub, ib = torch.unique(users), torch.unique(pos)
        cu, ci = self._sample(m.n_users), self._sample(m.n_items)
        nu = m.n_users if cu is None else len(cu)
        ni = m.n_items if ci is None else len(ci)
        cand_u = e_u if cu is None else e_u[cu]
        cand_i = e_i if ci is None else e_i[ci]
        if self.teacher is not None and w.softreg:
            dev = users.device
            n = w.kd_triples
            u = torch.randint(m.n_users, (n,), generator=self.generator).to(dev)
            j1 = torch.randint(m.n_items, (n,), generator=self.generator).to(dev)
            j2 = torch.randint(m.n_items, (n,), generator=self.generator).to(dev)
            t = self.teacher
            terms["pred_kd"] = w.softreg * prediction_kd(e_u, e_i, t.users, t.items, u, j1, j2, w.tempsoft)
            macs += n * d * 3 + n * d  # student Δ with its backward, teacher Δ
        if self.teacher is not None and w.cdreg:
            t = self.teacher
            kd_u = embedding_kd(t.target[: m.n_users], e_u, ub, w.tempcd, cu, w.chunk_bytes)
            kd_i = embedding_kd(t.target[m.n_users :], e_i, ib, w.tempcd, ci, w.chunk_bytes)
            terms["emb_kd"] = w.cdreg * (kd_u + kd_i)
            macs += contrast_macs(len(ub), nu, d) + contrast_macs(len(ib), ni, d)
        pairings = ((e_u[ub], cand_i, "ui"), (e_i[ib], cand_u, "iu"), (e_u[ub], cand_u, "uu"),
                    (e_i[ib], cand_i, "ii"))
        if w.screg:
            terms["uniform_a"] = w.screg * sum(uniformity(a, b, w.tempsc, w.chunk_bytes)
                                               for a, b, _ in pairings)
            macs += sum(contrast_macs(len(a), len(b), d) for a, b, _ in pairings)
        if self.delta is not None and w.subspcreg:
            mask = m.emb_mask
            m_u, m_i = mask[: m.n_users], mask[m.n_users :]
            rows = {"u": m_u[ub], "i": m_i[ib]}
            cols = {"u": m_u if cu is None else m_u[cu], "i": m_i if ci is None else m_i[ci]}
            total = 0.0
            for a, b, kind in pairings:
                total = total + positive_uniformity(a, b, rows[kind[0]], cols[kind[1]], self.delta,
                                                    w.tempsubsp, w.chunk_bytes)
                macs += contrast_macs(len(a), len(b), d) + 2 * len(a) * len(b) * d  # + overlaps
            terms["uniform_b"] = w.subspcreg * total
        self.macs += macs
        self.steps += 1
        self.terms = {k: float(v.detach()) for k, v in terms.items()}
        for v in terms.values():
            rest = rest + v
        return bpr, rest

    def extra_macs(self, epochs: int) -> float:
        """Multiply-adds per epoch of the terms outside the traced BPR forward, as counted."""
        return self.macs / epochs if epochs else 0.0
