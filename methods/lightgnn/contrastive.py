"""Softmax terms over large candidate sets, computed in memory-bounded chunks.

For anchors ``a`` (n_a x d) and candidates ``b`` (n_b x d), logits ``s_ab = <a, b> / tau``:

* :func:`chunked_logsumexp` gives ``lse_a = log Σ_b exp(s_ab)``;
* :func:`chunked_positive_ce` gives ``Σ_b P_ab (lse_a - s_ab)``, the cross entropy of
  ``softmax_b(s_a·)`` against the multi-hot (unnormalised) targets ``P`` (LightGNN's uniformity part
  B, paper Eq. 10), where ``P`` comes block by block from a callback (it may be too large to hold).

Both never hold more than ``chunk_bytes`` of logits: the forward walks over blocks of anchors, and
the backward recomputes each block's logits (like activation checkpointing) to form
``∂/∂a = G b / tau`` and ``∂/∂b = Gᵀ a / tau`` with ``G = g (n_pos softmax - P)`` (``n_pos = 1``,
``P = 0`` for the plain log-sum-exp). Multiply-adds: ``n_a n_b d`` per pass, 4 passes with the
backward (forward, recomputation, two gradients), see :func:`contrast_macs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

DEFAULT_CHUNK_BYTES = 64 * 2**20
PositiveFn = Callable[[int, int], torch.Tensor]


def _block_rows(n_b: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, 4 * n_b))


def _logits(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """``<a, b> / tau`` for a block of anchors, scaled in place (a fresh ``a @ bᵀ``; ``x / 1`` is
    ``x`` exactly, so ``tau = 1`` skips the pass)."""
    logits = a @ b.T
    return logits if tau == 1.0 else logits.div_(tau)


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(logits, dim=1)`` computed in ``logits``'s own memory (destroys it).

    The same operations in the same order as torch's (row max, the max of an infinite row taken
    as 0, ``exp(x - max)`` summed, log, plus the max), so the same values, without the two
    temporaries of the size of ``logits`` that torch allocates."""
    maxes = torch.amax(logits, dim=1, keepdim=True)
    flat = maxes.squeeze(1)
    flat.masked_fill_(flat.abs() == math.inf, 0)
    return logits.sub_(maxes).exp_().sum(dim=1).log_().add_(flat)


class _ChunkedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, tau: float, positives: PositiveFn | None,  # type: ignore[override]
                chunk_bytes: int) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.tau, ctx.positives, ctx.chunk_bytes = tau, positives, chunk_bytes
        out = a.new_empty(a.shape[0])
        step = _block_rows(b.shape[0], chunk_bytes)
        # the 0/1 positives of every block, kept for the backward when they take at most a
        # quarter of a logits chunk (one byte per entry) instead of being recomputed there
        keep = positives is not None and a.shape[0] * b.shape[0] <= chunk_bytes
        ctx.kept = [] if keep else None
        for s in range(0, a.shape[0], step):
            e = min(a.shape[0], s + step)
            logits = _logits(a[s:e], b, tau)
            if positives is None:
                out[s:e] = _logsumexp_(logits)
            else:
                p_bool = positives(s, e)
                if keep:
                    ctx.kept.append(p_bool)
                p = p_bool.to(logits.dtype)
                n_pos = p.sum(dim=1)
                picked = p.mul_(logits).sum(dim=1)
                out[s:e] = n_pos * _logsumexp_(logits) - picked
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        tau, positives = ctx.tau, ctx.positives
        grad_a = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        grad_b = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        step = _block_rows(b.shape[0], ctx.chunk_bytes)
        for block, s in enumerate(range(0, a.shape[0], step)):
            e = min(a.shape[0], s + step)
            g = torch.softmax(_logits(a[s:e], b, tau), dim=1)
            if positives is not None:
                p = (ctx.kept[block] if ctx.kept is not None else positives(s, e)).to(g.dtype)
                g.mul_(p.sum(dim=1, keepdim=True)).sub_(p)
            g.mul_(grad[s:e, None])
            if grad_a is not None:
                ga = g @ b
                grad_a[s:e] = ga if tau == 1.0 else ga.div_(tau)
            if grad_b is not None:
                gb = g.T @ a[s:e]
                grad_b += gb if tau == 1.0 else gb.div_(tau)
        ctx.kept = None
        return grad_a, grad_b, None, None, None


def chunked_logsumexp(a: torch.Tensor, b: torch.Tensor, tau: float,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """``log Σ_b exp(<a, b> / tau)`` per anchor row, differentiable in ``a`` and ``b``."""
    return _ChunkedSoftmax.apply(a, b, float(tau), None, int(chunk_bytes))


def chunked_positive_ce(a: torch.Tensor, b: torch.Tensor, tau: float, positives: PositiveFn,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """``Σ_b P_ab (lse_a - <a, b> / tau)`` per anchor; ``positives(s, e)`` returns ``P[s:e]``
    (0/1, ``(e - s) x n_b``, no gradient) for anchors ``s .. e-1``."""
    return _ChunkedSoftmax.apply(a, b, float(tau), positives, int(chunk_bytes))


def contrast_macs(n_anchors: int, n_candidates: int, dim: int, passes: int = 4) -> int:
    """Multiply-adds of one chunked term with its backward (4 passes over the logits)."""
    return passes * n_anchors * n_candidates * dim
