"""Wall-clock latency of inference: propagation, and serving a top-k list to a batch of users.

What is measured:

* ``propagation``: one ``model.module.propagate()`` (computing every final representation);
* ``scoring`` at batch size B: what serving recommendation lists costs once representations
  exist: gather the representations of a fixed batch of B users (drawn with a seeded generator,
  with replacement when B exceeds the number of users), score them against every item with
  ``model.score`` and select the top ``k`` items of each with ``torch.topk``.

How: every timed call runs after ``warmup`` untimed calls, ``repeats`` times, in eval mode
under ``torch.no_grad``. On CUDA each repeat is bracketed by a pair of
``torch.cuda.Event(enable_timing=True)`` and the device is synchronised before the elapsed time
is read (kernels are asynchronous, so a host clock would time only the launches); repeats do
not overlap. On CPU each repeat is timed with ``time.perf_counter``. Reported: the median
(p50), the 95th percentile, the interquartile range, from the raw samples (``LatencyStats``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.contract import CompressedModel


@dataclass
class LatencyStats:
    """Summary of latency samples in milliseconds (percentiles by numpy's linear interpolation)."""

    p50_ms: float
    p95_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    n: int
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Statistics of the raw samples (at least one)."""
        if len(samples_ms) == 0:
            raise ValueError("no latency samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        p25, p50, p75, p95 = np.percentile(a, [25, 50, 75, 95])
        return cls(
            p50_ms=float(p50), p95_ms=float(p95), iqr_ms=float(p75 - p25), min_ms=float(a.min()),
            max_ms=float(a.max()), mean_ms=float(a.mean()), n=len(a), samples_ms=[float(x) for x in a],
        )


def timer_name(device: torch.device | str) -> str:
    """``cuda_event`` on a CUDA device, else ``perf_counter``."""
    return "cuda_event" if torch.device(device).type == "cuda" else "perf_counter"


def time_callable(fn: Callable[[], Any], device: torch.device | str, warmup: int,
                  repeats: int) -> LatencyStats:
    """Run ``fn`` ``warmup`` times untimed, then time ``repeats`` calls one by one.

    CUDA: a pair of timing events around each call, synchronised before reading; CPU:
    ``time.perf_counter`` around each call.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if cuda:
        with torch.cuda.device(device):  # events record on this device's current stream
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                samples.append(float(start.elapsed_time(end)))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return LatencyStats.from_samples(samples)


def _model_device(model: CompressedModel) -> torch.device:
    for t in (*model.module.parameters(), *model.module.buffers()):
        return t.device
    if model.graph is not None:
        return model.graph.values.device
    return torch.device("cpu")


def _flat(prefix: str, stats: LatencyStats) -> dict[str, float]:
    return {f"{prefix}_p50_ms": stats.p50_ms, f"{prefix}_p95_ms": stats.p95_ms,
            f"{prefix}_iqr_ms": stats.iqr_ms}


def measure_latency(
    model: CompressedModel,
    batches: Sequence[int] = (1, 64, 1024),
    warmup: int = 3,
    repeats: int = 20,
    k: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Latency of propagation and of serving top-``k`` lists to batches of users (module docstring).

    Returns ``latency_propagation_{p50,p95,iqr}_ms``, ``latency_scoring_b{B}_{p50,p95,iqr}_ms``
    for every B in ``batches``, ``latency_repeats`` and ``latency_warmup``. The model runs on the
    device of its parameters (else of its graph); representations for scoring are computed once.
    """
    if k < 1 or any(b < 1 for b in batches):
        raise ValueError(f"k and every batch size must be >= 1, got k={k}, batches={list(batches)}")
    device = _model_device(model)
    module = model.module
    was_training = module.training
    module.eval()
    out: dict[str, float] = {}
    try:
        with torch.no_grad():
            out.update(_flat("latency_propagation",
                             time_callable(module.propagate, device, warmup, repeats)))
            u_reps, i_reps = model.representations()
            n_users, n_items = u_reps.shape[0], i_reps.shape[0]
            top = min(k, n_items)
            gen = torch.Generator().manual_seed(seed)
            for b in batches:
                if b > n_users:
                    users = torch.randint(n_users, (b,), generator=gen)
                else:
                    users = torch.randperm(n_users, generator=gen)[:b]
                users = users.to(u_reps.device)

                def serve(users: torch.Tensor = users) -> torch.Tensor:
                    return torch.topk(model.score(u_reps[users], i_reps), top, dim=1).indices

                out.update(_flat(f"latency_scoring_b{b}", time_callable(serve, device, warmup, repeats)))
    finally:
        module.train(was_training)
    out["latency_repeats"] = float(repeats)
    out["latency_warmup"] = float(warmup)
    return out


def _cuda_driver_version() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None if unavailable)."""
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def machine_load() -> dict[str, Any]:
    """The machine's 1-minute load average and the CPUs this process may use (``load_1m`` is None
    where the platform has no load average)."""
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"load_1m": load, "cpus": cpus}


def load_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The machine's load over a timing, from :func:`machine_load` readings before and after it.
    ``busy``: more runnable threads than CPUs (1-minute load above the CPU count) at either end,
    so the timings are not those of an idle machine."""
    loads = [x["load_1m"] for x in (before, after) if x["load_1m"] is not None]
    peak = max(loads) if loads else None
    return {"cpus": before["cpus"], "load_1m_before": before["load_1m"], "load_1m_after": after["load_1m"],
            "load_1m_max": peak, "busy": peak is not None and peak > before["cpus"]}


BUSY_NOTE_START = "latency measured on a busy machine"


def busy_note(loads: Sequence[dict[str, Any]]) -> str:
    """The report's note for cells whose latency was timed on a busy machine: their
    :func:`load_between` records (``busy`` true), the 1-minute loads as a range over them."""
    peaks = sorted(x["load_1m_max"] for x in loads)
    cpus = sorted({x["cpus"] for x in loads})
    load = f"{peaks[0]:.1f}" if f"{peaks[0]:.1f}" == f"{peaks[-1]:.1f}" else f"{peaks[0]:.1f}-{peaks[-1]:.1f}"
    return (f"{BUSY_NOTE_START} (1-minute load {load} on {'/'.join(map(str, cpus))} CPUs): its latency "
            "figures are not those of an idle machine")


def latency_info(device: torch.device | str) -> dict[str, Any]:
    """What the latencies were measured on: device, its name, library versions, threads, timer."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "timer": timer_name(device),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda_runtime_version"] = torch.version.cuda
        info["cuda_driver_version"] = _cuda_driver_version()
    else:
        info["device_name"] = _cpu_model_name() or info["cpu"]
    return info


def _cpu_model_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
