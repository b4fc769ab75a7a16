"""The in-memory dataset: an id space and three disjoint interaction splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

#: share of a validation or test split's pairs with a cold user or item above which we warn
COLD_PAIR_WARN_SHARE = 0.03


class EmptySplitError(ValueError):
    """A split that the protocol needs has no interactions."""


def _as_pairs(pairs: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} pairs must have shape (n, 2), got {arr.shape}")
    return arr


@dataclass
class InteractionData:
    """Users ``0..n_users-1``, items ``0..n_items-1``, and train / valid / test (user, item) pairs.

    Pairs are unique within each split and the splits are disjoint (the loader guarantees it).
    ``info`` records how the data was made (source files and checksums, preprocessing options)
    and counts of what was removed; :meth:`stats` adds the sizes.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train = _as_pairs(self.train, "train")
        self.valid = _as_pairs(self.valid, "valid")
        self.test = _as_pairs(self.test, "test")
        for split, arr in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            if len(arr) and (arr.min(axis=0) < 0).any():
                raise ValueError(f"{self.name}: negative id in the {split} split")
            if len(arr) and (arr[:, 0].max() >= self.n_users or arr[:, 1].max() >= self.n_items):
                raise ValueError(f"{self.name}: id outside the id space in the {split} split")

    def matrix(self, split: str) -> sp.csr_matrix:
        """``n_users x n_items`` 0/1 CSR matrix of a split ("train", "valid" or "test")."""
        pairs = getattr(self, split)
        data = np.ones(len(pairs), dtype=np.float32)
        return sp.csr_matrix(
            (data, (pairs[:, 0], pairs[:, 1])), shape=(self.n_users, self.n_items)
        )

    def fingerprint(self) -> str:
        """sha256 of the id space and the three splits: identifies the exact data of a result."""
        h = hashlib.sha256()
        h.update(np.array([self.n_users, self.n_items], dtype=np.int64).tobytes())
        for arr in (self.train, self.valid, self.test):
            h.update(np.int64(len(arr)).tobytes())
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        """Sizes and counts, with the stable keys of ``recshrink datasets NAME --json``."""
        train_users = np.unique(self.train[:, 0]) if len(self.train) else np.zeros(0, np.int64)
        test_users = np.unique(self.test[:, 0]) if len(self.test) else np.zeros(0, np.int64)
        valid_users = np.unique(self.valid[:, 0]) if len(self.valid) else np.zeros(0, np.int64)
        train_items = np.unique(self.train[:, 1]) if len(self.train) else np.zeros(0, np.int64)
        n_train = len(self.train)
        out: dict[str, Any] = {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": n_train,
            "n_valid": len(self.valid),
            "n_test": len(self.test),
            "n_interactions": n_train + len(self.valid) + len(self.test),
            "train_density": n_train / max(1, self.n_users * self.n_items),
            "n_train_users": len(train_users),
            "n_train_items": len(train_items),
            "n_valid_users": len(valid_users),
            "n_test_users": len(test_users),
            "test_users_without_train": len(np.setdiff1d(test_users, train_users)),
            "valid_users_without_train": len(np.setdiff1d(valid_users, train_users)),
            "fingerprint": self.fingerprint(),
        }
        out["cold_pairs"] = self.cold_pairs()
        for key in ("read", "duplicates_removed", "duplicates_removed_by_split",
                    "cross_split_duplicates_removed", "filtered_out", "cold_pairs_dropped"):
            if key in self.info:
                out[key] = self.info[key]
        return out

    def _cold_masks(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Masks over ``split``'s pairs: user never in train, item never in train."""
        pairs = getattr(self, split)
        seen_users = np.zeros(self.n_users, dtype=bool)
        seen_items = np.zeros(self.n_items, dtype=bool)
        seen_users[self.train[:, 0]] = True
        seen_items[self.train[:, 1]] = True
        return ~seen_users[pairs[:, 0]], ~seen_items[pairs[:, 1]]

    def cold_pairs(self) -> dict[str, dict[str, Any]]:
        """Per evaluation split, the pairs whose user or item never occurs in train.

        Such a pair's user or item keeps its initial embedding (no training interaction moves it),
        so the model can rank it only by chance: a split with many of them caps every method's
        recall alike, and a framework that drops them reports higher figures on the same data.
        """
        out = {}
        for split in ("valid", "test"):
            cold_user, cold_item = self._cold_masks(split)
            n, cold = len(getattr(self, split)), int((cold_user | cold_item).sum())
            out[split] = {"pairs": n, "cold_user": int(cold_user.sum()), "cold_item": int(cold_item.sum()),
                          "cold": cold, "share": cold / n if n else 0.0}
        return out

    def cold_pair_warnings(self, threshold: float = COLD_PAIR_WARN_SHARE) -> list[str]:
        """A sentence for each evaluation split whose share of cold pairs is above ``threshold``."""
        return [f"{self.name}: {c['share']:.1%} of the {split} pairs ({c['cold']} of {c['pairs']}) have a "
                f"user or item that never occurs in train and can be ranked only by chance; the split "
                f"option drop_cold = true leaves them out"
                for split, c in self.cold_pairs().items() if c["share"] > threshold]

    def without_cold_pairs(self) -> InteractionData:
        """A copy whose validation and test splits keep only pairs of users and items seen in train;
        ``info["cold_pairs_dropped"]`` counts what was left out per split."""
        kept, dropped = {}, {}
        for split in ("valid", "test"):
            cold_user, cold_item = self._cold_masks(split)
            warm = ~(cold_user | cold_item)
            kept[split], dropped[split] = getattr(self, split)[warm], int((~warm).sum())
        return InteractionData(self.name, self.n_users, self.n_items, self.train, kept["valid"],
                               kept["test"], info={**self.info, "cold_pairs_dropped": dropped})
