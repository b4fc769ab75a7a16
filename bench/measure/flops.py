"""Multiply-add counts of a model's inference and training, by tracing with fvcore.

What is measured: the multiply-adds (MACs) that the model's own code performs, as recorded by
``torch.jit.trace`` and counted by fvcore's :class:`~fvcore.nn.FlopCountAnalysis`. fvcore counts
**one per multiply-add** (its "flops" are MACs) for matrix products, convolutions, ``einsum``
and the like, and skips elementwise operators (additions, means, activations); the skipped
operator names are reported as ``flops_unsupported_ops`` so nothing is ignored silently.

How: sparse propagation ``Â @ X`` is traced as the custom operator ``recshrink::spmm`` (see
:meth:`bench.backbone.graph.NormalizedGraph.matmul`), which :func:`spmm_flop_handle` charges
``nnz x d`` multiply-adds; every analysis here registers that handle.

* inference = propagation (``module.propagate()``, once) + scoring every user against every
  item (``model.score``), see :func:`count_inference_flops`;
* training = forward of ``bpr_loss`` on every mini-batch of an epoch, times 3 for the backward,
  see :func:`count_train_macs_per_epoch`.

Scoring and training costs are extrapolated exactly from traces of two small batch sizes
(``count(b) = fixed + b x per_example``), so no U x I score matrix is ever materialised.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from bench.contract import CompressedModel

with warnings.catch_warnings():
    # fvcore.nn scripts a loss function at import: torch warns that torch.jit.script is deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

FLOPS_UNIT = "multiply-adds (fvcore counts one per multiply-add)"
SPMM_OP = "recshrink::spmm"
# backward ~ 2 x forward (gradients w.r.t. both operands of every product)
TRAIN_FORWARD_BACKWARD_FACTOR = 3


def spmm_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``recshrink::spmm(rows, cols, values, x, n_rows)``: ``nnz x d`` MACs.

    ``nnz`` is the length of ``values`` (input 2), ``d`` the last dimension of the output.
    """
    nnz = get_shape(inputs[2])[0]
    d = get_shape(outputs[0])[-1]
    return int(nnz) * int(d)


class _Call(nn.Module):
    """Wraps a callable as a traceable module; ``owner`` is registered so its submodules trace."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner
        self._fn = fn

    def forward(self, *args: torch.Tensor) -> Any:
        return self._fn(*args)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit TracerWarnings, fvcore's notes
        yield


@contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    was = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(was)


def _analyse(owner: nn.Module, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]
             ) -> tuple[int, set[str]]:
    """(total MACs, names of skipped operators) of one traced call ``fn(*inputs)``."""
    with _quiet(), torch.no_grad():
        analysis = (
            FlopCountAnalysis(_Call(owner, fn), inputs)
            .set_op_handle(SPMM_OP, spmm_flop_handle)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
        )
        total = int(analysis.total())
        skipped = set(analysis.unsupported_ops())
    return total, skipped


def _linear_fit(b1: int, c1: int, b2: int, c2: int, what: str) -> tuple[Fraction, Fraction]:
    """(fixed, per_example) with ``c = fixed + b x per_example`` through two exact points."""
    per = Fraction(c1 - c2, b1 - b2)
    fixed = c1 - b1 * per
    if per < 0 or fixed < 0:
        raise RuntimeError(f"{what}: MAC count is not affine in the batch size "
                           f"({b1} -> {c1}, {b2} -> {c2})")
    return fixed, per


def _two_sizes(b: int) -> tuple[int, int]:
    """Two distinct batch sizes, the larger ``b`` (or 2 when ``b`` is 1)."""
    return (b, b // 2) if b >= 2 else (2, 1)


def _tensors(out: Any) -> tuple[torch.Tensor, ...]:
    """The tensors among a call's outputs (a traced function must return tensors only)."""
    items = out if isinstance(out, tuple | list) else (out,)
    return tuple(t for t in items if isinstance(t, torch.Tensor))


def _module_device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return default if default is not None else torch.device("cpu")


