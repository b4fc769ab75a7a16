"""Helpers shared by several test modules (data builders, configs, method contexts, reference
implementations, synthetic result stores). Test modules import helpers from here only; fixtures
live in ``conftest.py``."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.data.dataset import InteractionData
from bench.result import CellResult
from bench.training import TrainConfig

# --- interaction data ---------------------------------------------------------------------------


def random_interactions(rng: np.random.Generator, n_users: int, n_items: int, per_user: int):
    """Distinct (user, item) pairs: ``per_user`` random items for every user."""
    rows = [np.stack([np.full(per_user, u), rng.choice(n_items, per_user, replace=False)], 1)
            for u in range(n_users)]
    return np.concatenate(rows).astype(np.int64)


def clustered_data(seed: int = 0) -> InteractionData:
    """Two user communities that each like one half of the items: learnable structure."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    pairs = []
    for u in range(n_users):
        half = np.arange(20) if u < 30 else np.arange(20, 40)
        for i in rng.choice(half, 10, replace=False):
            pairs.append((u, i))
    pairs = np.array(pairs)
    labels = rng.permutation(len(pairs)) % 10
    return InteractionData("clusters", n_users, n_items, pairs[labels >= 3],
                           pairs[labels == 2], pairs[labels < 2])


def small_config(**kw) -> TrainConfig:
    base = dict(dim=8, n_layers=2, lr=0.05, reg=1e-4, batch_size=64, epochs=15, patience=100,
                ks=(5, 10), valid_metric="recall@10", device="cpu", seed=3)
    base.update(kw)
    return TrainConfig(**base)


# --- the harness: a tiny dataset, matrix configs, method contexts --------------------------------


def write_tiny_dataset(root: Path, name: str = "tiny") -> Path:
    """A small clustered dataset (60 users, 40 items, given split) as a user TOML dataset."""
    data = clustered_data()
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        np.savetxt(folder / f"{split}.txt", getattr(data, split), fmt="%d")
    (root / f"{name}.toml").write_text(
        'description = "two communities"\n'
        'split = { protocol = "given" }\n'
        f'[[source]]\nkind = "local"\nformat = "edgelist"\ndir = "{name}"\n'
        'files = { train = "train.txt", valid = "valid.txt", test = "test.txt" }\n'
    )
    return root


TINY_BUDGET = """
[budget]
epochs = 3
dim = 8
batch_size = 64
lr = 0.05
ks = [5, 10]
valid_metric = "recall@10"

[measure]
latency_warmup = 0
latency_repeats = 2
latency_batches = [1, 4]
"""


def tiny_config(root: Path, body: str, name: str = "m") -> Path:
    """A matrix config (beside the data root ``root``) on the tiny dataset with a tiny budget."""
    path = root.parent / f"{name}.toml"
    path.write_text(f'name = "{name}"\ndata_dir = "{root}"\n' + body + TINY_BUDGET)
    return path


def method_context(seed: int = 0, data=None, checkpoint_dir: Path | None = None, **budget):
    """A :class:`bench.context.MethodContext` on ``data`` (default: the clustered toy dataset,
    60 users x 40 items) with a tiny CPU budget (dim 8, 2 layers, 6 epochs) and ``budget`` overrides."""
    import torch

    from bench.context import BaseCheckpoints, MethodContext

    data = data if data is not None else clustered_data()
    config = small_config(**{"epochs": 6, "eval_every": 2, "seed": seed, **budget})
    return MethodContext(data=data, device=torch.device("cpu"), seed=seed, budget=config,
                         checkpoints=BaseCheckpoints(checkpoint_dir), log=lambda msg: None)


def run_single_cell(root: Path, out: Path, body: str) -> dict:
    """Run a one-cell matrix (:func:`tiny_config` with ``body``) into ``out``; return its stored cell."""
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore

    summary = run_matrix(load_config(tiny_config(root, body)), out, progress=False, log=lambda m: None,
                         report=False)
    assert summary.ok == 1
    with ResultStore(out / "results.sqlite") as store:
        (cell,) = store.cells()
    return cell


# --- metrics: a plain-Python reference ----------------------------------------------------------


def brute_force(scores: np.ndarray, heldout: list[set[int]], exclude: list[set[int]], ks):
    """Plain-Python reference: sort each user's non-excluded items and count by definition."""
    sums: dict[str, float] = {}
    n_eval = 0
    for u in range(scores.shape[0]):
        rel = heldout[u]
        if not rel:
            continue
        n_eval += 1
        ranked = sorted((i for i in range(scores.shape[1]) if i not in exclude[u]),
                        key=lambda i: -scores[u, i])
        for k in ks:
            top = ranked[:k]
            hits = [1 if i in rel else 0 for i in top]
            n_hits = sum(hits)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            first = next((r + 1 for r, h in enumerate(hits) if h), None)
            vals = {
                f"recall@{k}": n_hits / len(rel),
                f"precision@{k}": n_hits / k,
                f"hit@{k}": float(n_hits > 0),
                f"ndcg@{k}": dcg / idcg,
                f"mrr@{k}": 1.0 / first if first else 0.0,
            }
            for name, v in vals.items():
                sums[name] = sums.get(name, 0.0) + v
    return {k: v / n_eval for k, v in sums.items()}, n_eval


def to_csr(sets: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [i for s in sets for i in sorted(s)]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n_items))


# --- reports: a generated result store and a synthetic long frame --------------------------------

SEEDS = (0, 1, 2)

PLAN = {"lightgcn": (1.0,), "random-drop": (0.5, 0.2), "toy-a": (0.5, 0.2)}

