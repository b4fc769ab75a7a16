"""Where cells run: in-process, local worker processes, or a Dask cluster.

Every executor takes the planned :class:`~bench.cell.CellSpec` list and yields their results
(:class:`~bench.result.CellResult`) as cells finish (in any order). Workers only compute: the
client writes the store.

* :class:`SequentialExecutor`: one cell after another in this process (the default).
* :class:`ProcessExecutor`: ``--workers N`` spawned processes. A worker that dies (killed by the
  out-of-memory killer, a segfault) breaks the pool; the cells that were running are retried once
  in a fresh pool and then recorded as failed, the others are resubmitted. A worker ends by
  itself when the main process dies, so a killed run leaves no orphans behind; on Ctrl-C or
  SIGTERM the run ends its workers at once.
* :class:`DaskExecutor`: ``--scheduler ADDRESS`` (an existing cluster) or ``--dask-workers N``
  (a LocalCluster of N single-threaded worker processes). Cells on CUDA are annotated with the
  resource ``GPU=1``, so a scheduler places at most one per GPU (start workers with
  ``--resources GPU=<count>``; the LocalCluster declares the GPUs it sees).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from bench.cell import CellSpec, finish_result, new_result, run_cell
from bench.result import CellResult

MAX_ATTEMPTS_AFTER_CRASH = 2
#: exit status of a worker that ended because its parent process died
PARENT_GONE_EXIT = 70


def failed_result(spec: CellSpec, error: str) -> CellResult:
    """A failed result for a cell whose worker never returned one."""
    result = new_result(spec)
    result.error = error
    return finish_result(result, spec, "cpu")


class SequentialExecutor:
    name = "sequential"
    concurrent_cells = 1
    in_process = True  # cells run in the caller's process (their output can go to its terminal)

    def run(self, specs: Sequence[CellSpec]) -> Iterator[CellResult]:
        for spec in specs:
            yield run_cell(spec)

    def close(self) -> None:
        pass


def _exit_with_parent() -> None:
    """Block until the parent process is gone, then end this worker at once.

    A worker whose parent was killed (SIGKILL, the out-of-memory killer) would otherwise stay
    blocked on its task pipe forever, holding its memory (and GPU memory on CUDA). The parent's
    sentinel becomes ready when it exits on every platform ``multiprocessing`` supports.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(PARENT_GONE_EXIT)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def _run_marked(spec: CellSpec, marker_dir: str) -> CellResult:
    marker = Path(marker_dir) / spec.key
    marker.write_text(str(os.getpid()))
    try:
        return run_cell(spec)
    finally:
        marker.unlink(missing_ok=True)


def free_cores() -> tuple[int, int, float]:
    """``(free, cores, load)``: the cores this process may use, the 1-minute load average, and the
    cores left over (at least 1). Other processes' threads count against the free cores: torch's
    OpenMP threads that share a core with another busy process spin at every barrier and can slow a
    training step tenfold or more, far beyond the share of the machine they lose."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, cores - round(load)), cores, load


def default_threads(workers: int) -> tuple[int, str]:
    """Torch threads per cell when the command line names none: the free cores (:func:`free_cores`)
    split among ``workers``, at least 1; and a sentence saying why."""
    free, cores, load = free_cores()
    threads = max(1, free // workers)
    why = (f"{threads} torch thread(s) per cell: {cores} cores, 1-minute load {load:.1f}, so about {free} "
           f"free" + (f" for {workers} workers" if workers > 1 else "") + " (--threads N to choose)")
    return threads, why


class ProcessExecutor:
    """Local worker processes (``spawn``), each with ``threads`` torch threads."""

    name = "processes"
    #: what a worker runs for a cell: ``task(spec, marker_dir) -> result``
    task: Callable[[CellSpec, str], CellResult] = staticmethod(_run_marked)

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.workers = self.concurrent_cells = workers
        self.threads = threads or default_threads(workers)[0]
        self._pool: ProcessPoolExecutor | None = None

    def run(self, specs: Sequence[CellSpec]) -> Iterator[CellResult]:
        remaining = {s.key: s for s in specs}
        attempts: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix="recshrink-markers-") as markers:
            while remaining:
                self._pool = ProcessPoolExecutor(
                    max_workers=min(self.workers, len(remaining)),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(self.threads,),
                )
                futures: dict[Future, str] = {
                    self._pool.submit(self.task, s, markers): k for k, s in remaining.items()
                }
                broken = False
                finished = False
                try:
                    pending = set(futures)
                    while pending and not broken:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            key = futures[fut]
                            try:
                                result = fut.result()
                            except BrokenProcessPool:
                                broken = True
                                continue
                            remaining.pop(key, None)
                            yield result
                    finished = True
                finally:
                    if not finished and not broken:  # interrupted: do not wait for running cells
                        _end_workers(self._pool)
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
                if broken:
                    running = [p.name for p in Path(markers).iterdir()]
                    for key in running:
                        (Path(markers) / key).unlink(missing_ok=True)
                        if key not in remaining:
                            continue
                        attempts[key] = attempts.get(key, 0) + 1
                        if attempts[key] >= MAX_ATTEMPTS_AFTER_CRASH:
                            spec = remaining.pop(key)
                            yield failed_result(spec, "worker process died while running this cell "
                                                      "(killed, e.g. out of memory, or crashed)")

    def close(self) -> None:
        if self._pool is not None:
            _end_workers(self._pool)
            self._pool.shutdown(wait=False, cancel_futures=True)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's worker processes now (SIGTERM), abandoning the cells they run: on Ctrl-C or
    SIGTERM the run stops at once instead of waiting for cells whose results it would not store."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


class DaskExecutor:
    """Dask distributed: an existing scheduler or a LocalCluster of ``n_workers`` processes."""

    name = "dask"

    def __init__(self, address: str | None = None, n_workers: int | None = None,
                 threads: int | None = None) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("the Dask executor needs dask.distributed: "
                               "pip install 'recshrink[dask]'") from exc
        if address is None and (n_workers is None or n_workers < 1):
            raise ValueError("give a scheduler address or --dask-workers N >= 1")
        self.cluster = None
        self.threads = threads
        # a local cluster's size is known; a remote scheduler's workers may be on other machines
        self.concurrent_cells = n_workers if address is None else None
        if address is not None:
            self.client = Client(address)
        else:
            n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            self.cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                resources={"GPU": max(1, n_gpus // n_workers)} if n_gpus else None,
            )
            self.client = Client(self.cluster)
            if self.threads is None:
                self.threads = max(1, (os.cpu_count() or 1) // n_workers)

    def run(self, specs: Sequence[CellSpec]) -> Iterator[CellResult]:
        from dask.distributed import as_completed

        futures = {}
        for spec in specs:
            if self.threads is not None and spec.threads is None:
                spec = _with_threads(spec, self.threads)
            on_gpu = spec.device.startswith("cuda")
            fut = self.client.submit(run_cell, spec, key=f"cell-{spec.key}", pure=False,
                                     resources={"GPU": 1} if on_gpu else None)
            futures[fut] = spec
        for fut in as_completed(list(futures)):
            spec = futures[fut]
            try:
                yield fut.result()
            except Exception as exc:  # the worker died or the task was lost
                yield failed_result(spec, f"dask worker failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _with_threads(spec: CellSpec, threads: int) -> CellSpec:
    return dataclasses.replace(spec, threads=threads)
