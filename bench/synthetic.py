"""Synthetic user-item graphs with power-law degrees, for measuring how training and
evaluation scale with the graph size (:mod:`bench.perf.scaling`).

Model: a bipartite **Chung-Lu** graph (Chung and Lu, 2002) with Zipf popularity weights. Users
and items are ranked ``r = 0, 1, ...``; rank ``r`` has weight ``w_r ∝ (r + 1)^-alpha`` (one
exponent for users, one for items). Every edge draws its user and its item independently, each
with probability proportional to the weights, so the expected degree of rank ``r`` is
proportional to ``(r + 1)^-alpha``: the rank-degree plot is a line of slope ``-alpha`` on log-log
axes, i.e. a degree distribution with tail ``P(deg >= k) ∝ k^(-1/alpha)``.

Construction of :func:`powerlaw_interactions`, all vectorised with one seeded
``numpy.random.Generator``:

1. ``n_users = round(users_per_edge * n_edges)`` and ``n_items = round(items_per_edge *
   n_edges)`` (raised for very small graphs so that the user-item matrix is at most a quarter
   full): node counts grow linearly with the edges, the mean degrees stay constant.
2. The first ``n_users`` draws take every user once (so that every user has a training edge), the
   other draws take users from the weights; items always come from the weights.
3. Pairs are encoded as int64 keys ``user * n_items + item`` and deduplicated by sorting;
   repeated pairs (heavy users meeting heavy items) are replaced by drawing exactly the missing
   number again, rejecting keys already present, until there are exactly ``n_edges`` distinct
   training pairs.
4. Validation and test pairs are drawn from the same model, distinct and never a training pair,
   and split at random into two disjoint sets of ``round(fraction * n_edges)`` pairs each (at
   least one when the fraction is positive).
5. Ranks are mapped to ids by a random permutation of users and of items (heavy nodes are spread
   over the id space as in real data); each split is sorted by (user, item).

The same arguments give the same arrays. Cost: a few sorts of int64 arrays of length ``n_edges``
and no per-edge Python code (10^7 edges: about 5 s on one core and 0.5 GiB peak RSS).
"""

from __future__ import annotations

import math

import numpy as np

from bench.data.dataset import InteractionData

MODEL = "bipartite Chung-Lu with Zipf weights w_r ∝ (r+1)^-alpha"
# the user-item matrix is at most this full (small graphs get more items), so that the rejection
# sampling of distinct pairs stays fast and users keep items to sample negatives from
_MAX_DENSITY = 0.25