FAILED = ("toy-a", 0.2, 2)

FLAGGED = ("random-drop", 0.5, 1)

MEASURES = ("bits", "emb_achieved", "flops")


def value(method: str, target: float, seed: int, name: str) -> float:
    """A fixed, irregular but deterministic value for every (cell, name)."""
    base = {"lightgcn": 0.30, "random-drop": 0.22, "toy-a": 0.27}[method]
    wobble = ((seed * 7 + int(target * 10) * 3 + len(method)) % 5) / 200
    if name == "recall@20":
        return base * (0.6 + 0.4 * target) + wobble
    if name == "ndcg@20":
        return 0.8 * base * (0.7 + 0.3 * target) + wobble / 2
    if name == "emb_achieved":
        return 0.55 if (method, target, seed) == FLAGGED else target
    if name == "bits":
        return 1000.0 * 32 * target
    return 5e6 * target + 1e5


def result(method: str, target: float, seed: int) -> CellResult:
    """The generated store's cell (``method``, ``target``, ``seed``): failed, flagged or ok."""
    failed = (method, target, seed) == FAILED
    flagged = (method, target, seed) == FLAGGED
    spec = {"dataset": "toyset", "method": method, "emb_target": target, "edge_target": None,
            "layers_target": None, "seed": seed, "options": {}, "budget": {"epochs": 5}, "device": "cpu",
            "dataset_checksum": "c0ffee", "code_version": "0.1.0+abc", "run": "gen"}
    return dataclasses.replace(
        CellResult.start(spec, f"k-{method}-{target}-{seed}"),
        status="failed" if failed else "ok", flagged=flagged,
        flag_reason="emb achieved 0.5500 vs target 0.5" if flagged else None,
        error="RuntimeError: boom" if failed else None,
        metrics={} if failed else {n: value(method, target, seed, n) for n in ("recall@20", "ndcg@20")},
        measurements={} if failed else {n: value(method, target, seed, n) for n in MEASURES},
        timings={"total": 1.0}, seconds=1.0,
        info={} if failed else {"training_stages": [{"stage": "base", "epochs": 5, "best_epoch": 3,
                                                     "budget_epochs": 5, "at_budget": False}]},
        environment={"device": "cpu", "versions": {"torch": "2.13.0"}, "git_sha": "abc"},
        base_checkpoint=None if method == "toy-a" else "b" * 8,
        started_at="2026-11-21T10:00:00+00:00", finished_at=f"2026-11-21T10:00:{seed:02d}+00:00",
    )


def cells_plan():
    return [(m, t, s) for m, ts in PLAN.items() for t, s in itertools.product(ts, SEEDS)]


PLOT_DATASETS = ("ml-100k", "yelp-mini")

PLOT_METHODS = ("lightgcn", "hashing", "pruning", "quant")

PLOT_TARGETS = (0.5, 0.2, 0.1)

PLOT_NAMES = ("recall@20", "ndcg@20", "flops", "bits", "peak_mem_scoring_bytes", "latency_scoring_b64_p50_ms")


def synthetic_cells(datasets: tuple[str, ...] = PLOT_DATASETS, methods: tuple[str, ...] = PLOT_METHODS,
                    targets: tuple[float, ...] = PLOT_TARGETS, seeds: tuple[int, ...] = SEEDS,
                    names: tuple[str, ...] = PLOT_NAMES, seed: int = 0) -> pd.DataFrame:
    """A tidy long frame like ``cells.csv`` (successful cells only): lightgcn at emb_target 1.0,
    every other method at each target; one flagged cell per dataset (the first method, smallest
    target, first seed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d, dataset in enumerate(datasets):
        base = 0.25 - 0.05 * d
        for m, method in enumerate(methods):
            for target in [1.0] if method == "lightgcn" else targets:
                for s in seeds:
                    loss = 0.0 if method == "lightgcn" else (0.2 + 0.15 * m) * (1 - target)
                    recall = base * (1 - loss) + rng.normal(0, 0.004)
                    values = {
                        "recall@20": recall,
                        "ndcg@20": 0.8 * recall + rng.normal(0, 0.003),
                        "flops": 2e9 * (0.3 + 0.7 * target) * (1 + 0.1 * m),
                        "bits": 32 * 1e6 * target * (1 + 0.5 * m) / (1 + 2 * (method == "quant")),
                        "peak_mem_scoring_bytes": 5e8 * (0.5 + target) + rng.normal(0, 1e6),
                        "latency_scoring_b64_p50_ms": 3.0 * (0.6 + target) + rng.normal(0, 0.05),
                        "emb_achieved": target,
                    }
                    flagged = m == 1 and target == min(targets) and s == seeds[0]
                    for name in names:
                        rows.append({"dataset": dataset, "method": method, "emb_target": target,
                                     "edge_target": math.nan, "layers_target": math.nan, "seed": s,
                                     "flagged": flagged, "name": name, "value": values[name]})
    return pd.DataFrame(rows)



def sleeping_cell(spec, marker_dir: str):
    """A worker task that records its process id in ``spec.pid_dir`` and then sleeps for two
    minutes (for tests that interrupt a run while its cells are running)."""
    import os
    import time

    # Written under another name and renamed, so that a reader polling for ``pid-*`` never sees
    # the file before its content.
    partial = Path(spec.pid_dir) / f".partial-{os.getpid()}"
    partial.write_text(str(os.getpid()))
    partial.rename(Path(spec.pid_dir) / f"pid-{os.getpid()}")
    time.sleep(120)
