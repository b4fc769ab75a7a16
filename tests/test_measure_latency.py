"""Latency timing: sample statistics, warm-up, argument checks and the flat result names."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench.backbone.graph import normalized_adjacency
from bench.backbone.lightgcn import LightGCN
from bench.contract import CompressedModel
from bench.measure.latency import LatencyStats, latency_info, measure_latency, time_callable

N_USERS, N_ITEMS = 12, 25


def tiny_model(device: str = "cpu") -> CompressedModel:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, N_USERS, 60), rng.integers(0, N_ITEMS, 60)
    graph = normalized_adjacency(N_USERS, N_ITEMS, users, items, device=device)
    torch.manual_seed(0)
    module = LightGCN(N_USERS, N_ITEMS, 8, 2, graph).to(device)
    return CompressedModel(module=module, artifact=[], graph=graph, n_layers=2)


def test_stats_from_samples_are_numpy_percentiles():
    s = LatencyStats.from_samples([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.p50_ms, s.iqr_ms, s.min_ms, s.max_ms, s.mean_ms, s.n) == (3.0, 2.0, 1.0, 5.0, 3.0, 5)
    assert s.p95_ms == pytest.approx(4.8)
    assert s.samples_ms == [5.0, 1.0, 4.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_time_callable_times_a_sleep_after_warmup():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    s = time_callable(fn, "cpu", warmup=2, repeats=5)
    assert len(calls) == 7
    assert s.n == len(s.samples_ms) == 5
    assert s.p50_ms >= 2.0
    assert s.min_ms >= 2.0
    assert s.p95_ms >= s.p50_ms >= s.min_ms
    assert s.max_ms >= s.p95_ms
    assert s.iqr_ms >= 0


@pytest.mark.parametrize(("warmup", "repeats"), [(0, 0), (-1, 3), (1, 2.5), (1, True)])
def test_bad_counts_raise(warmup, repeats):
    with pytest.raises(ValueError, match=r"warmup|repeats"):
        time_callable(lambda: None, "cpu", warmup=warmup, repeats=repeats)


def test_measure_latency_keys_and_values():
    model = tiny_model()
    model.module.train()
    batches = (1, 4, 50)  # 50 > 12 users: drawn with replacement
    out = measure_latency(model, batches=batches, warmup=1, repeats=3, k=5)
    expected = {f"latency_propagation_{s}_ms" for s in ("p50", "p95", "iqr")}
    expected |= {f"latency_scoring_b{b}_{s}_ms" for b in batches for s in ("p50", "p95", "iqr")}
    assert set(out) == expected | {"latency_repeats", "latency_warmup"}
    assert out["latency_repeats"] == 3 and out["latency_warmup"] == 1
    for name in ["latency_propagation", *(f"latency_scoring_b{b}" for b in batches)]:
        assert out[f"{name}_p50_ms"] > 0
        assert out[f"{name}_p95_ms"] >= out[f"{name}_p50_ms"]
        assert out[f"{name}_iqr_ms"] >= 0
    assert model.module.training  # mode restored


def test_measure_latency_rejects_bad_batches():
    with pytest.raises(ValueError, match="batch"):
        measure_latency(tiny_model(), batches=(0,), repeats=1)


def test_latency_info_cpu():
    info = latency_info("cpu")
    assert info["timer"] == "perf_counter"
    assert info["device"] == "cpu"
    assert info["torch_num_threads"] == torch.get_num_threads()
    assert info["device_name"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_latency_on_cuda():
    out = measure_latency(tiny_model("cuda"), batches=(1, 64), warmup=2, repeats=5)
    assert all(v > 0 for v in out.values())
    info = latency_info("cuda")
    assert info["timer"] == "cuda_event"
    assert info["cuda_runtime_version"] == torch.version.cuda
    assert info["device_name"] == torch.cuda.get_device_name()


def test_load_between_calls_a_machine_busy_when_threads_outnumber_cpus():
    from bench.measure.latency import load_between, machine_load

    now = machine_load()
    assert now["cpus"] >= 1 and (now["load_1m"] is None or now["load_1m"] >= 0)
    quiet = load_between({"load_1m": 0.9, "cpus": 2}, {"load_1m": 2.0, "cpus": 2})
    assert quiet["busy"] is False and quiet["load_1m_max"] == 2.0
    assert load_between({"load_1m": 1.0, "cpus": 2}, {"load_1m": 3.5, "cpus": 2})["busy"] is True
    assert load_between({"load_1m": None, "cpus": 2}, {"load_1m": None, "cpus": 2})["busy"] is False


def test_a_cell_timed_on_a_busy_machine_says_so(tmp_path, tiny_root, toy_plugin, monkeypatch):
    from bench.measure import latency
    from tests.helpers import run_single_cell

    monkeypatch.setattr(latency, "machine_load", lambda: {"load_1m": 7.5, "cpus": 2})
    cell = run_single_cell(tiny_root, tmp_path / "o", 'datasets = ["tiny"]\nmethods = ["random-drop"]\n'
                                                      "emb_targets = [0.5]\nseeds = [0]\n")
    load = cell["info"]["latency"]["machine_load"]
    assert load == {"cpus": 2, "load_1m_before": 7.5, "load_1m_after": 7.5, "load_1m_max": 7.5, "busy": True}
    # the report says so, once for the variant's busy cells (the cell itself stores only the record)
    from bench.report import _notes

    assert "report_note" not in cell["settings"]
    (note,) = [n for n in _notes([cell]) if "busy machine" in n["note"]]
    assert note["note"] == ("latency measured on a busy machine (1-minute load 7.5 on 2 CPUs): its latency "
                            "figures are not those of an idle machine") and note["cells"] == 1
