"""One definition of a cell result: the store's table, its rows and the report's columns follow it."""

from __future__ import annotations

import dataclasses
import math
import sqlite3

from bench.report.tables import CELL_COLUMNS, cells_frame
from bench.result import CellResult, columns
from bench.store import ResultStore
from tests.helpers import FAILED, FLAGGED, result

# the layout of every published store: a store written now must keep it to stay readable
PUBLISHED_CELLS_TABLE = [
    ("key", "TEXT"), ("run", "TEXT"), ("dataset", "TEXT"), ("method", "TEXT"), ("emb_target", "REAL"),
    ("edge_target", "REAL"), ("layers_target", "INTEGER"), ("seed", "INTEGER"), ("status", "TEXT"),
    ("flagged", "INTEGER"), ("flag_reason", "TEXT"), ("error", "TEXT"), ("traceback", "TEXT"),
    ("spec", "TEXT"), ("metrics", "TEXT"), ("measurements", "TEXT"), ("settings", "TEXT"), ("info", "TEXT"),
    ("timings", "TEXT"), ("environment", "TEXT"), ("base_checkpoint", "TEXT"), ("dataset_checksum", "TEXT"),
    ("code_version", "TEXT"), ("started_at", "TEXT"), ("finished_at", "TEXT"), ("seconds", "REAL"),
]


def test_the_store_table_is_the_result_fields_in_the_published_layout(tmp_path):
    ResultStore(tmp_path / "r.sqlite").close()
    con = sqlite3.connect(tmp_path / "r.sqlite")
    table = [(name, kind) for _, name, kind, *_ in con.execute("PRAGMA table_info(cells)")]
    con.close()
    assert table == PUBLISHED_CELLS_TABLE
    assert [name for name, _ in table] == [f.name for f in dataclasses.fields(CellResult)] == columns()


def test_a_result_round_trips_through_the_store_unchanged(tmp_path):
    cells = [result("toy-a", 0.5, 0), result(*FAILED), result(*FLAGGED)]
    cells[0].info = {"training_stages": [{"stage": "base", "epochs": 3, "at_budget": False}]}
    cells[0].settings = {"report_note": ["not comparable"], "bits": 8}
    cells[1].traceback = "Traceback (most recent call last): ..."
    with ResultStore(tmp_path / "r.sqlite") as store:
        for c in cells:
            store.put(c)
        back = {c["key"]: c for c in store.cells()}
    assert set(back) == {c.key for c in cells}
    for c in cells:
        assert back[c.key] == dataclasses.asdict(c)
        assert CellResult(**back[c.key]) == c


def test_the_report_shows_the_reported_result_columns_as_stored(tmp_path):
    shown = columns(reported=True)
    assert set(shown) <= set(CELL_COLUMNS)
    assert set(CELL_COLUMNS) - set(shown) == {"variant", "emb_achieved", "edge_achieved", "options", "budget",
                                              "device", "name", "value"}
    cell = result(*FLAGGED)
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(cell)
        frame = cells_frame(store.cells())
    assert list(frame.columns) == CELL_COLUMNS
    assert len(frame) == len(cell.metrics) + len(cell.measurements)
    row = frame.iloc[0]
    for c in shown:
        expected = getattr(cell, c)
        if expected is None:
            assert row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])), c
        else:
            assert row[c] == expected, c
