"""Peak memory of named phases (training, propagation, scoring, ...), reset between phases.

What is measured, per phase: the highest memory in use at any moment of the phase, together
with the memory in use when it began (``baseline``), so a report can show the increment.

How, by device:

* CUDA (``method = "cuda_max_memory_allocated"``): bytes held by tensors in torch's caching
  allocator. The peak counter is reset with ``torch.cuda.reset_peak_memory_stats`` when a phase
  begins and read with ``torch.cuda.max_memory_allocated`` when it ends, synchronising first.
* CPU on Linux (``"cpu_peak_rss_vmhwm"``): the process's resident set size. Writing ``5`` to
  ``/proc/self/clear_refs`` resets the kernel's RSS high-water mark (``VmHWM``) to the current
  RSS when a phase begins; ``VmHWM`` from ``/proc/self/status`` is read when it ends. Exact: the
  kernel updates the mark on every page fault.
* CPU elsewhere (``"cpu_rss_sampler"``): where ``clear_refs`` is not writable, a daemon thread
  samples the current RSS (``VmRSS``, else psutil, else ``getrusage``'s lifetime maximum as a
  last resort) about every millisecond during the phase and keeps the maximum; a peak shorter
  than the sampling interval can be missed. ``rss_source`` says which reading was used.

RSS counts everything the process maps (the interpreter, libraries, the dataset), hence the
baseline; a phase's increment is ``peaks[name] - baseline[name]``: what the phase itself needs.

On CPU, memory that earlier work freed stays in the C allocator's heap (glibc keeps it resident to
reuse it), so without care a phase would start from whatever the process last held: its baseline
would depend on which cells ran before it, and its peak could hide inside memory already counted.
Each CPU phase therefore first hands the allocator's free memory back to the system
(``malloc_trim(0)`` where the C library has it; ``released_free_memory`` says whether it did), so
the baseline is what is really in use and the increment depends far less on the order of cells.

Two more sources of order dependence are glibc's *dynamic* thresholds: a block above the mmap
threshold is mapped on its own and unmapped at free, and glibc raises that threshold (up to
32 MiB) each time such a block is freed, so whether a phase's buffers come from fresh mappings or
from heap pages depends on what ran before. :func:`set_allocator` fixes them (``mallopt``): the
mmap threshold at 32 MiB and the trim threshold at 64 MiB, the values the dynamic thresholds reach
after a few large frees, from the start; training's temporaries then reuse heap pages instead of
faulting in fresh mappings every step (on yelp-lightgnn, d = 64, a BPR step takes 13 instead of
about 800 page faults, and about 10% less CPU time).

Even so, a resident-set increment still depends on the heap's history by a few MiB: the phase's
allocations land in free chunks whose pages ``malloc_trim`` released (each small one touching a
whole page) or in pages still resident, and which happens depends on how fragmented earlier work
left the heap (on ml-100k, scoring read ~8.7 MiB as the first cells of a process and ~12 MiB
after a LightGNN cell). For short phases, ``phase(name, tensors=True)`` therefore counts instead
what torch's CPU allocator hands out: the profiler (``profile_memory``) records every allocation
and free of tensor memory, and the need (:meth:`PhaseMemory.increments`) is the largest running
sum of those sizes over the phase, 0 if the phase only frees (:class:`TensorAllocations`). That is
the quantity CUDA's ``max_memory_allocated`` minus the starting allocation measures, it is exact,
and it does not depend on what ran before. It counts torch tensors and torch's own work buffers,
not numpy or scipy arrays nor the interpreter's objects; the absolute peak of such a phase is
still the resident set's. Too slow for training (the profiler records every operator), whose need
stays the resident-set increment.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

METHODS = ("cuda_max_memory_allocated", "cpu_peak_rss_vmhwm", "cpu_rss_sampler")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, None if unreadable."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_hwm() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS; False where impossible."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _hwm_follows_rss(slack: int = 64 * 2**20) -> bool:
    """Just after a reset, ``VmHWM`` must be close to ``VmRSS`` (a kernel that accepts the write
    but ignores it, as some sandboxes may, would keep an older, higher mark)."""
    hwm, rss = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + slack


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where there is none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """The C library's ``mallopt`` (glibc), or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_REGIMES = {"training": ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 64 * 2**20))}


def set_allocator(regime: str) -> bool:
    """Fix glibc's allocation thresholds for ``regime`` (``"training"``, see the module docstring);
    False where the C library has no ``mallopt`` (nothing changes then)."""
    if regime not in ALLOCATOR_REGIMES:
        raise ValueError(f"unknown allocator regime {regime!r}; expected one of {sorted(ALLOCATOR_REGIMES)}")
    fn = _mallopt()
    if fn is None:
        return False
    return all(fn(param, value) == 1 for param, value in ALLOCATOR_REGIMES[regime])


