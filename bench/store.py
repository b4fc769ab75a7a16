"""The results store: one SQLite row per cell, keyed by a hash of (cell config, dataset checksum,
code version) (:attr:`bench.cell.CellSpec.key`).

Tables

* ``cells``: one row per cell, one column per field of :class:`bench.result.CellResult` in field
  order: identity columns (run, dataset, method, targets, seed), ``status`` (``ok`` or ``failed``),
  ``flagged`` and ``flag_reason``, ``error`` and ``traceback``, and JSON columns ``spec``,
  ``metrics``, ``measurements``, ``settings``, ``info``, ``timings``, ``environment`` (package
  versions, device, threads, git SHA), plus ``base_checkpoint`` (sha256 of the shared base model),
  ``dataset_checksum``, ``code_version``, start/finish times and the cell's seconds.
* ``cell_values``: the same metrics and measurements in long form ``(key, name, value)`` for SQL.
* ``runs``: one row per invocation of ``recshrink run`` (config text, command, times, outcome).

Every write is one transaction (``with connection``): a cell's row and its values appear together
or not at all, so an interrupted or killed run leaves no partial row. Only the client process
writes; workers send results back.

Safety around the file:

* it is integrity-checked when opened (SQLite's ``quick_check``): a damaged store is an error that
  names it and says how to recover, never a silent read;
* a result that cannot be written (a full disk, a store damaged while running) is kept as JSON in
  ``unstored/<key>.json`` beside the store (:func:`keep_unstored`) and put into the store by the
  next run (:func:`take_unstored`), so no computed cell is lost;
* one ``recshrink run`` at a time per output folder (:func:`run_lock`): a file lock held for the
  run, released by the kernel on any exit (so a killed run leaves no stale lock), whose file
  names the holder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import math
import os
import re
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.files import write_atomically
from bench.result import CellResult, column_declarations, columns, now

SCHEMA_VERSION = 1
#: folder beside the store holding results that could not be written to it
UNSTORED_DIR = "unstored"
LOCK_FILE = ".recshrink-run.lock"
_COLUMNS = columns()
_JSON_COLUMNS = columns(json=True)
_CELLS = ",\n    ".join(column_declarations())
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    {_CELLS}
);
CREATE TABLE IF NOT EXISTS cell_values (
    key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    command TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    environment TEXT
);
"""


class StoreError(RuntimeError):
    """The results file is not a recshrink store (or has an incompatible schema)."""


class RunLockedError(StoreError):
    """Another ``recshrink run`` holds the output folder."""


def _json(value: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), sort_keys=True, default=str)


def _reading(method: Callable[..., Any]) -> Callable[..., Any]:
    """A store read whose SQLite failure (a page damaged past what ``quick_check`` sees, e.g.
    text that is not UTF-8) is a :class:`StoreError` naming the file and how to recover."""

    @functools.wraps(method)
    def read(self: ResultStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._damaged(str(exc)[:200])) from exc

    return read


