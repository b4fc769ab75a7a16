"""``recshrink status OUT``: where a run's output folder stands, from another shell.

It reads, without taking any lock: whether a run holds the folder (the lock file's holder and
whether that process still runs), the store's cells by status and its latest run, and the live
progress of the cells in training (:mod:`bench.live`): stage, epoch of the stage's budget, last and
best validation, wall time, and the epoch a stopped run would resume from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.live import process_alive, read_live, read_run
from bench.store import ResultStore, lock_holder


@dataclass
class FolderStatus:
    """What :func:`folder_status` found in one output folder."""

    out: Path
    holder: str | None  # "PID n on host, started t" of the run writing here, None when none is
    statuses: dict[str, int] = field(default_factory=dict)  # cells in the store by status
    latest_run: dict[str, Any] | None = None
    run_progress: dict[str, Any] | None = None  # the run's own live file (bench.live.read_run)
    live: list[dict[str, Any]] = field(default_factory=list)  # the cells' live files (read_live)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "running": self.holder is not None, "holder": self.holder,
                "cells": self.statuses, "latest_run": self.latest_run, "run_progress": self.run_progress,
                "live": self.live}


def _holder(out: Path) -> str | None:
    """The holder line of the run writing ``out`` while its process runs."""
    found = lock_holder(out)
    return found[0] if found and process_alive(found[1], found[2]) else None


def folder_status(out: Path | str) -> FolderStatus:
    """The status of the output folder ``out`` (a :class:`FileNotFoundError` when it is not a
    folder; a folder without a store has no cells)."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a folder (give the --out folder of a run)")
    status = FolderStatus(out, _holder(out))
    path = out / "results.sqlite"
    if path.is_file():
        store = ResultStore(path, create=False)
        try:
            for s in store.statuses().values():
                status.statuses[s] = status.statuses.get(s, 0) + 1
            runs = store.runs()
            if runs:
                last = runs[-1]
                status.latest_run = {k: last.get(k) for k in ("name", "command", "started_at", "finished_at",
                                                              "outcome")}
        finally:
            store.close()
    status.run_progress = read_run(out)
    status.live = read_live(out)
    return status


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _value(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def describe_live(d: dict[str, Any], now: float | None = None) -> list[str]:
    """Two lines for one cell in training (its live file ``d``): what it is and where it stands."""
    now = time.time() if now is None else now
    state = "training" if d["alive"] else f"STOPPED (process {d['pid']} is gone)"
    head = f"  {d['label']}: {state}, stage {d['stage']!r}, epoch {d['epoch']}/{d['epochs']}"
    if d.get("resumed_from"):
        head += f" (resumed from epoch {d['resumed_from']})"
    metric = d["valid_metric"]
    parts = [f"valid {metric} {_value(d.get('last_valid'))}"]
    if d.get("best_valid") is not None:
        parts.append(f"best {_value(d['best_valid'])} at epoch {d['best_epoch']} "
                     f"({d['validations_since_best']}/{d['patience']} validations since)")
    parts.append(f"stage time {_duration(d['seconds'])}")
    if d["epoch"] and d["epoch"] < d["epochs"]:
        # early stopping may end it sooner; the budget bounds it at the stage's pace so far
        left = (d["epochs"] - d["epoch"]) * d["seconds"] / d["epoch"]
        parts.append(f"at most {_duration(left)} to the epoch budget")
    if d.get("last_epoch_seconds") is not None:
        parts.append(f"last epoch {d['last_epoch_seconds']:.1f} s")
    ck = d.get("checkpoint_epoch")
    parts.append("no epoch checkpoint" if ck is None else
                 f"checkpoint at epoch {ck}" if ck else "no checkpoint saved yet")
    parts.append(f"updated {_duration(now - d['updated'])} ago")
    return [head, "    " + "; ".join(parts)]


def describe_run_progress(run: dict[str, Any]) -> str:
    """One line on the run's own progress: its cells to run, those finished, and a rough time
    for the rest at the mean time of a finished cell (cells can differ in cost by 100x)."""
    done = run["finished"]
    head = "this run" if run["alive"] else f"the run of process {run['pid']} (now gone)"
    line = (f"  {head}: {run['to_run']} of its {run['cells']} cells to run ({run['already_done']} already "
            f"stored), {done} finished ({run['ok']} ok, {run['failed']} failed)")
    left = run["to_run"] - done
    if run["alive"] and done and left > 0:
        rest = _duration(left * run["cell_seconds"] / done)
        line += f"; the other {left} take about {rest} at the mean so far"
    return line


def describe(status: FolderStatus, now: float | None = None) -> str:
    """The text ``recshrink status`` prints for one folder."""
    lines = [f"{status.out}: " + (f"a run is writing here ({status.holder})" if status.holder
                                   else "no run is writing here")]
    if status.statuses:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(status.statuses.items()))
        lines.append(f"  store: {counts}")
    else:
        lines.append("  store: no cells yet")
    run = status.latest_run
    if run:
        end = (f"ended {run['finished_at']} ({run['outcome']})" if run.get("finished_at")
               else "still running" if status.holder else "did not finish (stopped or killed)")
        lines.append(f"  latest run: {run['name']}, started {run['started_at']}, {end}")
    if status.run_progress:
        lines.append(describe_run_progress(status.run_progress))
    if status.live:
        lines.append(f"  cells in training: {len(status.live)}")
        for cell in status.live:
            lines.extend(describe_live(cell, now))
    elif status.holder:
        lines.append("  no cell has reported an epoch yet")
    return "\n".join(lines)
