"""Shared pieces of the performance scripts: timers and the CSV + markdown writers.

Every script under :mod:`bench.perf` writes ``<name>.csv`` (one row per measurement, with the
environment: versions, threads, device, git SHA) and ``<name>.md`` (a short table for people) to
``reports/performance/`` by default.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path("reports/performance")


def default_data_dir() -> str | None:
    """``RECSHRINK_DATA`` if set, else ``../shared/datasets`` when it exists (the benchmarks' data)."""
    import os

    if os.environ.get("RECSHRINK_DATA"):
        return os.environ["RECSHRINK_DATA"]
    shared = Path("../shared/datasets")
    return str(shared) if shared.is_dir() else None


def script_parser(description: str, datasets: Sequence[str], repeats: int,
                  repeats_help: str | None = None) -> argparse.ArgumentParser:
    """The command line every per-dataset script shares: ``--datasets`` (default ``datasets``),
    ``--threads`` (default 2), ``--repeats`` (default ``repeats``), ``--data-dir`` and ``--out``;
    a script adds its own options to it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--datasets", nargs="+", default=list(datasets))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    p.add_argument("--data-dir", default=default_data_dir(),
                   help="data root (default: RECSHRINK_DATA or ../shared/datasets)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
          device: torch.device | str | None = None) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs, and all times.

    On a CUDA ``device`` each run is bracketed by ``torch.cuda.synchronize`` so that the time covers
    the kernels the call queued, not only their launch."""
    cuda = device is not None and torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def set_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (default: leave torch's choice); return the count in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def environment_fields(device: torch.device | str | None = None) -> dict[str, Any]:
    """Flat environment columns for a CSV row (see :func:`bench.environment.environment`)."""
    from bench.environment import environment

    env = environment(device)
    out = {k: v for k, v in env.items() if isinstance(v, str | int | float | bool) or v is None}
    out.update({f"version_{k}": v for k, v in env["versions"].items()})
    out["torch_threads"] = torch.get_num_threads()
    return out


def write_outputs(out: Path, name: str, rows: Sequence[dict[str, Any]], markdown: str) -> tuple[Path, Path]:
    """Write ``rows`` to ``out/name.csv`` (union of keys as columns) and ``markdown`` to ``out/name.md``."""
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in row.items()})
    md_path.write_text(markdown)
    return csv_path, md_path


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bpr_step(model: Any, data: Any, batch_size: int, lr: float,
             device: torch.device | str = "cpu") -> Callable[[], None]:
    """One LightGCN BPR training step as :func:`bench.training.fit_bpr` takes it (loss with the L2
    term at 1e-4, backward, fused Adam) on the first ``batch_size`` triples of a seeded epoch, as a
    callable for the timers."""
    from bench.sampling import InteractionSampler
    from bench.training import make_adam

    sampler = InteractionSampler(data.train, data.n_users, data.n_items)
    users, pos, neg = (t[:batch_size].to(device) for t in sampler.epoch(torch.Generator().manual_seed(0)))
    opt = make_adam(list(model.parameters()), lr)

    def step() -> None:
        bpr, penalty = model.bpr_loss(users, pos, neg, 1e-4, "squared")
        opt.zero_grad(set_to_none=True)
        (bpr + penalty).backward()
        opt.step()

    return step