class ResultStore:
    """A SQLite results file (see the module docstring)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        """Open the store at ``path``, creating it (and its folder) if ``create``; otherwise it must
        already be a store. Either way it is integrity-checked first: a damaged file is a
        :class:`StoreError` naming it and saying how to recover, never read or written."""
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        try:
            self.conn = sqlite3.connect(self.path, timeout=60)
            self._check_integrity()
            if not create and not self._has_cells_table():
                raise StoreError(f"{self.path} is not a recshrink results store (it has no cells table"
                                 + (": the file is empty)" if self.path.stat().st_size == 0 else ")"))
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA journal_mode = WAL")
            with self.conn:
                self.conn.executescript(_SCHEMA)
                row = self.conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(f"{self.path}: schema version {row[0]}, this recshrink reads "
                                     f"{SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, StoreError) as exc:
            if hasattr(self, "conn"):
                self.conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(self._damaged(str(exc))) from exc

    def _check_integrity(self) -> None:
        """SQLite's ``quick_check`` (every page and index readable and consistent): milliseconds for
        a store of thousands of cells."""
        problems = [r[0] for r in self.conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            lines = [ln for p in problems for ln in p.splitlines() if not ln.startswith("***")]
            more = f" and {len(lines) - 2} more problems" if len(lines) > 2 else ""
            raise StoreError(self._damaged("; ".join(lines[:2]) + more))

    def _damaged(self, detail: str) -> str:
        return (f"the results store {self.path} is damaged or not an SQLite file ({detail}); nothing was "
                f"read from or written to it. Move it aside to start afresh, or recover what it holds: "
                f"sqlite3 {self.path} .recover | sqlite3 recovered.sqlite")

    def _has_cells_table(self) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cells'").fetchone() is not None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------------
    def start_run(self, name: str, config_text: str, command: str, environment: dict[str, Any]) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (name, config, command, started_at, environment) VALUES (?,?,?,?,?)",
                (name, config_text, command, now(), _json(environment)),
            )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished_at=?, outcome=? WHERE id=?",
                              (now(), outcome, run_id))

    @_reading
    def runs(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM runs ORDER BY id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # --- cells ----------------------------------------------------------------------------------
    def put(self, result: CellResult) -> None:
        """Insert or replace a cell's row and its long-form values in one transaction."""
        row = [_json(getattr(result, c)) if c in _JSON_COLUMNS else getattr(result, c) for c in _COLUMNS]
        values = {**result.metrics, **result.measurements}
        with self.conn:
            self.conn.execute("DELETE FROM cell_values WHERE key=?", (result.key,))
            self.conn.execute(f"INSERT OR REPLACE INTO cells ({', '.join(_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(_COLUMNS))})", row)
            self.conn.executemany(
                "INSERT INTO cell_values VALUES (?,?,?)",
                [(result.key, k, float(v)) for k, v in values.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)],
            )

    @_reading
    def statuses(self) -> dict[str, str]:
        """``{key: status}`` of every stored cell."""
        return dict(self.conn.execute("SELECT key, status FROM cells").fetchall())

    @_reading
    def cells(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Stored cells (all, or those with ``keys``), each a dict of the :class:`CellResult` fields
        with JSON columns decoded."""
        cur = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM cells ORDER BY dataset, method, "
                                "emb_target DESC, edge_target DESC, seed")
        wanted = set(keys) if keys is not None else None
        out = []
        for row in cur.fetchall():
            rec = dict(zip(_COLUMNS, row, strict=True))
            if wanted is not None and rec["key"] not in wanted:
                continue
            for c in _JSON_COLUMNS:
                rec[c] = json.loads(rec[c]) if rec[c] else {}
            rec["flagged"] = bool(rec["flagged"])
            out.append(rec)
        return out

    @_reading
    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0])


def keep_unstored(result: CellResult, out_dir: Path) -> Path:
    """Write ``result`` as JSON to ``out_dir/unstored/<key>.json`` (through a temporary file and a
    rename), for :func:`take_unstored` to store later; returns the file."""
    folder = Path(out_dir) / UNSTORED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.key}.json"
    text = _json(dataclasses.asdict(result))
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def take_unstored(store: ResultStore, out_dir: Path) -> list[str]:
    """Put every result kept by :func:`keep_unstored` in ``out_dir`` into ``store`` and remove its
    file; returns their keys. A file that does not hold a result is an error naming it."""
    folder = Path(out_dir) / UNSTORED_DIR
    taken = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            result = CellResult(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path} does not hold a cell result ({exc}); move it away") from exc
        store.put(result)
        path.unlink()
        taken.append(result.key)
    return taken


_HOLDER = re.compile(r"PID (\d+) on (\S+), started (\S+)")


def lock_holder(out_dir: Path | str) -> tuple[str, int, str] | None:
    """What :func:`run_lock` wrote in ``out_dir``'s lock file: the holder's line, process id and
    host; None when no run holds it or ever did (an ended run empties the file; a killed one
    leaves its line, so check that the process still runs)."""
    try:
        text = (Path(out_dir) / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    m = _HOLDER.match(text)
    return (text, int(m.group(1)), m.group(2)) if m else None


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one run: a second run on it is a :class:`RunLockedError` naming the
    first one's process. The kernel releases the lock when the holder exits in any way."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "a process that has not written its name yet"
            raise RunLockedError(f"another recshrink run is writing to {out_dir} ({holder}); wait for it "
                                 f"to finish, or give this one another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"PID {os.getpid()} on {socket.gethostname()}, started {now()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
