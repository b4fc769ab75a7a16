"""Shared fixtures. Tests never touch the network and never write into ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("RECSHRINK_SHARED", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "1")
    monkeypatch.setenv("RECSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("RECSHRINK_DATA", raising=False)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "yelp-lightgnn" / "train.txt").is_file():
        pytest.fail(f"the shared datasets are missing at {SHARED_DATASETS} "
                    f"(expected ../shared/datasets beside the project; or set RECSHRINK_SHARED)")
    return SHARED_DATASETS


def random_interactions(rng: np.random.Generator, n_users: int, n_items: int, per_user: int):
    """Distinct (user, item) pairs: ``per_user`` random items for every user."""
    rows = [np.stack([np.full(per_user, u), rng.choice(n_items, per_user, replace=False)], 1)
            for u in range(n_users)]
    return np.concatenate(rows).astype(np.int64)
