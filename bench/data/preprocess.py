"""Preprocessing of raw interactions and the split protocols.

Steps, in order, each recorded in the dataset's ``info``:

1. implicit feedback: keep interactions with ``rating >= threshold`` (no threshold: keep all);
2. duplicate removal: one interaction per (user, item), keeping the earliest timestamp;
3. k-core filtering: repeatedly drop users with fewer than ``k_user`` and items with fewer
   than ``k_item`` interactions until none is left to drop;
4. id remapping to ``0..n-1`` (sorted original ids; tokens in order of first appearance);
5. split: ``given`` (the files' own splits; ``valid_from_train`` carves a per-user validation
   share from train when no validation file exists), ``ratio`` (random per user, default
   70:5:25 as in the LightGNN paper), ``loo`` (leave-one-out: the last interaction by time, or a
   random one without timestamps, to test; the one before to validation) or ``temporal``
   (``scope = "global"``: one time cut over all interactions; ``"user"``: each user's history
   in time order, split by the ratios).

Per-user ratio counts: ``floor(ratio * n)`` for validation and test, the rest to train; then,
while the user keeps at least two training items, a split whose exact share ``ratio * n`` lies
in (0, 1) gets one item from train, test first (so small users still get held-out items).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np

from bench.data.readers import RawInteractions


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-D array, by sort and neighbour comparison.

    Same result; numpy 2.4's ``np.unique`` takes ~11 s on 10^7 int64 keys, this ~0.7 s.
    """
    values = np.sort(np.asarray(values).ravel())
    if values.size < 2:
        return values
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]

DEFAULT_RATIOS = (0.7, 0.05, 0.25)
_INT64_MAX = int(np.iinfo(np.int64).max)


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """``user * n_items + item`` as int64, one key per (user, item) pair, unique per pair.

    Raises ``ValueError`` instead of letting a key wrap around when the largest user id times
    ``n_items`` does not fit int64 (a wrapped key would merge two users' pairs).
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.size:
        top_user, top_item = int(users.max()), int(items.max())
        if top_item >= n_items or top_user * n_items + n_items - 1 > _INT64_MAX:
            raise ValueError(f"(user, item) pair keys overflow int64: user ids up to {top_user} with "
                             f"{n_items} items; ids must be dense 0..n-1 (at most 2**31 - 1)")
    return users * n_items + items


def implicit(raw: RawInteractions, threshold: float | None) -> tuple[RawInteractions, int]:
    """Keep interactions with rating >= threshold; returns the kept data and the number dropped."""
    if threshold is None:
        return raw, 0
    if raw.ratings is None:
        raise ValueError(f"{raw.source}: a rating threshold was set but the file has no ratings")
    keep = raw.ratings >= threshold
    return _subset(raw, keep), int((~keep).sum())


def _subset(raw: RawInteractions, keep: np.ndarray) -> RawInteractions:
    return RawInteractions(
        raw.users[keep],
        raw.items[keep],
        None if raw.ratings is None else raw.ratings[keep],
        None if raw.timestamps is None else raw.timestamps[keep],
        raw.tokens,
        raw.source,
    )


def deduplicate(users: np.ndarray, items: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Indices of the first occurrence of each (user, item) pair (earliest timestamp if given)."""
    order = np.lexsort((times, items, users)) if times is not None else np.lexsort((items, users))
    u, i = users[order], items[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return np.sort(order[first])


def kcore(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int) -> np.ndarray:
    """Boolean mask of the interactions that survive iterative (k_user, k_item)-core filtering."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        u, i = users[keep], items[keep]
        _, uinv, ucnt = np.unique(u, return_inverse=True, return_counts=True)
        _, iinv, icnt = np.unique(i, return_inverse=True, return_counts=True)
        ok = (ucnt[uinv] >= k_user) & (icnt[iinv] >= k_item)
        if ok.all():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False


def remap_ids(values: np.ndarray, tokens: bool) -> tuple[np.ndarray, int]:
    """Map ids to 0..n-1: integer ids in ascending order, tokens in order of first appearance."""
    if tokens:
        uniq, first, inv = np.unique(values, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        return rank[inv], len(uniq)
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.astype(np.int64), len(uniq)


def ratio_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, valid, test) sizes for a user with ``n`` interactions (see module docstring)."""
    n_valid = int(np.floor(ratios[1] * n))
    n_test = int(np.floor(ratios[2] * n))
    n_train = n - n_valid - n_test
    if n_train > 1 and 0 < ratios[2] * n < 1:
        n_test += 1
        n_train -= 1
    if n_train > 1 and 0 < ratios[1] * n < 1:
        n_valid += 1
        n_train -= 1
    return n_train, n_valid, n_test


def check_ratios(ratios: Any) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3 or any(x < 0 for x in r) or r[0] <= 0 or abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1 with a "
                         f"positive train share, got {list(ratios)}")
    return r  # type: ignore[return-value]


def _group_starts(users_sorted: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1], True])


def split_per_user(
    users: np.ndarray, order_key: np.ndarray, ratios: tuple[float, float, float]
) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) per interaction, users ordered by ``order_key``.

    Within a user the first interactions by ``order_key`` go to train, then valid, then test.
    """
    idx = np.lexsort((order_key, users))
    bounds = _group_starts(users[idx])
    labels = np.zeros(len(users), dtype=np.int8)
    for a, b in pairwise(bounds):
        n_train, n_valid, _ = ratio_counts(int(b - a), ratios)
        labels[idx[a + n_train : a + n_train + n_valid]] = 1
        labels[idx[a + n_train + n_valid : b]] = 2
    return labels


def split_ratio(users: np.ndarray, seed: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """Random per-user ratio split (seeded)."""
    key = np.random.default_rng(seed).permutation(len(users))
    return split_per_user(users, key, ratios)


def split_loo(users: np.ndarray, times: np.ndarray | None, seed: int) -> np.ndarray:
    """Leave-one-out: last (by time, or random) to test, the one before to valid (needs >= 3)."""
    key = times if times is not None else np.random.default_rng(seed).permutation(len(users))
    # secondary random key breaks timestamp ties reproducibly
    tie = np.random.default_rng(seed).permutation(len(users))
    idx = np.lexsort((tie, key, users))
    bounds = _group_starts(users[idx])
    labels = np.zeros(len(users), dtype=np.int8)
    for a, b in pairwise(bounds):
        n = b - a
        if n >= 2:
            labels[idx[b - 1]] = 2
        if n >= 3:
            labels[idx[b - 2]] = 1
    return labels


def split_temporal(
    users: np.ndarray, times: np.ndarray | None, ratios: tuple[float, float, float], scope: str
) -> np.ndarray:
    """Temporal split: a global time cut (scope ``global``) or per-user time order (``user``)."""
    if times is None:
        raise ValueError("the temporal split needs timestamps, and the data has none")
    if scope == "user":
        return split_per_user(users, times, ratios)
    if scope != "global":
        raise ValueError(f"temporal split scope must be 'global' or 'user', got {scope!r}")
    order = np.argsort(times, kind="stable")
    n = len(order)
    n_train = round(ratios[0] * n)
    n_valid = round(ratios[1] * n)
    labels = np.full(n, 2, dtype=np.int8)
    labels[order[:n_train]] = 0
    labels[order[n_train : n_train + n_valid]] = 1
    return labels
