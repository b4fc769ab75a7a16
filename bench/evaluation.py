"""Full-ranking evaluation over all items, chunked by users to a memory budget.

Protocol: every user with at least one held-out item is ranked against *all* items;
items in the ``exclude`` matrices (the user's training items, plus validation items when
testing) are removed from the ranking; users without held-out items are skipped. Metric
definitions live in :mod:`bench.metrics`. Items with equal scores are ranked by item index, the
lower first, as a stable sort would (:func:`bench.ranking.top_k_indices`, which selects the top K
by block-maximum pruning instead of a full-row ``torch.topk``).

The metrics do not depend on the chunk size: each user's row is scored, masked and ranked
independently (``tests/test_metrics.py`` checks this for several chunk sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from bench.metrics import METRIC_NAMES, metric_key, per_user_metrics
from bench.ranking import top_k_indices

DEFAULT_KS: tuple[int, ...] = (10, 20, 40)
DEFAULT_EVAL_MEMORY_BYTES = 512 * 2**20
# bytes of working memory per (user, item) cell of a chunk: float32 score, bool held-out mask,
# and torch.topk's temporary copy of the scores.
_BYTES_PER_CELL = 12


def excluded_splits(split: str) -> tuple[str, ...]:
    """The splits whose items are removed from the ranking when scoring ``split``: the training
    items, plus the validation items when scoring ``test``."""
    return ("train", "valid") if split == "test" else ("train",)


@dataclass
class EvalResult:
    """Averaged metrics over ``n_users`` evaluated users (and optionally per-user values)."""

    metrics: dict[str, float]
    n_users: int
    chunk_users: int
    per_user: dict[str, np.ndarray] = field(default_factory=dict)


def chunk_size_for(n_items: int, memory_bytes: int) -> int:
    """Users per chunk so that a chunk's score matrix and masks fit in ``memory_bytes``."""
    if memory_bytes <= 0:
        raise ValueError(f"evaluation memory budget must be positive, got {memory_bytes}")
    return max(1, int(memory_bytes // (max(n_items, 1) * _BYTES_PER_CELL)))


def _rows_coo(mats: Sequence[sp.csr_matrix], users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local row index and item index of every stored entry of ``mats[k][users]``."""
    rows, cols = [], []
    for m in mats:
        sub = m[users]
        counts = np.diff(sub.indptr)
        rows.append(np.repeat(np.arange(len(users)), counts))
        cols.append(sub.indices)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def _heldout_hits(heldout: sp.csr_matrix, users: np.ndarray, top: torch.Tensor) -> torch.Tensor:
    """``hits[r, j]``: whether item ``top[r, j]`` is held out for user ``users[r]``.

    A sorted-key lookup of the ``(row, item)`` pairs (no dense ``users x items`` mask).
    """
    n_items = heldout.shape[1]
    hr, hc = _rows_coo([heldout], users)
    keys = torch.from_numpy(np.sort(hr * n_items + hc)).to(top.device)
    query = torch.arange(len(users), device=top.device).unsqueeze(1) * n_items + top
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query


def evaluate_scores(
    score_rows: Callable[[torch.Tensor], torch.Tensor],
    heldout: sp.csr_matrix,
    exclude: Sequence[sp.csr_matrix] = (),
    ks: Sequence[int] = DEFAULT_KS,
    memory_bytes: int = DEFAULT_EVAL_MEMORY_BYTES,
    chunk_users: int | None = None,
    device: torch.device | str = "cpu",
    return_per_user: bool = False,
) -> EvalResult:
    """Rank all items for every user with held-out items and average the top-K metrics.

    Args:
        score_rows: maps a 1-D tensor of user ids to their ``(len(users), n_items)`` scores.
        heldout: ``users x items`` CSR matrix of held-out (relevant) items.
        exclude: CSR matrices of the same shape whose entries are removed from the ranking.
        ks: cut-offs; the top ``max(ks)`` list is computed once.
        memory_bytes: memory budget that sets the chunk size (ignored if ``chunk_users``).
        chunk_users: explicit number of users per chunk.
        device: where scores are computed and ranked.
        return_per_user: also return per-user metric arrays (in the order of evaluated users).
    """
    heldout = sp.csr_matrix(heldout)
    n_items = heldout.shape[1]
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks}")
    max_k = min(ks[-1], n_items)
    if ks[-1] > n_items:
        raise ValueError(f"cut-off {ks[-1]} exceeds the number of items ({n_items})")
    exclude = [sp.csr_matrix(m) for m in exclude]
    for m in exclude:
        if m.shape != heldout.shape:
            raise ValueError(f"exclude matrix shape {m.shape} != held-out shape {heldout.shape}")
    n_heldout_all = np.diff(heldout.indptr)
    users = np.flatnonzero(n_heldout_all > 0)
    step = chunk_users if chunk_users is not None else chunk_size_for(n_items, memory_bytes)
    if step < 1:
        raise ValueError(f"chunk_users must be >= 1, got {step}")
    device = torch.device(device)
    names = [metric_key(m, k) for m in METRIC_NAMES for k in ks]
    per_user: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(users), step):
        chunk = users[start : start + step]
        scores = score_rows(torch.from_numpy(chunk).to(device)).to(torch.float32)
        if scores.shape != (len(chunk), n_items):
            raise ValueError(
                f"score_rows returned shape {tuple(scores.shape)}, "
                f"expected {(len(chunk), n_items)}"
            )
        scores = scores.clone() if not scores.is_contiguous() else scores
        r, c = _rows_coo(exclude, chunk)
        if len(r):
            scores[torch.from_numpy(r).to(device), torch.from_numpy(c).to(device)] = -torch.inf
        top = top_k_indices(scores, max_k)
        del scores
        hits = _heldout_hits(heldout, chunk, top)
        n_held = torch.from_numpy(n_heldout_all[chunk]).to(device)
        values = per_user_metrics(hits, n_held, ks)
        for name, v in values.items():
            per_user[name].append(v.cpu().numpy())
    n_eval = len(users)
    # one sum over all users (not per-chunk partial sums), so the mean does not depend on chunking
    values_all = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in per_user.items()}
    metrics = {k: (float(v.sum() / n_eval) if n_eval else float("nan"))
               for k, v in values_all.items()}
    result = EvalResult(metrics=metrics, n_users=n_eval, chunk_users=step)
    if return_per_user:
        result.per_user = values_all
    return result


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    heldout: sp.csr_matrix,
    exclude: Sequence[sp.csr_matrix] = (),
    ks: Sequence[int] = DEFAULT_KS,
    memory_bytes: int = DEFAULT_EVAL_MEMORY_BYTES,
    chunk_users: int | None = None,
    return_per_user: bool = False,
) -> EvalResult:
    """Full-ranking evaluation of dot-product scores ``user_emb @ item_emb.T``."""
    item_t = item_emb.t().contiguous()
    buffer: list[torch.Tensor] = []

    def score_rows(u: torch.Tensor) -> torch.Tensor:
        # one score buffer reused by every chunk (evaluate_scores masks it in place): a fresh
        # chunk-sized allocation per chunk costs its page faults every time
        if not buffer or buffer[0].shape[0] < len(u):
            buffer[:] = [torch.empty(len(u), item_t.shape[1], dtype=item_t.dtype, device=item_t.device)]
        out = buffer[0][: len(u)]
        return torch.mm(user_emb[u], item_t, out=out)

    with torch.no_grad():
        return evaluate_scores(
            score_rows,
            heldout,
            exclude,
            ks=ks,
            memory_bytes=memory_bytes,
            chunk_users=chunk_users,
            device=user_emb.device,
            return_per_user=return_per_user,
        )