def release_free_memory() -> bool:
    """Return the C allocator's free heap memory to the system; whether that was possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _rss_reader() -> tuple[str, Callable[[], int]]:
    """(name, function) reading the current RSS in bytes, by the best means available."""
    if _status_bytes("VmRSS") is not None:
        return "proc_status_vmrss", lambda: _status_bytes("VmRSS") or 0
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB elsewhere
        return "getrusage_maxrss", lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    proc = psutil.Process()
    return "psutil_rss", lambda: int(proc.memory_info().rss)


class _Sampler:
    """Daemon thread keeping the maximum of ``read()`` sampled every ``interval_s`` seconds."""

    def __init__(self, read: Callable[[], int], interval_s: float) -> None:
        self.read = read
        self.interval_s = interval_s
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recshrink-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())
        return self.peak


class TensorAllocations:
    """Context manager: the largest amount of CPU tensor memory allocated at any moment of the block
    over what was allocated when it began (``peak``, bytes), from the allocation and free events
    torch's profiler records (``profile_memory``; the running sum of the sizes in time order, at
    least 0). While another profiler runs in the process it counts nothing and ``counted`` stays
    False."""

    def __init__(self) -> None:
        self.peak = 0
        self.counted = False
        self._prof: Any = None

    def __enter__(self) -> TensorAllocations:
        if torch.autograd.profiler._is_profiler_enabled:  # profilers do not nest
            return self
        from torch.profiler import ProfilerActivity, profile

        # the profiler's C++ library logs every start and stop on stderr below level 6
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prof is None:
            return
        self._prof.__exit__(*exc)
        cpu = torch.autograd.DeviceType.CPU
        sizes = sorted(((e.start_ns(), e.nbytes()) for e in self._prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == cpu), key=lambda ev: ev[0])
        running = peak = 0
        for _, nbytes in sizes:
            running += nbytes
            peak = max(peak, running)
        self.peak, self.counted = peak, True
        self._prof = None


class PhaseMemory:
    """Peak memory of named phases on ``device``; see the module docstring for the methods.

    ``with mem.phase("training"): ...`` records ``peaks["training"]`` and ``baseline["training"]``
    in bytes (a repeated name overwrites), and :meth:`increments` what each phase needed, by the
    method ``need_methods`` names (``cpu_tensor_allocations`` for ``phase(name, tensors=True)`` on
    CPU, else ``cpu_rss_increment``; on CUDA always the allocator's own counters). Phases do not
    nest. ``force_sampler`` uses the sampling thread on CPU even where the exact ``VmHWM`` reset
    works (for tests and comparison).
    """

    def __init__(self, device: torch.device | str, force_sampler: bool = False,
                 interval_s: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self.baseline: dict[str, int] = {}
        self.rss_source: str | None = None
        self.released_free_memory = False
        self.needs: dict[str, int] = {}  # counted needs (``phase(..., tensors=True)`` on CPU)
        self.need_methods: dict[str, str] = {}
        self._active: str | None = None
        if self.device.type == "cuda":
            self.method = "cuda_max_memory_allocated"
        elif not force_sampler and _reset_hwm() and _hwm_follows_rss():
            self.method = "cpu_peak_rss_vmhwm"
            self.rss_source = "proc_status_vmhwm"
        else:
            self.method = "cpu_rss_sampler"
            self.rss_source, self._read_rss = _rss_reader()

    def increments(self) -> dict[str, int]:
        """What every recorded phase needed, in bytes: its counted tensor allocations where it had
        them, else ``peak - baseline``."""
        return {name: self.needs.get(name, self.peaks[name] - self.baseline[name]) for name in self.peaks}

    @contextmanager
    def phase(self, name: str, tensors: bool = False) -> Iterator[None]:
        """Measure the peak memory of the enclosed block as phase ``name``. ``tensors`` (CPU): its
        need is the peak of tensor memory allocated over the phase (:class:`TensorAllocations`),
        which does not depend on the heap's history, instead of the resident-set increment; for
        short phases, not for training (``need_methods`` records which one each phase got)."""
        if self._active is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._active!r}; phases do not nest")
        self._active = name
        self.needs.pop(name, None)
        try:
            if self.method == "cuda_max_memory_allocated":
                self.need_methods[name] = self.method
                yield from self._cuda(name)
                return
            self.released_free_memory = release_free_memory()
            self.need_methods[name] = "cpu_rss_increment"
            measure = self._vmhwm if self.method == "cpu_peak_rss_vmhwm" else self._sampled
            with TensorAllocations() if tensors else contextlib.nullcontext() as counter:
                yield from measure(name)
            if counter is not None and counter.counted:
                self.needs[name] = counter.peak
                self.need_methods[name] = "cpu_tensor_allocations"
        finally:
            self._active = None

    def _cuda(self, name: str) -> Iterator[None]:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline[name] = int(torch.cuda.memory_allocated(self.device))
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            self.peaks[name] = int(torch.cuda.max_memory_allocated(self.device))

    def _vmhwm(self, name: str) -> Iterator[None]:
        if not _reset_hwm():
            raise RuntimeError("could not reset the peak RSS through /proc/self/clear_refs")
        self.baseline[name] = _status_bytes("VmRSS") or 0
        try:
            yield
        finally:
            self.peaks[name] = max(_status_bytes("VmHWM") or 0, self.baseline[name])

    def _sampled(self, name: str) -> Iterator[None]:
        self.baseline[name] = self._read_rss()
        sampler = _Sampler(self._read_rss, self.interval_s)
        try:
            yield
        finally:
            self.peaks[name] = max(sampler.stop(), self.baseline[name])
