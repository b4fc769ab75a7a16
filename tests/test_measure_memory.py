"""Per-phase peak memory: an allocation shows up in its phase's peak and not in the next phase's."""

from __future__ import annotations

import mmap
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


def _known_allocations() -> None:
    """4,000,000 bytes, then 2,000,000 more while they live, then 1,000,000 after freeing the
    first: a peak of exactly 6,000,000 bytes of tensor memory over the start."""
    x = torch.empty(1000, 1000)
    y = torch.empty(500, 1000)
    del x
    z = torch.empty(250, 1000)
    del y, z


def test_counted_need_is_the_exact_peak_of_tensor_allocations():
    mem = PhaseMemory("cpu")
    with mem.phase("known", tensors=True):
        _known_allocations()
    assert mem.need_methods["known"] == "cpu_tensor_allocations"
    assert mem.increments()["known"] == 6_000_000
    held = torch.empty(2_000_000 // 4)
    with mem.phase("frees", tensors=True):  # frees what was allocated before it: needs nothing
        del held
    assert mem.increments()["frees"] == 0
    with mem.phase("training"):  # not counted: the resident-set increment
        _known_allocations()
    assert mem.need_methods["training"] == "cpu_rss_increment"
    assert mem.increments()["training"] == mem.peaks["training"] - mem.baseline["training"]


def test_counted_need_falls_back_to_the_resident_set_inside_another_profiler():
    mem = PhaseMemory("cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        with mem.phase("known", tensors=True):
            _known_allocations()
    assert mem.need_methods["known"] == "cpu_rss_increment"
    assert mem.increments()["known"] == mem.peaks["known"] - mem.baseline["known"]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_phase_needs_the_same_memory_whatever_ran_before_it(threads):
    """The counted need of a scoring-like phase is the same to the byte before and after heavy
    churn of the heap (the resident-set increment moved by several MiB with the heap's history),
    and does not depend on the number of torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def measured() -> int:
            mem = PhaseMemory("cpu")
            with mem.phase("scoring", tensors=True):
                _scoring_like()
            return mem.increments()["scoring"]

        before = [measured() for _ in range(2)]
        _churn()
        after = [measured() for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    # the inputs (2000 x 64 and 3000 x 64 floats) and the scores (2000 x 3000) live at once
    assert min(before) >= (2000 + 3000) * 64 * 4 + 2000 * 3000 * 4
    assert len(set(before + after)) == 1, (before, after)


def test_allocator_regimes():
    with pytest.raises(ValueError, match="unknown allocator regime 'fast'"):
        memory.set_allocator("fast")
    has_mallopt = memory._mallopt() is not None
    assert memory.set_allocator("training") is has_mallopt
