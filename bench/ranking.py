"""Exact top-K selection for full ranking: block-maximum pruning, ties to the lower item index.

``torch.topk`` over a whole score row is the slowest part of full-ranking evaluation on CPU (it
copies every (value, index) pair of the row into a buffer before a partial sort: about 5 ns per
score, several times the cost of the dense GEMM that computes the scores). :func:`top_k_indices`
returns the same list with about one vectorised pass over the row:

1. Split the row into blocks of ``block`` items and take each block's maximum (``amax``).
2. Let ``v`` be the K-th largest block maximum. If the (K+1)-th is strictly smaller, exactly K
   blocks have a maximum >= ``v`` and they hold the whole top K: those K blocks contain K items
   >= ``v``, while every item outside them is < ``v`` and so has at least K items above it.
3. Rank only the ``K * block`` candidates of those blocks (``torch.topk`` on a short row).

Ties are resolved as a stable sort would, to the lower item index (the convention of the
brute-force reference in ``tests/test_metrics.py``). Rows where the pruning step meets a tie (equal
block maxima at the boundary, e.g. a row with fewer than K finite scores or a constant row) and rows
whose top K + 1 candidates contain equal values take the exact path: a stable descending sort of the
full row. For learned float scores these rows are rare.
"""

from __future__ import annotations

import torch

DEFAULT_BLOCK = 32


def _stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: the first ``k`` indices of a stable descending sort (ties to the lower index)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def _has_ties(values: torch.Tensor) -> torch.Tensor:
    """Rows of a descending-sorted ``values`` matrix with two equal neighbours."""
    if values.shape[1] < 2:
        return torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    return (values[:, :-1] == values[:, 1:]).any(dim=1)


def _redo_exact(out: torch.Tensor, exact: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Replace the rows flagged in ``exact`` by the stable-sort reference (in place); return ``out``."""
    if bool(exact.any()):
        redo = exact.nonzero().squeeze(1)
        out[redo] = _stable_topk(scores[redo], k)
    return out


def top_k_indices(scores: torch.Tensor, k: int, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Indices of the ``k`` largest entries of each row of ``scores``, best first.

    Equal to the first ``k`` columns of a stable descending sort of each row (ties to the lower
    index), computed by block-maximum pruning (module docstring). ``scores`` is ``(rows, n)``
    with ``1 <= k <= n``; NaN scores are not supported (``-inf`` is, e.g. for masked items).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D, got shape {tuple(scores.shape)}")
    n_rows, n = scores.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n_full = n // block  # whole blocks; the last ``n - n_full * block`` items are the tail
    if n_rows == 0:
        return _stable_topk(scores, k)
    if n_full <= 2 * k + 1:  # short rows: the whole row is the candidate set
        best = torch.topk(scores, min(k + 1, n), dim=1, sorted=True)
        return _redo_exact(best.indices[:, :k], _has_ties(best.values), scores, k)
    full = n_full * block
    blocks3 = scores[:, :full].unflatten(1, (n_full, block))
    top_blocks = torch.topk(blocks3.amax(dim=2), k + 1, dim=1, sorted=True)
    # exactly k whole blocks reach the k-th largest block maximum: they, plus the tail items (always
    # candidates), hold the top k (module docstring)
    fast = top_blocks.values[:, k - 1] > top_blocks.values[:, k]
    blocks = torch.sort(top_blocks.indices[:, :k], dim=1).values  # ascending: candidates in item order
    rows = torch.arange(n_rows, device=scores.device).unsqueeze(1)
    values = blocks3[rows, blocks].flatten(1)  # (rows, k * block), whole blocks copied at once
    if full < n:
        values = torch.cat([values, scores[:, full:]], dim=1)
    best = torch.topk(values, min(k + 1, values.shape[1]), dim=1, sorted=True)
    # a tie among the candidates' top k+1 needs the stable order: exact path
    exact = ~fast | _has_ties(best.values)
    pos = best.indices[:, :k]
    in_block = pos < k * block
    block_pos = pos.clamp(max=k * block - 1)
    out = torch.where(in_block, blocks.gather(1, block_pos // block) * block + block_pos % block,
                      full + pos - k * block)
    return _redo_exact(out, exact, scores, k)
