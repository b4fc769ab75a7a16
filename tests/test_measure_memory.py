"""Per-phase peak memory: an allocation shows up in its phase's peak and not in the next phase's."""

from __future__ import annotations

import mmap
import statistics
import sys
import time

import numpy as np
import pytest
import torch

from bench.measure import memory
from bench.measure.memory import METHODS, PhaseMemory

MiB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def touch(n_bytes: int) -> np.ndarray:
    """An array of ``n_bytes`` on fresh anonymous pages, every page written (so it is resident).

    A fresh mapping, not ``np.ones``: after earlier tests (the kernel benchmarks) freed large
    buffers, malloc may serve the block from pages that are already resident, and RSS would not move.
    """
    buf = mmap.mmap(-1, n_bytes)
    arr = np.frombuffer(buf, dtype=np.float64)
    arr.fill(1.0)
    return arr


@linux_only
def test_cpu_phase_peak_sees_allocation_and_resets_for_next_phase():
    mem = PhaseMemory("cpu")
    assert mem.method in METHODS
    with mem.phase("alloc"):
        big = touch(200 * MiB)
        del big
    with mem.phase("idle"):
        pass
    assert mem.peaks["alloc"] >= mem.baseline["alloc"] + 190 * MiB
    assert mem.peaks["idle"] < mem.peaks["alloc"] - 150 * MiB  # the peak counter was reset
    assert 0 <= mem.increments()["idle"] < 20 * MiB
    assert set(mem.peaks) == set(mem.baseline) == {"alloc", "idle"}


@linux_only
def test_vmhwm_is_used_where_clear_refs_is_writable():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert PhaseMemory("cpu").method == "cpu_peak_rss_vmhwm"


@linux_only
def test_sampler_catches_a_short_lived_allocation():
    mem = PhaseMemory("cpu", force_sampler=True)
    assert mem.method == "cpu_rss_sampler"
    assert mem.rss_source == "proc_status_vmrss"
    with mem.phase("alloc"):
        block = touch(64 * MiB)
        time.sleep(0.05)
        del block
    with mem.phase("idle"):
        time.sleep(0.01)
    assert mem.peaks["alloc"] >= mem.baseline["alloc"] + 60 * MiB
    assert mem.increments()["idle"] < 20 * MiB


@linux_only
def test_falls_back_to_sampler_without_clear_refs(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    mem = PhaseMemory("cpu")
    assert mem.method == "cpu_rss_sampler"
    with mem.phase("alloc"):
        block = touch(32 * MiB)
        time.sleep(0.02)
        del block
    assert mem.peaks["alloc"] >= mem.baseline["alloc"] + 30 * MiB


def test_phases_do_not_nest_and_exceptions_still_record():
    mem = PhaseMemory("cpu", force_sampler=True)
    with mem.phase("outer"), pytest.raises(RuntimeError, match="do not nest"), mem.phase("inner"):
        pass
    with pytest.raises(KeyError), mem.phase("failing"):
        raise KeyError("boom")
    assert "failing" in mem.peaks
    assert "inner" not in mem.peaks
    with mem.phase("after"):  # the failed phase released the slot
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_phase_peak_and_reset():
    device = torch.device("cuda")
    mem = PhaseMemory(device)
    assert mem.method == "cuda_max_memory_allocated"
    with mem.phase("alloc"):
        block = torch.ones(256 * MiB // 4, device=device)
        del block
    with mem.phase("idle"):
        pass
    assert mem.peaks["alloc"] >= mem.baseline["alloc"] + 256 * MiB
    assert mem.peaks["idle"] < mem.peaks["alloc"] - 200 * MiB


def _scoring_like() -> None:
    """Scores of 2000 users over 3000 items (about 23 MiB) and their top 20."""
    scores = torch.randn(2000, 64) @ torch.randn(3000, 64).T
    scores.topk(20, dim=1)


def _churn() -> None:
    """What a heavy cell leaves behind: large and many small tensors, allocated and freed."""
    big = [torch.randn(2000, 2000) for _ in range(20)]  # 16 MiB each
    del big
    small = [torch.randn(50, 1000) for _ in range(5000)]  # 200 KB each
    del small


@linux_only
@pytest.mark.skipif(memory._malloc_trim() is None, reason="needs a C library with malloc_trim")
def test_a_phase_needs_the_same_memory_whatever_ran_before_it():
    """Three phases measured before heavy churn and three after, with fresh buffers: the median need
    is the same within 2 MiB (readings move in steps of about 1.5 MiB, sometimes for several phases
    in a row, so single readings are not compared and the bound stays above one step)."""
    torch.set_num_threads(1)
    _scoring_like()  # the first call also sets up library state that later calls keep

    def measured() -> PhaseMemory:
        mem = PhaseMemory("cpu")
        with mem.phase("scoring", fresh_buffers=True):
            _scoring_like()
        return mem

    memory.set_allocator("training")
    before = [measured() for _ in range(3)]
    _churn()
    after = [measured() for _ in range(3)]
    assert all(m.released_free_memory for m in after)
    assert all(m.fresh_buffers == {"scoring": memory._mallopt() is not None} for m in after)
    mib = 2**20
    # what the earlier work freed is not counted in the next phase's starting footprint ...
    grown = after[0].baseline["scoring"] - before[-1].baseline["scoring"]
    assert grown < 16 * mib, (before[-1].baseline, after[0].baseline)
    # ... and the phase's own need is seen again instead of hiding inside memory already resident
    needs = [m.increments()["scoring"] / mib for m in before + after]
    assert min(needs) > 20
    assert abs(statistics.median(needs[3:]) - statistics.median(needs[:3])) < 2.0, needs


def test_allocator_regimes():
    with pytest.raises(ValueError, match="unknown allocator regime 'fast'"):
        memory.set_allocator("fast")
    has_mallopt = memory._mallopt() is not None
    assert memory.set_allocator("fresh") is has_mallopt
    assert memory.set_allocator("training") is has_mallopt
