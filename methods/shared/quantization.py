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

from bench.api import DeviceCheck

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


def _lsq_kernels(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """LSQ at 4 and 8 bits on a 24 x 16 table (some entries beyond the clip range): ``Ê``, the
    codes ``q``, ``q · Δ``, and the gradients of ``<Ê, G>`` to ``E`` and ``Δ`` for a fixed ``G``."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(24, 16, generator=gen)
    table[::5] *= 40  # some rows far beyond Q_max · Δ of a shrunken step: the clipped branch
    weight = torch.randn(24, 16, generator=gen)
    out: dict[str, torch.Tensor] = {}
    for bits in (4, 8):
        step0 = init_steps(table, bits) * 0.5
        e = table.clone().to(device).requires_grad_(True)
        step = step0.clone().to(device).requires_grad_(True)
        y = fake_quantize(e, step, bits)
        (y * weight.to(device)).sum().backward()
        codes = quantize_codes(e.detach(), step.detach(), bits)
        out.update({f"b{bits}_fake_quantized": y.detach(), f"b{bits}_grad_table": e.grad,
                    f"b{bits}_grad_step": step.grad, f"b{bits}_codes": codes,
                    f"b{bits}_dequantized": dequantize(codes, step.detach())})
    return out


def lsq_device_check() -> DeviceCheck:
    """The LSQ kernels (:func:`fake_quantize` forward and backward, :func:`quantize_codes`,
    :func:`dequantize`) as a :class:`~bench.api.DeviceCheck`.

    Tolerance: ``E/Δ`` is one correctly rounded division on either device, so ``Ê``, ``q`` and
    ``q · Δ`` agree to the last bit (codes exactly); ``∂/∂E`` is ``G`` masked and ``∂/∂Δ`` a row sum
    of 16 products whose order may differ on the GPU: a few float32 ulps of the row sum, within
    rtol 1e-5 / atol 1e-5 (the sums are O(10), the atol covers rows that cancel to near 0).
    """
    return DeviceCheck("shared.lsq_fake_quantize", _lsq_kernels, rtol=1e-5, atol=1e-5,
                       description="LSQ fake quantisation (4 and 8 bits), its codes and its "
                                   "straight-through gradients to the table and the step")
