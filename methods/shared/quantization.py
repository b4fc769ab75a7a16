"""Learned step-size quantisation (LSQ, Esser et al., ICLR 2020) of a table, one step per row.

Used by LERG's codebook (docs/methods/lerg.md): a latent fp32 table ``E`` (c x d) and a
positive step ``Δ_r`` per row; with ``b`` bits, ``Q_min = -2^(b-1)``, ``Q_max = 2^(b-1) - 1``,

    q = round(clip(E / Δ, Q_min, Q_max))    (integer codes, stored with b bits each)
    Ê = q · Δ                                (what the model uses)

Only ``q`` and ``Δ`` are stored. Backward (the LSQ paper's straight-through estimator): the
rounding passes gradients through, so ``∂Ê/∂E = 1`` inside the clip range and 0 outside, and
``∂Ê/∂Δ = round(v) - v`` inside (``v = E/Δ``) and ``Q_min``/``Q_max`` where clipped; Δ's
gradient is scaled by ``g = 1/sqrt(d · Q_max)``. The scale is applied to Δ's backward only and
autograd differentiates clip · round-STE · mul, which gives exactly those gradients; the forward
is bit-exact ``q · Δ`` (both tricks are custom autograd functions with an exact forward).
"""

from __future__ import annotations

import math

import torch

BITS = (4, 8, 16)
MIN_STEP = 1e-8


def code_range(bits: int) -> tuple[int, int]:
    """``(Q_min, Q_max) = (-2^(b-1), 2^(b-1) - 1)``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def init_steps(table: torch.Tensor, bits: int) -> torch.Tensor:
    """LSQ init per row: ``Δ_r = 2 · mean|E_r| / sqrt(Q_max)``, at least :data:`MIN_STEP` (c x 1)."""
    _, q_max = code_range(bits)
    step = 2 * table.detach().abs().mean(dim=1, keepdim=True) / math.sqrt(q_max)
    return step.clamp_min(MIN_STEP)


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, ``scale · grad`` backward (the LSQ paper's gradient scale)."""
    y = x.view_as(x)
    if y.requires_grad:
        y.register_hook(lambda grad: grad * scale)
    return y


class _RoundSTE(torch.autograd.Function):
    """``round(x)`` forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad


def fake_quantize(table: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """``Ê = round(clip(E/Δ)) · Δ`` with LSQ's gradients to ``E`` and ``Δ`` (see the module docstring)."""
    q_min, q_max = code_range(bits)
    g = 1.0 / math.sqrt(table.shape[1] * q_max)
    s = _scale_grad(step, g)
    v = torch.clamp(table / s, q_min, q_max)
    return _RoundSTE.apply(v) * s


@torch.no_grad()
def quantize_codes(table: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer codes ``q`` (int16 for b > 8, int8 otherwise) that :func:`fake_quantize` uses."""
    q_min, q_max = code_range(bits)
    q = torch.clamp(table / step, q_min, q_max).round()
    return q.to(torch.int8 if bits <= 8 else torch.int16)


def dequantize(codes: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``q · Δ`` as float32."""
    return codes.to(torch.float32) * step
