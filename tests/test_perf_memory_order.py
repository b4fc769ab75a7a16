"""The memory-against-cell-order benchmark: its comparison, and one run on the tiny matrix."""

from __future__ import annotations

from types import SimpleNamespace

from bench.perf import memory_order
from tests.helpers import tiny_config

MiB = 2**20


def measurements(propagation: float, scoring: float, base: float) -> dict[str, float]:
    return {"mem_propagation_bytes": propagation * MiB,
            "peak_mem_propagation_bytes": (base + propagation) * MiB,
            "mem_scoring_bytes": scoring * MiB, "peak_mem_scoring_bytes": (base + scoring) * MiB}


def test_compare_flags_a_cell_whose_need_moves_with_the_order():
    specs = [SimpleNamespace(label=lambda n=n: n) for n in ("a", "b")]
    first = {"a": measurements(1.0, 30.0, 200), "b": measurements(2.0, 10.0, 700)}
    second = {"a": measurements(1.5, 29.0, 700), "b": measurements(2.0, 3.0, 200)}
    rows, worst = memory_order.compare(specs, first, second, tolerance_mib=2.0)
    assert worst == 7.0
    assert [r["within_tolerance"] for r in rows] == [True, False]
    assert rows[1]["scoring_diff_mib"] == -7.0 and rows[0]["scoring_peak_mib_reversed"] == 729.0


def test_the_tiny_matrix_needs_the_same_memory_in_either_order(tiny_root, tmp_path):
    """Exactly the same: the needs are counted tensor allocations (the default tolerance is 0)."""
    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn", "random-drop"]\n'
                                    "emb_targets = [0.5]\nseeds = [0]\n")
    assert memory_order.main([str(config), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "memory_order.md").read_text()
    assert "tiny/random-drop[emb=0.5]/seed0" in text and "Largest difference 0.00 MiB" in text
    assert "by cpu_tensor_allocations)" in text
