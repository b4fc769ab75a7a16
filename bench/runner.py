"""The matrix runner behind ``recshrink run``: plan, skip finished cells, run the rest, store, report.

1. **Plan** (before any training): validate the config (:mod:`bench.config`), load every dataset
   once to get its checksum, resolve the device, expand the cells and their keys
   (:attr:`bench.cell.CellSpec.key` hashes the cell config, the dataset checksum and the code
   version).
2. **Resume**: cells whose key is stored with status ``ok`` are skipped; failed cells are skipped
   too unless ``retry_failed``.
3. **Run** the remaining cells on an executor (:mod:`bench.executors`) and store each result the
   moment it arrives, in one transaction (:mod:`bench.store`). A progress bar shows the cell count
   and an ETA from the run's average time per cell so far, and a log line reports every finished
   cell.
4. **Report**: ``cells.csv`` (and the HTML report) from the store, also after an interruption.

Ctrl-C or SIGTERM stops the run at once (cells still running are abandoned; local workers end);
every finished cell is already stored and no partial row exists, so running the same command
again resumes. One run at a time may write to an output folder (a lock naming the holder); a
result the store cannot take is kept beside it and stored by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.cell import CellSpec, report_identity
from bench.config import MatrixConfig
from bench.live import LIVE_DIR, clear_live, end_run, write_run
from bench.result import CellResult
from bench.store import UNSTORED_DIR, ResultStore, StoreError, keep_unstored, run_lock, take_unstored


@dataclass
class RunSummary:
    out_dir: Path
    total: int
    already_done: int
    skipped_failed: int
    ran: int = 0
    ok: int = 0
    failed: int = 0
    flagged: int = 0
    wall_seconds: float = 0.0
    cell_seconds: float = 0.0
    measure_seconds: float = 0.0
    store_seconds: float = 0.0
    interrupted: bool = False
    report_error: str | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def overhead_share(self) -> float:
        """Harness overhead (measurement + storage) as a share of the cells' own time."""
        return (self.measure_seconds + self.store_seconds) / self.cell_seconds if self.cell_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "keys"}
        d["out_dir"] = str(self.out_dir)
        d["overhead_share"] = self.overhead_share
        return d


def code_version() -> str:
    """Package version and source commit: part of every cell key."""
    from importlib import metadata

    from bench.environment import git_sha

    try:
        version = metadata.version("recshrink")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "unknown"
    sha = git_sha()
    return f"{version}+{sha.split('+')[0][:12]}" if sha else version


def plan(config: MatrixConfig, device: str | None = None, checkpoint_dir: Path | None = None,
         progress: bool = False) -> list[CellSpec]:
    """Expand a validated config into cells (loads each dataset once for its checksum)."""
    from bench.data.loading import load_dataset
    from bench.device import resolve_device

    dev = str(resolve_device(device or config.device))
    checksums = {}
    for name in config.datasets:
        data = load_dataset(name, config.data_dir)
        config.check_dataset(data)
        checksums[name] = data.fingerprint()
    return config.cells(dev, checksums, code_version(),
                        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, progress=progress)


def default_checkpoint_dir(config: MatrixConfig) -> Path:
    from bench.data.catalog import data_root
    from bench.data.loading import cache_dir

    return cache_dir(data_root(config.data_dir)) / "checkpoints"


def _fmt_cell(result: CellResult) -> str:
    spec = CellSpec(**{k: v for k, v in result.spec.items()})
    head = f"{spec.label()}: {result.status}"
    if result.status != "ok":
        return f"{head} ({result.error})"
    m, x = result.metrics, result.measurements
    parts = [f"recall@20={m.get('recall@20', float('nan')):.4f}",
             f"ndcg@20={m.get('ndcg@20', float('nan')):.4f}",
             f"emb={x.get('emb_achieved', float('nan')):.3f}",
             f"{result.timings.get('total', 0):.1f}s"]
    flag = f"  FLAGGED: {result.flag_reason}" if result.flagged else ""
    return f"{head}  " + "  ".join(parts) + flag


def _budget_json(budget: Any) -> str:
    return json.dumps(budget, sort_keys=True)


def budget_clashes(stored: list[dict[str, Any]], cells: list[CellSpec]) -> int:
    """Planned cells whose identity the store (its cells, ``stored``) already holds under another
    training budget.

    A report shows one cell per identity (the newest), so such a run would replace the other
    budget's cells in the report; runs with different budgets belong in different stores.
    """
    budgets: dict[str, set[str]] = {}
    for old in stored:
        budgets.setdefault(report_identity(old["spec"]), set()).add(_budget_json(old["spec"].get("budget")))
    clashes = 0
    for c in cells:
        mine = _budget_json(c.budget)
        if budgets.get(report_identity(dataclasses.asdict(c)), {mine}) - {mine}:
            clashes += 1
    return clashes


