"""Uniform negative sampling that never returns a training positive (vectorised, seeded)."""

from __future__ import annotations

import numpy as np
import torch


class NegativeSampler:
    """Draws, for each given user, one item uniformly among the items the user has not trained on.

    Rejection sampling on the whole batch at once: draw uniform items, look the (user, item) keys
    up in the sorted training keys with ``searchsorted``, redraw the collisions only.
    """

    def __init__(self, train_pairs: np.ndarray, n_users: int, n_items: int) -> None:
        pairs = np.asarray(train_pairs, dtype=np.int64)
        self.n_items = n_items
        keys = np.unique(pairs[:, 0] * n_items + pairs[:, 1]) if len(pairs) else np.zeros(0)
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
