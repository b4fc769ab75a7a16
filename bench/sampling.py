"""Training triples for one epoch: uniform negatives that are never a training positive.

* :class:`NegativeSampler`: one uniform negative per user, vectorised rejection sampling.
* :class:`InteractionSampler` (the harness default, LightGCN §4.1): every training interaction
  once per epoch with one negative, shuffled.
* :class:`MultiNegativeSampler` (LEGCF's protocol, docs/methods/legcf.md): ``|train|`` users drawn
  uniformly with replacement, one random positive and ``n_neg`` distinct negatives per draw.

An epoch sampler returns the epoch's ``(users, pos, neg)`` triples in batch order; ``batch_triples``
says how many triples one optimiser step takes for the budget's ``batch_size``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from bench.data.preprocess import sorted_unique


class NegativeSampler:
    """Draws, for each given user, one item uniformly among the items the user has not trained on.

    Rejection sampling on the whole batch at once: draw uniform items, look the (user, item) keys
    up in the sorted training keys with ``searchsorted``, redraw the collisions only.
    """

    def __init__(self, train_pairs: np.ndarray, n_users: int, n_items: int) -> None:
        pairs = np.asarray(train_pairs, dtype=np.int64)
        self.n_items = n_items
        keys = sorted_unique(pairs[:, 0] * n_items + pairs[:, 1]) if len(pairs) else np.zeros(0)
        self.keys = torch.from_numpy(keys.astype(np.int64))
        degree = np.bincount(pairs[:, 0], minlength=n_users) if len(pairs) else np.zeros(n_users)
        full = np.flatnonzero(degree >= n_items)
        if len(full):
            raise ValueError(
                f"users {full[:5].tolist()} interacted with every item: no negative can be sampled"
            )

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        q = users.to(torch.int64) * self.n_items + items.to(torch.int64)
        if self.keys.numel() == 0:
            return torch.zeros_like(q, dtype=torch.bool)
        idx = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[idx] == q

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        users = users.cpu()
        neg = torch.randint(self.n_items, (users.numel(),), generator=generator)
        bad = self.is_positive(users, neg)
        while bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            neg[idx] = torch.randint(self.n_items, (idx.numel(),), generator=generator)
            bad[idx] = self.is_positive(users[idx], neg[idx])
        return neg


class EpochSampler(Protocol):
    """What :func:`bench.training.fit_bpr` needs from a sampler."""

    triples_per_epoch: int

    def epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def batch_triples(self, batch_size: int) -> int: ...


class InteractionSampler:
    """Every training interaction once, one uniform negative each, in a random order.

    Draws the negatives first, then the permutation, from the same generator (the order the
    harness has always used, so seeded results do not change).
    """

    def __init__(self, train_pairs: np.ndarray, n_users: int, n_items: int) -> None:
        self.negatives = NegativeSampler(train_pairs, n_users, n_items)
        self.users = torch.from_numpy(np.ascontiguousarray(train_pairs[:, 0], dtype=np.int64))
        self.items = torch.from_numpy(np.ascontiguousarray(train_pairs[:, 1], dtype=np.int64))
        self.triples_per_epoch = len(train_pairs)

    def epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        neg = self.negatives.sample(self.users, generator)
        perm = torch.randperm(self.triples_per_epoch, generator=generator)
        return self.users[perm], self.items[perm], neg[perm]

    def batch_triples(self, batch_size: int) -> int:
        return batch_size


class MultiNegativeSampler:
    """LEGCF's sampler (docs/methods/legcf.md, from the authors' data loader).

    Per epoch, ``|train|`` users are drawn uniformly with replacement among **all** users and the
    draws of users without a training item are skipped. Each draw takes one positive uniformly
    among the user's training items and ``n_neg`` distinct negatives (never a training positive),
    giving ``n_neg`` triples ``(u, i+, i-)``. Grouped (the default), a draw's triples stay together
    in one batch and ``batch_size`` counts draws, so a step takes ``batch_size * n_neg`` triples;
    with ``shuffle_triples`` the epoch's triples are permuted as one list and ``batch_size`` counts
    triples (the authors' loader: all triples shuffled, then minibatches of ``bpr_batch``).
    """

    def __init__(self, train_pairs: np.ndarray, n_users: int, n_items: int, n_neg: int = 5,
                 shuffle_triples: bool = False) -> None:
        if n_neg < 1:
            raise ValueError(f"n_neg must be >= 1, got {n_neg}")
        self.negatives = NegativeSampler(train_pairs, n_users, n_items)
        keys = self.negatives.keys.numpy()  # the distinct (user, item) keys, sorted
        users, items = keys // n_items, keys % n_items
        degree = np.bincount(users, minlength=n_users)
        if (n_items - degree).min(initial=n_items) < n_neg:
            worst = int(np.argmax(degree))
            raise ValueError(f"user {worst} has only {n_items - degree[worst]} non-positive items; "
                             f"{n_neg} distinct negatives cannot be drawn")
        self.n_users, self.n_items, self.n_neg = n_users, n_items, n_neg
        self.shuffle_triples = shuffle_triples
        self.n_draws = len(train_pairs)
        self.indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(degree)]))
        self.degree = torch.from_numpy(degree)
        self.items = torch.from_numpy(items)
        active = float((degree > 0).mean()) if n_users else 0.0
        self.triples_per_epoch = max(1, round(self.n_draws * active)) * n_neg

    def epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        users = torch.randint(self.n_users, (self.n_draws,), generator=generator)
        users = users[self.degree[users] > 0]
        offset = (torch.rand(users.numel(), generator=generator, dtype=torch.float64)
                  * self.degree[users]).long()
        pos = self.items[self.indptr[users] + offset]
        neg = self.distinct_negatives(users, generator)
        k = self.n_neg
        users, pos, neg = users.repeat_interleave(k), pos.repeat_interleave(k), neg.reshape(-1)
        if self.shuffle_triples:
            perm = torch.randperm(users.numel(), generator=generator)
            users, pos, neg = users[perm], pos[perm], neg[perm]
        return users, pos, neg

    def distinct_negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(len(users), n_neg)`` items, distinct within a row, none a positive of the row's user."""
        cols: list[torch.Tensor] = []
        for _ in range(self.n_neg):
            col = torch.randint(self.n_items, (users.numel(),), generator=generator)
            bad = self._clash(users, col, cols)
            while bool(bad.any()):
                idx = bad.nonzero().squeeze(1)
                col[idx] = torch.randint(self.n_items, (idx.numel(),), generator=generator)
                bad[idx] = self._clash(users[idx], col[idx], [c[idx] for c in cols])
            cols.append(col)
        return torch.stack(cols, dim=1)

    def _clash(self, users: torch.Tensor, col: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
        bad = self.negatives.is_positive(users, col)
        for c in earlier:
            bad |= c == col
        return bad

    def batch_triples(self, batch_size: int) -> int:
        return batch_size if self.shuffle_triples else batch_size * self.n_neg