def count_inference_flops(model: CompressedModel, n_users: int, batch_users: int = 256) -> dict[str, Any]:
    """Multiply-adds to produce the full ranking: propagation once plus all users x all items.

    ``flops_propagation``: one traced ``model.module.propagate()``. ``flops_scoring``: the count
    of ``model.score`` over all ``n_users`` users against all items, obtained without building the
    U x I matrix: ``model.score(u_reps[:b], i_reps)`` is traced on the fixed representations for
    two batch sizes ``b1 = min(n_users, batch_users)`` and ``b2 = b1 // 2`` (2 and 1 if ``b1`` is
    1), which determine the affine count ``fixed + b x per_user`` exactly (integers; the default
    dot product has ``fixed = 0``, ``per_user = I x d``), and the result is
    ``fixed + n_users x per_user`` (traced directly when ``b1 == n_users``). Runs in eval mode
    under ``torch.no_grad``.
    """
    if n_users < 1 or batch_users < 1:
        raise ValueError(f"n_users and batch_users must be >= 1, got {n_users} and {batch_users}")
    module = model.module
    with _mode(module, False):
        prop, skipped = _analyse(module, lambda: _tensors(module.propagate()), ())
        u_reps, i_reps = model.representations()
        u_reps, i_reps = u_reps.detach(), i_reps.detach()

        def scoring(b: int) -> int:
            rows = torch.arange(b, device=u_reps.device) % u_reps.shape[0]
            count, more = _analyse(module, model.score, (u_reps[rows].contiguous(), i_reps))
            skipped.update(more)
            return count

        b1 = min(n_users, batch_users)
        if b1 == n_users:
            score = scoring(n_users)
        else:
            b1, b2 = _two_sizes(b1)
            fixed, per = _linear_fit(b1, scoring(b1), b2, scoring(b2), "scoring")
            total = fixed + n_users * per
            if total.denominator != 1:
                raise RuntimeError(f"scoring MACs extrapolate to a non-integer {total}")
            score = int(total)
    return {
        "flops": prop + score,
        "flops_propagation": prop,
        "flops_scoring": score,
        "flops_unsupported_ops": sorted(skipped),
        "flops_unit": FLOPS_UNIT,
    }


def analytic_lightgcn_flops(nnz: int, dim: int, n_layers: int, n_users: int, n_items: int) -> dict[str, int]:
    """What :func:`count_inference_flops` must give for LightGCN, derived by hand.

    Propagation: ``n_layers`` sparse products of ``nnz x dim`` MACs each; scoring: the
    ``n_users x n_items`` dot products of length ``dim``. The layer sum and mean of the readout
    are elementwise and, like every elementwise operator, not counted.
    """
    prop = n_layers * nnz * dim
    score = n_users * n_items * dim
    return {"flops": prop + score, "flops_propagation": prop, "flops_scoring": score}


def count_train_macs_per_epoch(model: nn.Module, n_train: int, batch_size: int, n_users: int,
                               n_items: int) -> float:
    """Multiply-adds of one training epoch: forward + backward of ``bpr_loss`` on every batch.

    ``model`` is anything with ``bpr_loss(users, pos, neg, reg, reg_form) -> (bpr, penalty)``
    (e.g. :class:`bench.backbone.lightgcn.LightGCN`). One forward is traced on random indices (fixed
    generator, on the parameters' device) for two batch sizes ``b1 = min(batch_size, n_train)``
    and ``b2 = b1 // 2`` (2 and 1 if ``b1`` is 1), which separate the per-batch part
    (propagation, done once per batch) from the per-example part (scoring the triples) exactly.
    An epoch of ``n_train`` triples has ``ceil(n_train / batch_size)`` batches (the last one
    partial), so its forward costs ``n_batches x fixed + n_train x per_example``. The backward is
    taken as twice the forward (the standard approximation: each product needs the gradient of
    both operands), hence the factor 3. The model's mode, parameters and gradients are left as they were.
    """
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"n_train and batch_size must be >= 1, got {n_train} and {batch_size}")
    device = _module_device(model)
    gen = torch.Generator().manual_seed(0)

    def _loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _tensors(model.bpr_loss(users, pos, neg, reg=0.0, reg_form="squared"))

    def forward(b: int) -> int:
        users = torch.randint(n_users, (b,), generator=gen).to(device)
        pos = torch.randint(n_items, (b,), generator=gen).to(device)
        neg = torch.randint(n_items, (b,), generator=gen).to(device)
        count, _ = _analyse(model, _loss, (users, pos, neg))
        return count

    b1, b2 = _two_sizes(min(batch_size, n_train))
    with _mode(model, True):
        fixed, per = _linear_fit(b1, forward(b1), b2, forward(b2), "bpr_loss")
    n_batches = math.ceil(n_train / batch_size)
    return float(TRAIN_FORWARD_BACKWARD_FACTOR * (n_batches * fixed + n_train * per))
