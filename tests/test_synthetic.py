"""The synthetic power-law generator (bench/synthetic.py) and the scaling script (bench/perf/scaling.py)."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from bench.perf import scaling
from bench.sampling import InteractionSampler
from bench.synthetic import powerlaw_interactions


def _keys(pairs: np.ndarray, n_items: int) -> np.ndarray:
    return pairs[:, 0] * n_items + pairs[:, 1]


def _rank_degree_slope(ids: np.ndarray, n: int) -> float:
    """Log-log slope of degree against rank over the ranks n/100 .. n/10 (away from the saturated
    head and the Poisson-noisy tail)."""
    degree = np.sort(np.bincount(ids, minlength=n))[::-1].astype(np.float64)
    rank = np.arange(1, n + 1, dtype=np.float64)
    lo, hi = max(1, n // 100), n // 10
    return float(np.polyfit(np.log10(rank[lo:hi]), np.log10(np.maximum(degree[lo:hi], 1)), 1)[0])


@pytest.fixture(scope="module")
def medium():
    return powerlaw_interactions(200_000, seed=0)


def test_exact_number_of_distinct_train_edges_and_every_user_active(medium):
    d = medium
    assert len(d.train) == 200_000
    assert len(np.unique(_keys(d.train, d.n_items))) == 200_000
    assert (d.n_users, d.n_items) == (6000, 8000)
    assert np.bincount(d.train[:, 0], minlength=d.n_users).min() >= 1
    # sorted by (user, item), like the loaders' splits
    keys = _keys(d.train, d.n_items)
    assert (np.diff(keys) > 0).all()
    assert d.info["model"].startswith("bipartite Chung-Lu")
    assert d.info["duplicates_removed"] == d.info["draws"]["train"] - 200_000


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 12_345])
def test_exact_count_at_small_sizes(n):
    d = powerlaw_interactions(n, seed=1)
    assert len(d.train) == n
    assert len(np.unique(_keys(d.train, d.n_items))) == n
    assert np.bincount(d.train[:, 0], minlength=d.n_users).min() >= 1
    assert len(d.valid) >= 1 and len(d.test) >= 1
    InteractionSampler(d.train, d.n_users, d.n_items)  # every user has items left to sample from


def test_splits_disjoint_from_train_and_each_other(medium):
    d = medium
    train, valid, test = (set(_keys(p, d.n_items).tolist()) for p in (d.train, d.valid, d.test))
    assert len(valid) == len(d.valid) == 2000 and len(test) == len(d.test) == 4000
    assert not valid & train
    assert not test & train
    assert not valid & test


def test_fraction_zero_gives_an_empty_split():
    d = powerlaw_interactions(5000, valid_fraction=0.0, test_fraction=0.1)
    assert len(d.valid) == 0 and len(d.test) == 500


def test_deterministic_for_a_seed():
    a, b = powerlaw_interactions(30_000, seed=5), powerlaw_interactions(30_000, seed=5)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    assert a.fingerprint() == b.fingerprint()
    c = powerlaw_interactions(30_000, seed=6)
    assert (c.n_users, c.n_items) == (a.n_users, a.n_items)
    assert not np.array_equal(a.train, c.train)
    assert a.fingerprint() != c.fingerprint()


def test_degrees_are_heavy_tailed(medium):
    d = medium
    user_deg = np.bincount(d.train[:, 0], minlength=d.n_users)
    item_deg = np.bincount(d.train[:, 1], minlength=d.n_items)
    assert user_deg.max() > 10 * user_deg.mean()
    assert item_deg.max() > 50 * item_deg.mean()
    flat = powerlaw_interactions(200_000, seed=0, alpha_user=0.0, alpha_item=0.0)
    assert np.bincount(flat.train[:, 1]).max() < 3 * np.bincount(flat.train[:, 1]).mean()


@pytest.mark.parametrize(("alpha_user", "alpha_item"), [(0.4, 0.7), (0.2, 0.5)])
def test_rank_degree_slope_matches_the_exponent(alpha_user, alpha_item):
    d = powerlaw_interactions(200_000, seed=0, alpha_user=alpha_user, alpha_item=alpha_item)
    # expected degree of rank r is proportional to (r + 1)^-alpha; duplicates removed at the head
    # and the one guaranteed edge per user flatten the measured slope a little (measured within 0.05)
    assert _rank_degree_slope(d.train[:, 0], d.n_users) == pytest.approx(-alpha_user, abs=0.07)
    assert _rank_degree_slope(d.train[:, 1], d.n_items) == pytest.approx(-alpha_item, abs=0.07)


def test_node_counts_scale_linearly():
    small, large = powerlaw_interactions(20_000), powerlaw_interactions(200_000)
    assert large.n_users == 10 * small.n_users == 6000
    assert large.n_items == 10 * small.n_items == 8000
    d = powerlaw_interactions(20_000, users_per_edge=0.1, items_per_edge=0.2)
    assert (d.n_users, d.n_items) == (2000, 4000)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_edges": 0}, "n_edges must be >= 1"),
    ({"n_edges": -5}, "n_edges must be >= 1"),
    ({"n_edges": 2.5}, "n_edges must be an integer"),
    ({"n_edges": "100"}, "n_edges must be an integer"),
    ({"n_edges": 100, "valid_fraction": -0.1}, "valid_fraction must be in"),
    ({"n_edges": 100, "valid_fraction": 1.0}, "valid_fraction must be in"),
    ({"n_edges": 100, "test_fraction": 1.5}, "test_fraction must be in"),
    ({"n_edges": 100, "test_fraction": float("nan")}, "test_fraction must be in"),
    ({"n_edges": 100, "users_per_edge": 0.0}, "users_per_edge must be in"),
    ({"n_edges": 100, "users_per_edge": 1.5}, "users_per_edge must be in"),
    ({"n_edges": 100, "items_per_edge": 0.0}, "items_per_edge must be > 0"),
    ({"n_edges": 100, "alpha_user": -1.0}, "alpha_user must be"),
    ({"n_edges": 100, "alpha_item": float("inf")}, "alpha_item must be"),
])
def test_bad_input_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        powerlaw_interactions(**kwargs)


def test_float_sizes_that_are_whole_numbers_are_accepted():
    assert len(powerlaw_interactions(1e3).train) == 1000


# --- bench/perf/scaling.py ----------------------------------------------------------------------

def test_loglog_slope():
    x = [1e3, 1e4, 1e5]
    assert scaling.loglog_slope(x, [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert scaling.loglog_slope(x, [1.0, 100.0, 1e4]) == pytest.approx(2.0)
    assert scaling.loglog_slope(x, [1.0, float("nan"), 100.0]) == pytest.approx(1.0)
    assert math.isnan(scaling.loglog_slope([1e3], [1.0]))
    assert math.isnan(scaling.loglog_slope(x, [0.0, -1.0, 5.0]))


def test_parse_size():
    assert scaling.parse_size("1e4") == 10_000
    assert scaling.parse_size("250") == 250
    for bad in ("2.5", "0", "x", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            scaling.parse_size(bad)


def test_timed_steps_are_the_steps_of_fit_bpr():
    """The timed step replicates fit_bpr's per-batch body: one epoch of it gives the same model."""
    import torch

    from bench.device import seed_everything
    from bench.training import TrainConfig, build_lightgcn, fit_bpr

    d = powerlaw_interactions(3000, seed=2)
    config = TrainConfig(dim=8, n_layers=2, batch_size=700, epochs=1, ks=(10, 20), device="cpu")
    seed_everything(0)
    reference = build_lightgcn(d, config, torch.device("cpu"))
    seed_everything(0)
    timed = build_lightgcn(d, config, torch.device("cpu"))
    fit_bpr(reference, d, config, progress=False)
    sampler = InteractionSampler(d.train, d.n_users, d.n_items)
    triples = sampler.epoch(torch.Generator().manual_seed(config.seed))
    times = scaling.timed_steps(timed, triples, config, math.ceil(len(d.train) / config.batch_size))
    assert len(times) == 5 and all(t > 0 for t in times)
    for a, b in zip(reference.parameters(), timed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_options_exit():
    with pytest.raises(SystemExit):
        scaling.main(["--timed-steps", "2"])
    with pytest.raises(SystemExit):
        scaling.main(["--eval-memory-mb", "0"])


REQUIRED_COLUMNS = {
    "size", "n_edges", "n_users", "n_items", "graph_nnz", "gen_seconds", "rss_baseline_bytes",
    "step_seconds", "timed_steps", "epoch_fixed_batch_seconds", "epoch_fixed_batch_extrapolated",
    "epoch_fixed_batch_estimate_seconds", "epoch_fixed_steps_seconds", "batch_fixed_steps",
    "peak_train_bytes", "train_mem_increment_bytes", "peak_rss_train_process_bytes",
    "eval_memory_budget_bytes", "eval_chunk_users", "eval_chunk_design_bytes", "eval_chunk_within_budget",
    "eval_seconds", "eval_mem_increment_bytes", "peak_rss_eval_process_bytes", "version_torch",
    "version_numpy", "torch_threads",
}


def _in_process_worker(args, kind, size, emb):
    """The worker of one size run in this process (no fresh interpreter: fast, same code path)."""
    ns = argparse.Namespace(**{**vars(args), "worker": kind, "size": size, "embeddings": str(emb)})
    result = (scaling.train_worker if kind == "train" else scaling.eval_worker)(ns)
    return json.loads(json.dumps(result, default=scaling._json_default))


def test_scaling_script_end_to_end_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "_run_worker", _in_process_worker)
    out = tmp_path / "perf"
    rc = scaling.main(["--sizes", "1e3", "4e3", "--batch-size", "512", "--steps-per-epoch", "4",
                       "--full-epoch-max-edges", "2e3", "--eval-memory-mb", "0.05", "--eval-users", "30",
                       "--out", str(out)])
    assert rc == 0
    with (out / "scaling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert [int(r["n_edges"]) for r in rows] == [1000, 4000]
    # fixed-batch epoch measured at 1e3 (<= 2e3 edges), extrapolated at 4e3
    assert [r["epoch_fixed_batch_extrapolated"] for r in rows] == ["False", "True"]
    assert rows[1]["epoch_fixed_batch_measured_seconds"] == ""
    for r in rows:
        assert int(r["timed_steps"]) == 5
        assert int(r["steps_fixed_steps"]) == 4
        assert r["eval_chunk_within_budget"] == "True"
        assert int(r["eval_chunk_design_bytes"]) <= int(r["eval_memory_budget_bytes"])
        assert int(r["eval_users"]) <= 30
        assert float(r["step_seconds"]) > 0 and int(r["peak_train_bytes"]) > int(r["rss_imports_bytes"]) / 2
    with (out / "scaling_exponents.csv").open() as fh:
        fits = {f["quantity"]: f for f in csv.DictReader(fh)}
    for name in ("step_seconds", "epoch_fixed_batch_seconds", "epoch_fixed_steps_seconds",
                 "eval_seconds_per_user", "gen_seconds"):
        assert math.isfinite(float(fits[name]["slope_all"])), name
    md = (out / "scaling.md").read_text()
    assert "Fitted exponents" in md and "(extrap.)" in md and "quadratic" in md


def test_failed_size_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def flaky(args, kind, size, emb):
        if size == 1000:
            raise RuntimeError("train process for 1000 edges killed by signal 9 without a result")
        return _in_process_worker(args, kind, size, emb)

    monkeypatch.setattr(scaling, "_run_worker", flaky)
    rc = scaling.main(["--sizes", "1e3", "2e3", "--eval-users", "10", "--out", str(tmp_path)])
    assert rc == 1
    with (tmp_path / "scaling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert "signal 9" in rows[0]["error"] and rows[1]["error"] == ""
    assert "failed" in (tmp_path / "scaling.md").read_text()


@pytest.mark.slow
def test_worker_runs_in_a_fresh_process(tmp_path):
    """The subprocess plumbing: a fresh interpreter finds the package and hands back its JSON line."""
    args = scaling.build_parser().parse_args(["--eval-users", "10", "--threads", "1"])
    result = scaling._run_worker(args, "train", 500, tmp_path)
    assert result["n_edges"] == 500 and result["torch_threads"] == 1
    assert (tmp_path / "users.npy").is_file() and (tmp_path / "items.npy").is_file()
