"""Top-K ranking metrics: the one place where every metric of the suite is defined.

All metrics are computed per evaluated user from the user's ranked top-K list and the set of
that user's held-out items, then averaged over evaluated users (users with at least one
held-out item). With ``hits[r] = 1`` if the item at rank ``r`` (1-based) is held out and
``n = |held-out items|``:

* ``recall@K    = sum_{r<=K} hits[r] / n`` (divides by n, not min(K, n): the LightGCN and
  RecBole convention, so recall@K can stay below 1 when n > K);
* ``precision@K = sum_{r<=K} hits[r] / K``;
* ``hit@K       = 1 if any hit in the top K else 0``;
* ``ndcg@K      = DCG@K / IDCG@K`` with ``DCG@K = sum_{r<=K} hits[r] / log2(r + 1)`` and
  ``IDCG@K = sum_{r<=min(n, K)} 1 / log2(r + 1)`` (binary relevance);
* ``mrr@K       = 1 / (rank of the first hit)`` if there is a hit in the top K, else 0.

These are the definitions of RecBole 1.2.1's ``recbole.evaluator.metrics`` (Recall, Precision,
Hit, NDCG, MRR); the ``recbole`` test environment checks equality on shared inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "precision", "hit", "mrr")


def metric_key(name: str, k: int) -> str:
    """Stable output name of a metric, e.g. ``recall@20``."""
    return f"{name}@{k}"


def _discounts(max_k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1 / log2(r + 1)`` for ranks r = 1..max_k."""
    ranks = torch.arange(1, max_k + 1, dtype=dtype, device=device)
    return 1.0 / torch.log2(ranks + 1.0)


def per_user_metrics(
    hits: torch.Tensor, n_heldout: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-user metric values from a top-K hit matrix.

    Args:
        hits: ``(users, max_k)`` 0/1 tensor; column r-1 says whether the item ranked r is held out.
        n_heldout: ``(users,)`` number of held-out items of each user (all > 0).
        ks: cut-offs, each <= ``hits.shape[1]``.

    Returns:
        ``{"recall@K": (users,) float64 tensor, ...}`` for every metric in METRIC_NAMES and K.
    """
    if hits.dim() != 2:
        raise ValueError(f"hits must be 2-D (users x max_k), got shape {tuple(hits.shape)}")
    max_k = hits.shape[1]
    bad = [k for k in ks if k < 1 or k > max_k]
    if bad:
        raise ValueError(f"cut-offs {bad} outside 1..{max_k} (the width of the top-K list)")
    if bool((n_heldout <= 0).any()):
        raise ValueError("every evaluated user needs at least one held-out item")
    h = hits.to(torch.float64)
    n = n_heldout.to(torch.float64)
    disc = _discounts(max_k, torch.float64, h.device)
    cum_hits = h.cumsum(dim=1)
    cum_dcg = (h * disc).cumsum(dim=1)
    cum_idcg = disc.cumsum(dim=0)
    # rank (1-based) of the first hit, max_k + 1 when there is none in the list
    ranks = torch.arange(1, max_k + 1, device=h.device, dtype=torch.float64)
    first = torch.where(h > 0, ranks, torch.full_like(h, float(max_k + 1))).min(dim=1).values
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        n_hits = cum_hits[:, k - 1]
        ideal = cum_idcg[(torch.clamp(n, max=k) - 1).long()]
        out[metric_key("recall", k)] = n_hits / n
        out[metric_key("ndcg", k)] = cum_dcg[:, k - 1] / ideal
        out[metric_key("precision", k)] = n_hits / k
        out[metric_key("hit", k)] = (n_hits > 0).to(torch.float64)
        out[metric_key("mrr", k)] = torch.where(
            first <= k, 1.0 / first, torch.zeros_like(first)
        )
    return out
