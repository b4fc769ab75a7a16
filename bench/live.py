"""Live progress of a run's cells, readable from another shell while the run goes on.

A gowalla cell trains for hours; the run's progress bar counts finished cells only. So while a
cell runs, it keeps ``<out>/.live/<cell key>.json`` up to date: the training stage it is in, the
epoch and the stage's epoch budget, the last and best validation values, the stage's wall time
(including the part before a resume), the last epoch saved to an epoch checkpoint (where a
stopped run would resume), its process and host. The file is written atomically after each epoch
(at most once every :data:`MIN_INTERVAL_SECONDS`, and always at a stage's first report) and
removed when the cell ends, finished or failed. The run itself keeps ``run.json`` there: the
cells it had to run and how many have finished (:func:`write_run`). ``recshrink status OUT``
reads the files (:func:`read_live`, :func:`read_run`); a file whose process is gone is shown as
stopped.

Training reports here without knowing about cells: :func:`watching` installs a cell's board for
the duration of the cell, :func:`stage` names the stage that trains, and
:func:`bench.training.fit_bpr` calls :func:`report` after each epoch (a no-op outside
:func:`watching`). This module imports neither torch nor the training stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.files import write_atomically

LIVE_DIR = ".live"
RUN_FILE = "run.json"  # the run's own file there (the others are cells', named by cell key)
#: the least wall time between two writes of a cell's file (a stage's first report always writes)
MIN_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class EpochProgress:
    """Where one training run stands after an epoch (``epoch = 0``: not started; after a resume,
    the first report is the restored epoch with ``resumed_from`` set to it)."""

    epoch: int
    epochs: int  # the stage's epoch budget
    valid_metric: str
    last_valid: float | None  # the latest validation value (None before the first validation)
    best_valid: float | None
    best_epoch: int
    validations_since_best: int
    patience: int
    seconds: float  # the run's wall time so far, including the part before a resume
    last_epoch_seconds: float | None
    checkpoint_epoch: int | None  # the last epoch in an epoch checkpoint (None: not checkpointed)
    resumed_from: int = 0


@dataclass
class _Board:
    path: Path
    label: str
    key: str
    started: float = field(default_factory=time.time)
    stages: list[str] = field(default_factory=list)
    written: float = -float("inf")
    fresh_stage: bool = True

    def write(self, progress: EpochProgress) -> None:
        now = time.monotonic()
        if not self.fresh_stage and now - self.written < MIN_INTERVAL_SECONDS:
            return
        body = {"key": self.key, "label": self.label, "cell_started": self.started,
                "stage": self.stages[-1] if self.stages else "training", **asdict(progress)}
        if _write(self.path, body):
            self.written, self.fresh_stage = now, False


def _write(path: Path, body: dict[str, Any]) -> bool:
    """``body`` with this process, its host and the time as ``path``'s JSON, atomically; False when
    the write failed (progress is a convenience: a full disk must not fail a cell or a run)."""
    body = {**body, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(body), encoding="utf-8"))
    except OSError:
        return False
    return True


def _read(path: Path) -> dict[str, Any] | None:
    """A file :func:`_write` wrote, with ``alive`` (whether its process still runs); None when it
    cannot be read or is incomplete."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["alive"] = process_alive(int(data["pid"]), str(data["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


_board: ContextVar[_Board | None] = ContextVar("recshrink_live_board", default=None)


@contextlib.contextmanager
def watching(live_dir: Path | str | None, key: str, label: str) -> Iterator[None]:
    """Report the training inside the block as cell ``key`` (``label``: how it is shown) to
    ``<live_dir>/<key>.json``, removed when the block ends; ``live_dir`` None: report nowhere."""
    if live_dir is None:
        yield
        return
    board = _Board(Path(live_dir) / f"{key}.json", label, key)
    token = _board.set(board)
    try:
        yield
    finally:
        _board.reset(token)
        with contextlib.suppress(OSError):
            board.path.unlink(missing_ok=True)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the training stage that runs inside the block (stages nest: the innermost is shown)."""
    board = _board.get()
    if board is None:
        yield
        return
    board.stages.append(name)
    board.fresh_stage = True
    try:
        yield
    finally:
        board.stages.pop()
        board.fresh_stage = True


def current_title() -> str | None:
    """``"<cell label> <stage>"`` for the cell being watched (what its epoch bar is titled), or None."""
    board = _board.get()
    if board is None:
        return None
    return f"{board.label} {board.stages[-1]}" if board.stages else board.label


def report(progress: EpochProgress) -> None:
    """Record ``progress`` for the cell being watched (nothing outside :func:`watching`)."""
    board = _board.get()
    if board is not None:
        board.write(progress)


def process_alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` runs on ``host`` (another host's process is taken to run: it cannot be
    checked from here)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_live(out_dir: Path | str) -> list[dict[str, Any]]:
    """The cells' live files under ``out_dir`` as dicts with ``alive`` (unreadable or partial ones
    skipped), oldest cell first."""
    folder = Path(out_dir) / LIVE_DIR
    paths = sorted(p for p in folder.glob("*.json") if p.name != RUN_FILE) if folder.is_dir() else []
    cells = [c for c in map(_read, paths) if c is not None]
    return sorted(cells, key=lambda c: c.get("cell_started", 0.0))


def write_run(out_dir: Path | str, progress: dict[str, Any]) -> None:
    """Record the run's own progress (cells to run, finished so far) in ``<out_dir>/.live/run.json``,
    atomically; a failed write is ignored, as for the cells' files."""
    _write(Path(out_dir) / LIVE_DIR / RUN_FILE, progress)


def end_run(out_dir: Path | str) -> None:
    """Remove the run's file when the run ends, however it ends (a killed run leaves it)."""
    with contextlib.suppress(OSError):
        (Path(out_dir) / LIVE_DIR / RUN_FILE).unlink(missing_ok=True)


def read_run(out_dir: Path | str) -> dict[str, Any] | None:
    """The run's progress as :func:`write_run` left it, with ``alive`` (whether its process still
    runs), or None (no run has written one, or it is unreadable)."""
    return _read(Path(out_dir) / LIVE_DIR / RUN_FILE)


def clear_live(out_dir: Path | str) -> None:
    """Remove the live files under ``out_dir`` (the cells' and the run's): a run starting there
    (holding its lock) is the only writer, so any file left is from a run that was killed."""
    folder = Path(out_dir) / LIVE_DIR
    for path in folder.glob("*.json") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            path.unlink()
