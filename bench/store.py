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
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.result import CellResult, column_declarations, columns, now

SCHEMA_VERSION = 1
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


class ResultStore:
    """A SQLite results file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=60)
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
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable results store: {exc}") from exc

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

    def statuses(self) -> dict[str, str]:
        """``{key: status}`` of every stored cell."""
        return dict(self.conn.execute("SELECT key, status FROM cells").fetchall())

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

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0])