def _zipf_probabilities(n: int, alpha: float) -> np.ndarray:
    """Probabilities proportional to the weights ``(r + 1)^-alpha``, ``r = 0..n-1``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return w / w.sum()


def _draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """``size`` i.i.d. ranks with probabilities ``p``, in increasing order.

    Drawn as multinomial counts per rank and expanded, which is the same distribution as
    ``size`` independent draws (sorted) at O(len(p) + size) cost.
    """
    return np.repeat(np.arange(len(p), dtype=np.int64), rng.multinomial(size, p))


def _draw_keys(rng: np.random.Generator, p_item: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Keys ``user * n_items + item`` of the given users, each with an independent item draw."""
    items = _draw(rng, p_item, len(users))
    rng.shuffle(items)  # the draws come sorted: shuffling pairs them independently with the users
    return users * len(p_item) + items


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """The distinct values of ``x``, sorted (sorts ``x`` in place)."""
    x.sort()
    if len(x) == 0:
        return x
    keep = np.empty(len(x), dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _contains(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``query`` occur in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(query), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return sorted_keys[pos] == query


def _distinct_keys(
    rng: np.random.Generator,
    p_user: np.ndarray,
    p_item: np.ndarray,
    n_wanted: int,
    forbidden: np.ndarray,
    first: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    """Exactly ``n_wanted`` distinct pair keys (sorted) drawn from the model, none in ``forbidden``.

    ``first`` (keys, consumed) are taken before any further draw, duplicates and forbidden keys
    dropped. Returns the keys, the number of pairs drawn and the number of top-up rounds.
    """
    draws, rounds = len(first), 0
    keys = _sorted_unique(first)
    keys = keys[~_contains(forbidden, keys)]
    extra = np.zeros(0, dtype=np.int64)  # top-ups, kept apart so that `keys` is merged only once
    while len(keys) + len(extra) < n_wanted:
        need = n_wanted - len(keys) - len(extra)
        new = _sorted_unique(_draw_keys(rng, p_item, _draw(rng, p_user, need)))
        new = new[~(_contains(keys, new) | _contains(forbidden, new) | _contains(extra, new))]
        extra = np.sort(np.concatenate([extra, new]))
        draws += need
        rounds += 1
    if len(extra):
        keys = np.concatenate([keys, extra])
        keys.sort()
    return keys, draws, rounds


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _pairs_from_keys(keys: np.ndarray, n_items: int, user_ids: np.ndarray,
                     item_ids: np.ndarray) -> np.ndarray:
    """(user, item) id pairs of rank-space keys, sorted by (user, item)."""
    ids = user_ids[keys // n_items] * n_items + item_ids[keys % n_items]
    ids.sort()
    return np.stack([ids // n_items, ids % n_items], axis=1)


def powerlaw_interactions(
    n_edges: int,
    seed: int = 0,
    *,
    users_per_edge: float = 0.03,
    items_per_edge: float = 0.04,
    alpha_user: float = 0.4,
    alpha_item: float = 0.7,
    valid_fraction: float = 0.01,
    test_fraction: float = 0.02,
) -> InteractionData:
    """A bipartite power-law (Chung-Lu, Zipf weights) interaction dataset; see the module docstring.

    Args:
        n_edges: exact number of distinct training (user, item) pairs, >= 1.
        seed: seed of the ``numpy.random.Generator`` that makes everything.
        users_per_edge: users per training edge (``1 / mean user degree``), in (0, 1]. The
            defaults (mean user degree about 33, item degree 25) are close to Gowalla, Yelp2018
            and Amazon-Book as used by LightGCN.
        items_per_edge: items per training edge, > 0.
        alpha_user: Zipf exponent of user activity (rank-degree slope ``-alpha_user``), >= 0.
        alpha_item: Zipf exponent of item popularity, >= 0.
        valid_fraction: validation pairs per training edge, in [0, 1).
        test_fraction: test pairs per training edge, in [0, 1).

    Returns:
        :class:`InteractionData` named ``powerlaw-<n_edges>`` with ``n_edges`` training pairs,
        every user holding at least one, and disjoint validation and test pairs outside the
        training set; ``info`` records the model, its parameters and the sampling counts.
    """
    if isinstance(n_edges, bool) or not isinstance(n_edges, (int, np.integer)):
        if isinstance(n_edges, float) and n_edges.is_integer():
            n_edges = int(n_edges)
        else:
            raise ValueError(f"n_edges must be an integer >= 1, got {n_edges!r}")
    n_edges = int(n_edges)
    if n_edges < 1:
        raise ValueError(f"n_edges must be >= 1, got {n_edges}")
    if not 0.0 < users_per_edge <= 1.0:
        raise ValueError(f"users_per_edge must be in (0, 1], got {users_per_edge!r}")
    if not items_per_edge > 0.0:
        raise ValueError(f"items_per_edge must be > 0, got {items_per_edge!r}")
    for name, alpha in (("alpha_user", alpha_user), ("alpha_item", alpha_item)):
        if not (math.isfinite(alpha) and alpha >= 0.0):
            raise ValueError(f"{name} must be a finite number >= 0, got {alpha!r}")
    _check_fraction("valid_fraction", valid_fraction)
    _check_fraction("test_fraction", test_fraction)

    def heldout_count(fraction: float) -> int:
        return max(1, round(fraction * n_edges)) if fraction > 0 else 0

    n_valid, n_test = heldout_count(valid_fraction), heldout_count(test_fraction)
    n_total = n_edges + n_valid + n_test
    n_users = max(1, round(users_per_edge * n_edges))
    n_items = max(1, round(items_per_edge * n_edges), math.ceil(n_total / (_MAX_DENSITY * n_users)))

    rng = np.random.default_rng(seed)
    p_user = _zipf_probabilities(n_users, alpha_user)
    p_item = _zipf_probabilities(n_items, alpha_item)
    users = np.concatenate([np.arange(n_users, dtype=np.int64), _draw(rng, p_user, n_edges - n_users)])
    train_keys, train_draws, train_rounds = _distinct_keys(
        rng, p_user, p_item, n_edges, np.zeros(0, dtype=np.int64), _draw_keys(rng, p_item, users))
    del users
    held_keys, held_draws, held_rounds = _distinct_keys(
        rng, p_user, p_item, n_valid + n_test, train_keys, np.zeros(0, dtype=np.int64))
    held_keys = held_keys[rng.permutation(len(held_keys))]

    user_ids = rng.permutation(n_users).astype(np.int64)
    item_ids = rng.permutation(n_items).astype(np.int64)
    train = _pairs_from_keys(train_keys, n_items, user_ids, item_ids)
    del train_keys
    valid = _pairs_from_keys(held_keys[:n_valid], n_items, user_ids, item_ids)
    test = _pairs_from_keys(held_keys[n_valid:], n_items, user_ids, item_ids)
    degree = np.bincount(train[:, 0], minlength=n_users)
    if degree.max() >= n_items:
        raise ValueError(
            f"powerlaw graph with {n_edges} edges: a user interacted with all {n_items} items, so no "
            "negative can be sampled; use more edges or a larger items_per_edge"
        )
    info = {
        "source": "synthetic",
        "model": MODEL,
        "params": {
            "n_edges": n_edges, "seed": seed, "users_per_edge": users_per_edge,
            "items_per_edge": items_per_edge, "alpha_user": alpha_user, "alpha_item": alpha_item,
            "valid_fraction": valid_fraction, "test_fraction": test_fraction,
        },
        "draws": {"train": train_draws, "heldout": held_draws},
        "topup_rounds": {"train": train_rounds, "heldout": held_rounds},
        "duplicates_removed": int(train_draws - n_edges),
    }
    return InteractionData(f"powerlaw-{n_edges}", n_users, n_items, train, valid, test, info=info)
