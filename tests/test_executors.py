"""Local worker processes: they never outlive the run that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from bench.executors import _init_worker

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(1,))
    list(pool.map(time.sleep, [0.5, 0.5]))  # both workers are up and initialised
    for _ in range(2):
        pool.submit(time.sleep, 600)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the workers")
def test_workers_end_when_the_main_process_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(p) for p in workers)
        parent.send_signal(signal.SIGKILL)  # no handler, no shutdown: only the workers can act
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in workers), "a worker outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the workers")
def test_an_interrupted_run_ends_its_workers_at_once(tmp_path):
    from types import SimpleNamespace

    from bench.executors import ProcessExecutor
    from tests.helpers import sleeping_cell

    executor = ProcessExecutor(2, threads=1)
    executor.task = sleeping_cell  # each cell sleeps for two minutes
    specs = [SimpleNamespace(key=k, pid_dir=str(tmp_path)) for k in ("a", "b")]
    interrupted_at: list[float] = []

    def interrupt_once_both_run(signum, frame):
        if len(list(tmp_path.glob("pid-*"))) == 2:
            interrupted_at.append(time.monotonic())
            raise KeyboardInterrupt  # as Ctrl-C or SIGTERM reach the main process
        signal.setitimer(signal.ITIMER_REAL, 0.2)

    previous = signal.signal(signal.SIGALRM, interrupt_once_both_run)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            next(executor.run(specs))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - interrupted_at[0] < 30, "the run waited for its running cells"
    workers = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
    assert not any(alive(p) for p in workers)


def test_default_threads_leave_the_busy_cores_to_other_processes(monkeypatch):
    from bench import executors

    monkeypatch.setattr(executors.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(executors.os, "getloadavg", lambda: (2.2, 1.0, 1.0))
    assert executors.free_cores() == (2, 4, 2.2)
    threads, why = executors.default_threads(1)
    assert threads == 2 and why.startswith("2 torch thread(s) per cell: 4 cores, 1-minute load 2.2")
    assert executors.default_threads(2)[0] == 1 and executors.default_threads(3)[0] == 1
    monkeypatch.setattr(executors.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert executors.free_cores()[0] == 1 and executors.default_threads(1)[0] == 1  # never below 1
    assert executors.ProcessExecutor(2).threads == 1