def other_version_cells(stored: list[dict[str, Any]], cells: list[CellSpec]) -> tuple[int, list[str]]:
    """Planned cells the store (its cells, ``stored``) holds finished under the same budget but
    another code version.

    A cell's key includes the code version (package version and git commit), so after a commit a
    rerun recomputes them instead of resuming: ``(count, those versions)``, for the run's log.
    """
    versions: dict[tuple[str, str], set[str]] = {}
    for old in stored:
        if old["status"] == "ok":
            ident = (report_identity(old["spec"]), _budget_json(old["spec"].get("budget")))
            versions.setdefault(ident, set()).add(old["spec"].get("code_version", ""))
    count, seen = 0, set()
    for c in cells:
        ident = (report_identity(dataclasses.asdict(c)), _budget_json(c.budget))
        other = versions.get(ident, set()) - {c.code_version}
        if other:
            count += 1
            seen |= other
    return count, sorted(seen)


def run_matrix(
    config: MatrixConfig,
    out_dir: Path | str | None = None,
    executor: Any = None,
    retry_failed: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_result: Callable[[CellResult], None] | None = None,
    checkpoint_dir: Path | None = None,
    command: str | None = None,
    report: bool = True,
) -> RunSummary:
    """Run (or resume) a matrix; see the module docstring. Returns what happened."""
    from bench.environment import environment
    from bench.executors import SequentialExecutor

    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else Path("reports") / config.name
    executor = executor or SequentialExecutor()
    with run_lock(out), _sigterm_as_interrupt():
        clear_live(out)
        cells = _plan_for(executor, config, device, checkpoint_dir, out, progress)
        store = ResultStore(out / "results.sqlite")
        _take_unstored(store, out, log)
        summary, todo = _resume(config, cells, store, retry_failed, executor.name, out, log)
        run_id = store.start_run(config.name, config.text, command or shlex.join(sys.argv),
                                 environment(cells[0].device if cells else "cpu"))
        outcome = "finished"
        # ETA from the run's average time per cell (smoothing 0), not from the last few cells: cells
        # differ in cost by 100x or more, and a moving average swung the ETA from minutes to hours
        bar = tqdm(total=len(todo), desc=f"{config.name}", unit="cell", disable=not progress,
                   dynamic_ncols=True, smoothing=0)
        _write_run_progress(out, config, summary, len(todo))
        try:
            for result in executor.run(todo):
                _store_result(result, store, summary)
                _write_run_progress(out, config, summary, len(todo))
                bar.update(1)
                for line in [_fmt_cell(result), *(f"  {msg}" for msg in result.info.get("log", []))]:
                    (bar.write if progress else log)(line)
                if on_result is not None:
                    on_result(result)
        except Terminated:
            outcome = "terminated"
            summary.interrupted = True
            raise
        except KeyboardInterrupt:
            outcome = "interrupted"
            summary.interrupted = True
            raise
        except BaseException:
            outcome = "crashed"
            raise
        finally:
            bar.close()
            executor.close()
            end_run(out)
            summary.wall_seconds = time.perf_counter() - t_start
            _finish(config, store, run_id, summary, outcome, report, log)
    return summary


def _write_run_progress(out: Path, config: MatrixConfig, summary: RunSummary, to_run: int) -> None:
    """What ``recshrink status`` shows of the run itself (:func:`bench.live.write_run`)."""
    write_run(out, {"name": config.name, "cells": summary.total, "already_done": summary.already_done,
                    "to_run": to_run, "finished": summary.ran, "ok": summary.ok, "failed": summary.failed,
                    "cell_seconds": summary.cell_seconds})


class Terminated(KeyboardInterrupt):
    """The run was asked to stop by SIGTERM (handled like Ctrl-C: finished cells are kept)."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread only: elsewhere
    Python cannot install handlers, and the caller's own handling stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _take_unstored(store: ResultStore, out: Path, log: Callable[[str], None]) -> None:
    """Store the results an earlier run could not write (see :func:`bench.store.keep_unstored`)."""
    taken = take_unstored(store, out)
    if taken:
        log(f"stored {len(taken)} cell result(s) that an earlier run could not write to "
            f"{store.path} (kept in {out / UNSTORED_DIR})")


def _plan_for(executor: Any, config: MatrixConfig, device: str | None, checkpoint_dir: Path | None,
              out: Path, progress: bool) -> list[CellSpec]:
    """The matrix's cells (:func:`plan`; base checkpoints in ``checkpoint_dir`` or the default), each
    recording how many cells ``executor`` runs at once and keeping its live progress in
    ``out/.live`` (:mod:`bench.live`). Cells run in this process show their epoch bars under the
    run's bar when ``progress`` is on; worker processes would garble a terminal with theirs."""
    ckpt = checkpoint_dir if checkpoint_dir is not None else default_checkpoint_dir(config)
    concurrent = getattr(executor, "concurrent_cells", None)
    epoch_bars = progress and getattr(executor, "in_process", False)
    return [dataclasses.replace(c, concurrent_cells=concurrent, live_dir=str(out.resolve() / LIVE_DIR),
                                progress=epoch_bars)
            for c in plan(config, device, ckpt)]


