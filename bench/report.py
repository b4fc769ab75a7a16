"""Run outputs written from the results store: ``cells.csv`` and a plain HTML table.

``cells.csv`` is tidy long format, one row per (cell, name): ``run``, ``key``, ``dataset``,
``method``, ``emb_target``, ``edge_target``, ``layers_target``, ``seed``, ``status``,
``flagged``, ``name``, ``value``, plus the cell's ``options`` (JSON), ``base_checkpoint`` and
``code_version``. Metrics and measurements share the ``name`` column (``recall@20``,
``flops``, ``peak_mem_scoring_bytes``...). A failed cell has one row with an empty name, its value
missing and the error in ``error``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.store import ResultStore

CELL_COLUMNS = ["run", "key", "dataset", "method", "emb_target", "edge_target", "layers_target", "seed",
                "status", "flagged", "name", "value", "error", "options", "base_checkpoint", "code_version"]


def cells_frame(store: ResultStore, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """The long table of ``cells.csv`` (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for cell in store.cells(keys):
        base = {
            "run": cell["run"], "key": cell["key"], "dataset": cell["dataset"], "method": cell["method"],
            "emb_target": cell["emb_target"], "edge_target": cell["edge_target"],
            "layers_target": cell["layers_target"], "seed": cell["seed"], "status": cell["status"],
            "flagged": cell["flagged"], "error": cell["error"] or "",
            "options": json.dumps(cell["spec"].get("options", {}), sort_keys=True),
            "base_checkpoint": cell["base_checkpoint"] or "", "code_version": cell["code_version"] or "",
        }
        values = {**cell["metrics"], **cell["measurements"]}
        if not values:
            rows.append({**base, "name": "", "value": math.nan})
        for name, value in values.items():
            rows.append({**base, "name": name, "value": math.nan if value is None else float(value)})
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS)
    return frame


def write_run_outputs(store: ResultStore, out: Path, keys: Iterable[str] | None, config: Any = None) -> None:
    """``cells.csv`` and ``index.html`` for the cells of ``keys`` (all cells if None)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = cells_frame(store, keys)
    frame.to_csv(out / "cells.csv", index=False)
    (out / "index.html").write_text(_html(frame, config), encoding="utf-8")


_SHOWN = ["recall@20", "ndcg@20", "emb_achieved", "edge_achieved", "params", "bits", "flops",
          "latency_scoring_b64_p50_ms", "peak_mem_scoring_bytes", "train_seconds"]


def _html(frame: pd.DataFrame, config: Any) -> str:
    title = f"recshrink: {getattr(config, 'name', 'results')}"
    if frame.empty:
        body = "<p>No cells yet.</p>"
    else:
        ok = frame[frame["name"].isin(_SHOWN)]
        wide = ok.pivot_table(index=["dataset", "method", "emb_target", "seed"], columns="name",
                              values="value", aggfunc="first")
        wide = wide[[c for c in _SHOWN if c in wide.columns]]
        failed = frame[frame["status"] == "failed"].drop_duplicates("key")
        body = wide.to_html(float_format=lambda v: f"{v:.4g}", na_rep="")
        if not failed.empty:
            cols = ["dataset", "method", "emb_target", "seed", "error"]
            body += "<h2>Failed cells</h2>" + failed[cols].to_html(index=False)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
