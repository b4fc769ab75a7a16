"""What one cell produced: :class:`CellResult`, the one definition of a cell result's fields.

The cell fills it (:func:`bench.cell.run_cell`), the store keeps one row per result with one column
per field, in field order (:mod:`bench.store` builds its ``cells`` table, writes and reads from
:func:`dataclasses.fields`), and ``cells.csv`` copies the fields marked ``reported``
(:mod:`bench.report.tables`). Each field's metadata holds its SQL column declaration, whether it is
stored as JSON, and whether the report shows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def _column(sql: str, default: Any = dataclasses.MISSING, *, reported: bool = False) -> Any:
    """A scalar column: its SQL declaration, whether ``cells.csv`` shows it, its default."""
    return field(default=default, metadata={"sql": sql, "json": False, "reported": reported})


# a JSON column: a dict, empty until filled
_JSON = {"sql": "TEXT NOT NULL", "json": True, "reported": False}


def now() -> str:
    """The current UTC time as ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CellResult:
    """One cell's outcome: its identity (copied from its spec), status, flag and error, the metrics,
    measurements and descriptions it produced, and where and when it ran.

    ``status`` is ``failed`` until the cell completes; ``metrics`` and ``measurements`` hold numbers
    only (they also go to the store's long table), ``info`` the descriptions that go with them.
    """

    key: str = _column("TEXT PRIMARY KEY", reported=True)
    run: str = _column("TEXT NOT NULL", reported=True)
    dataset: str = _column("TEXT NOT NULL", reported=True)
    method: str = _column("TEXT NOT NULL", reported=True)
    emb_target: float = _column("REAL NOT NULL", reported=True)
    edge_target: float | None = _column("REAL", reported=True)
    layers_target: int | None = _column("INTEGER", reported=True)
    seed: int = _column("INTEGER NOT NULL", reported=True)
    status: str = _column("TEXT NOT NULL CHECK (status IN ('ok', 'failed'))", "failed", reported=True)
    flagged: bool = _column("INTEGER NOT NULL DEFAULT 0", False, reported=True)
    flag_reason: str | None = _column("TEXT", None, reported=True)
    error: str | None = _column("TEXT", None, reported=True)
    traceback: str | None = _column("TEXT", None)
    spec: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    metrics: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    measurements: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    settings: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    info: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    timings: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    # package versions, device, threads, git SHA
    environment: dict[str, Any] = field(default_factory=dict, metadata=_JSON)
    base_checkpoint: str | None = _column("TEXT", None, reported=True)  # sha256 of the shared base
    dataset_checksum: str | None = _column("TEXT", None, reported=True)
    code_version: str | None = _column("TEXT", None, reported=True)
    started_at: str | None = _column("TEXT", None)
    finished_at: str | None = _column("TEXT", None, reported=True)
    seconds: float | None = _column("REAL", None)  # the cell's total time (``timings["total"]``)

    @classmethod
    def start(cls, spec: dict[str, Any], key: str) -> CellResult:
        """An empty result for the cell ``spec`` (a cell spec as a dict) with ``key``, started now,
        failed until filled in."""
        return cls(key=key, run=spec.get("run", ""), dataset=spec["dataset"], method=spec["method"],
                   emb_target=spec["emb_target"], edge_target=spec.get("edge_target"),
                   layers_target=spec.get("layers_target"), seed=spec["seed"], spec=spec,
                   dataset_checksum=spec.get("dataset_checksum"), code_version=spec.get("code_version"),
                   started_at=now())


def columns(*, json: bool | None = None, reported: bool | None = None) -> list[str]:
    """Names of the result's fields (the store's columns) in order, those with the given ``json``
    and ``reported`` marks if given."""
    return [f.name for f in dataclasses.fields(CellResult)
            if (json is None or f.metadata["json"] == json)
            and (reported is None or f.metadata["reported"] == reported)]


def column_declarations() -> list[str]:
    """``name SQL-declaration`` for every field, in order: the store's ``cells`` table."""
    return [f"{f.name} {f.metadata['sql']}" for f in dataclasses.fields(CellResult)]