def _resume(config: MatrixConfig, cells: list[CellSpec], store: ResultStore, retry_failed: bool,
            executor_name: str, out: Path, log: Callable[[str], None]) -> tuple[RunSummary, list[CellSpec]]:
    """What is left to run of ``cells`` given the store (cells stored ``ok`` are done, failed ones
    rerun only with ``retry_failed``), logged with what the store already holds of them."""
    statuses = store.statuses()
    done = [c for c in cells if statuses.get(c.key) == "ok"]
    failed_before = [c for c in cells if statuses.get(c.key) == "failed"]
    todo = [c for c in cells if statuses.get(c.key) != "ok" and (retry_failed or c.key not in statuses)]
    summary = RunSummary(out_dir=out, total=len(cells), already_done=len(done),
                         skipped_failed=0 if retry_failed else len(failed_before),
                         keys=[c.key for c in cells])
    failed_note = ""
    if failed_before:
        failed_note = (f", {len(failed_before)} failed before" +
                       (" (rerun)" if retry_failed else " (skipped; --retry-failed reruns them)"))
    log(f"{config.name}: {len(cells)} cells, {len(done)} already done{failed_note}; running {len(todo)} "
        f"on {executor_name}; results in {out / 'results.sqlite'}")
    _warn_about_stored(config, store.cells() if todo else [], todo, out, log)
    return summary, todo


def _warn_about_stored(config: MatrixConfig, stored: list[dict[str, Any]], todo: list[CellSpec], out: Path,
                       log: Callable[[str], None]) -> None:
    """Log the cells to run that the store (its cells, ``stored``) holds under another training
    budget (the report will replace them) or from other code (they run again)."""
    clashes = budget_clashes(stored, todo)
    if clashes:
        log(f"{config.name}: WARNING: {clashes} of these cells are already in {out / 'results.sqlite'} under "
            f"another training budget; reports show the newest cell of each method, target and seed, so "
            f"these will replace the others there. Use another --out to keep both.")
    n_other, versions = other_version_cells(stored, todo)
    if n_other:
        shown = ", ".join(versions[:3]) + (", ..." if len(versions) > 3 else "")
        log(f"{config.name}: NOTE: {n_other} of these cells are already in {out / 'results.sqlite'} from "
            f"other code ({shown}); cell keys include the code version ({todo[0].code_version} now), so "
            f"they run again and reports show the newer results. To resume without recomputing, run "
            f"from the commit that started the matrix.")


def _store_result(result: CellResult, store: ResultStore, summary: RunSummary) -> None:
    """Store a finished cell and count it in ``summary``. A result the store cannot take (a full
    disk, a store damaged while running) is kept beside it, and the run stops with a
    :class:`StoreError` saying where."""
    t = time.perf_counter()
    try:
        store.put(result)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(_unstorable(result, store, summary.out_dir, exc)) from exc
    summary.store_seconds += time.perf_counter() - t
    summary.ran += 1
    summary.cell_seconds += result.timings.get("total", 0.0)
    summary.measure_seconds += result.timings.get("measure", 0.0)
    if result.status == "ok":
        summary.ok += 1
        summary.flagged += int(bool(result.flagged))
    else:
        summary.failed += 1


def _unstorable(result: CellResult, store: ResultStore, out: Path, exc: BaseException) -> str:
    """Keep a result the store refused; the message for the run's error."""
    what = (f"could not write cell {result.key[:12]} ({result.method}, seed {result.seed}) "
            f"to {store.path}: {exc}")
    try:
        kept = keep_unstored(result, out)
    except OSError as side:
        # nowhere to write: the numbers go into the message, the one place left
        return (f"{what}; nor beside it ({side}); its metrics: {json.dumps(result.metrics, default=str)}; "
                "free some space and rerun to compute it again")
    return (f"{what}; its result is kept in {kept} and goes into the store when the run is started again "
            "(free some space first if the disk is full)")


def _finish(config: MatrixConfig, store: ResultStore, run_id: int, summary: RunSummary, outcome: str,
            report: bool, log: Callable[[str], None]) -> None:
    """Record the run's outcome, write its report (if asked), close the store and log the outcome.
    Neither a failure to record nor one to report hides the run's own outcome: both are logged,
    and a failed report is kept in ``summary.report_error``."""
    from bench.report import write_run_outputs

    out = summary.out_dir
    try:
        store.finish_run(run_id, outcome)
    except sqlite3.Error as exc:
        log(f"{config.name}: could not record the run's outcome ({outcome}) in {store.path}: {exc}")
    if report:
        try:
            write_run_outputs(store, out, summary.keys, config)
        except Exception as exc:
            summary.report_error = (f"could not write the report: {type(exc).__name__}: {exc} (the results "
                                    f"are stored; rebuild it with `recshrink report {out}`)")
            log(f"{config.name}: {summary.report_error}")
    store.close()
    log(f"{config.name}: {outcome}; ran {summary.ran} cells ({summary.ok} ok, {summary.failed} failed, "
        f"{summary.flagged} flagged) in {summary.wall_seconds:.1f}s; harness overhead "
        f"(measurement + storage) {100 * summary.overhead_share:.1f}% of cell time; outputs in {out}")
