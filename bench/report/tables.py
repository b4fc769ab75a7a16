"""Tidy tables built from one or more result stores: ``cells.csv`` and ``summary.csv``.

``cells.csv``: one row per (cell, name), where a name is a metric or a measurement. Columns
:data:`CELL_COLUMNS`: the result's reported columns (:class:`bench.result.CellResult`), that is
the run, the cell key, dataset, method, then ``variant`` (the method plus any options given to
it, e.g. ``dsl[update_every=50]``), the targets, the seed, status, flag and error,
the achieved ratios, the method options and the budget (JSON), the device, the base checkpoint,
dataset checksum and code version, then ``name`` and ``value``. A failed cell has one row with
an empty name and no value. ``pandas.read_csv`` gives back the same dtypes (a text column that is
empty everywhere is float, as read_csv reads it).

``summary.csv``: one row per (dataset, variant, emb/edge/layers target) with ``n_seeds`` (successful
cells), ``n_failed``, ``n_flagged``, and for every name ``<name>_mean``, ``<name>_std`` (sample
standard deviation across seeds, 0 ddof=1; empty with one seed) and ``<name>_rel``: the mean over
seeds of ``value / lightgcn_value - 1`` against the uncompressed ``lightgcn`` of the same dataset
and seed (empty when no reference cell exists for those seeds). Statistics columns are added by
:mod:`bench.report.stats`.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.cell import model_shape, report_identity
from bench.contract import REFERENCE
from bench.result import CellResult, columns
from bench.store import ResultStore

IDENTITY = ["dataset", "variant", "emb_target", "edge_target", "layers_target"]
# the result's columns cells.csv shows (the run first), each followed by what cells.csv adds after it
_SHOWN = sorted(columns(reported=True), key=lambda c: c != "run")
_ADDED_AFTER = {"method": ["variant"],
                "error": ["emb_achieved", "edge_achieved", "options", "budget", "device"]}
CELL_COLUMNS = [*(c for shown in _SHOWN for c in (shown, *_ADDED_AFTER.get(shown, []))), "name", "value"]
# dtypes: a shown column's from its type in the result (an integer that may be missing reads as float)
_TYPES = typing.get_type_hints(CellResult)
_TEXT = [*(c for c in _SHOWN if _TYPES[c] in (str, str | None)), "variant", "options", "budget", "device",
         "name"]
_FLOAT = [*(c for c in _SHOWN if _TYPES[c] in (float, float | None, int | None)), "emb_achieved",
          "edge_achieved", "value"]


def variant_label(method: str, options: dict[str, Any]) -> str:
    """``method`` or ``method[k=v,...]`` when the cell gave the method options."""
    if not options:
        return method
    return f"{method}[{','.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


class MixedShapesError(ValueError):
    """The cells of one dataset train models of more than one shape (:func:`bench.cell.model_shape`)."""


def check_one_shape(cells: Iterable[dict[str, Any]]) -> None:
    """Raise :class:`MixedShapesError` when one dataset's cells (as stores give them) span more than one
    model shape: their figures relative to dense, their comparisons and their claims would pair
    models of different sizes, and a newer cell would replace an older one of another shape."""
    shapes: dict[str, dict[tuple[tuple[str, Any], ...], int]] = {}
    for cell in cells:
        shape = tuple(model_shape(cell["spec"]).items())
        per = shapes.setdefault(cell["dataset"], {})
        per[shape] = per.get(shape, 0) + 1
    for dataset, per in sorted(shapes.items()):
        if len(per) > 1:
            listed = "; ".join(", ".join(f"{k} {v}" for k, v in shape) + f" ({n} cells)"
                               for shape, n in sorted(per.items()))
            raise MixedShapesError(
                f"the cells of {dataset} train models of {len(per)} shapes ({listed}): a report "
                "compares one shape per dataset; report each shape's stores (or runs, --run) separately")


def load_cells(stores: Sequence[ResultStore], keys: Iterable[str] | None = None,
               runs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Cells of several stores merged: one per key, and one per identity (the latest finished);
    ``runs``: only the cells of these runs (a name no cell has is an error).

    The same identity (dataset, method, options, targets, seed) under another key means the cell was
    rerun with another code version or budget; the most recently finished one is reported. One
    dataset's cells must share one model shape (:func:`check_one_shape`).
    """
    by_key: dict[str, dict[str, Any]] = {}
    wanted = list(keys) if keys is not None else None
    held: set[str] = set()  # every run the stores hold, for the error naming them
    for store in stores:
        for cell in store.cells(wanted):
            held.add(cell["run"])
            if runs is not None and cell["run"] not in runs:
                continue
            old = by_key.get(cell["key"])
            if old is None or (cell["finished_at"] or "") > (old["finished_at"] or ""):
                by_key[cell["key"]] = cell
    if runs is not None:
        found = {c["run"] for c in by_key.values()}
        unknown = [r for r in runs if r not in found]
        if unknown:
            raise ValueError(f"no cells of run {unknown[0]!r} in these stores; their runs: "
                             f"{', '.join(sorted(held)) or 'none'}")
    check_one_shape(by_key.values())
    by_identity: dict[str, dict[str, Any]] = {}
    for cell in by_key.values():
        ident = report_identity(cell["spec"])
        old = by_identity.get(ident)
        if old is None or (cell["finished_at"] or "") > (old["finished_at"] or ""):
            by_identity[ident] = cell
    return sorted(by_identity.values(), key=lambda c: (c["dataset"], c["method"], -c["emb_target"],
                                                      -(c["edge_target"] or 1.0), c["seed"]))


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """The dtypes ``pandas.read_csv`` infers for this table (text empty everywhere reads as float)."""
    for c in _TEXT:
        frame[c] = frame[c].astype("float64" if frame[c].isna().all() else object)
    for c in _FLOAT:
        frame[c] = frame[c].astype("float64")
    frame["seed"] = frame["seed"].astype("int64")
    frame["flagged"] = frame["flagged"].astype(bool)
    return frame


def cells_frame(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """The long table of ``cells.csv`` (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for cell in cells:
        spec, m = cell["spec"], cell["measurements"]
        options = spec.get("options", {})
        base = {
            **{c: cell[c] for c in _SHOWN}, "variant": variant_label(cell["method"], options),
            "emb_achieved": m.get("emb_achieved"), "edge_achieved": m.get("edge_achieved"),
            "options": json.dumps(options, sort_keys=True),
            "budget": json.dumps(spec.get("budget", {}), sort_keys=True), "device": spec.get("device"),
        }
        # metrics first, then measurements, each in name order
        values = {**dict(sorted(cell["metrics"].items())), **dict(sorted(m.items()))}
        if not values:
            rows.append({**base, "name": None, "value": math.nan})
        for name, value in values.items():
            rows.append({**base, "name": name, "value": math.nan if value is None else float(value)})
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS)
    frame = frame.astype({c: object for c in _TEXT})
    return _canonical(frame)


def summary_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """``summary.csv`` without statistics (see the module docstring)."""
    ids = IDENTITY
    per_cell = cells.drop_duplicates("key")
    # a missing target is NaN, which groupby would drop: group on a filled copy
    fill = {"edge_target": -1.0, "layers_target": -1.0}
    counts = (per_cell.assign(ok=per_cell["status"] == "ok", failed=per_cell["status"] == "failed",
                              flag=per_cell["flagged"] & (per_cell["status"] == "ok"))
              .fillna(fill).groupby([*ids, "method"], dropna=False)
              .agg(n_seeds=("ok", "sum"), n_failed=("failed", "sum"), n_flagged=("flag", "sum"))
              .reset_index())
    ok = cells[(cells["status"] == "ok") & cells["name"].notna()].fillna(fill)
    if ok.empty:
        out = counts
    else:
        stats = ok.groupby([*ids, "name"], dropna=False)["value"].agg(["mean", "std"]).reset_index()
        wide = stats.pivot_table(index=ids, columns="name", values=["mean", "std"], dropna=False)
        wide.columns = [f"{name}_{stat}" for stat, name in wide.columns]
        rel = _relative_to_reference(ok)
        out = counts.merge(wide.reset_index(), on=ids, how="left")
        if rel is not None:
            out = out.merge(rel, on=ids, how="left")
        names = sorted(ok["name"].unique())
        ordered = [f"{n}_{s}" for n in names for s in ("mean", "std", "rel") if f"{n}_{s}" in out.columns]
        out = out[[*ids, "method", "n_seeds", "n_failed", "n_flagged", *ordered]]
    for c in ("edge_target", "layers_target"):
        out[c] = out[c].replace(-1.0, np.nan)
    # by target (loosest first), then method: the methods compared at one target sit together
    by_target = out.assign(_edge=out["edge_target"].fillna(1.0), _layers=out["layers_target"].fillna(np.inf))
    return (by_target.sort_values(["dataset", "emb_target", "_edge", "_layers", "method", "variant"],
                                  ascending=[True, False, False, False, True, True], kind="stable")
            .drop(columns=["_edge", "_layers"]).reset_index(drop=True).copy())  # one block, not many


def _relative_to_reference(ok: pd.DataFrame) -> pd.DataFrame | None:
    ref = ok[ok["method"] == REFERENCE][["dataset", "seed", "name", "value"]]
    if ref.empty:
        return None
    ref = ref.drop_duplicates(["dataset", "seed", "name"]).rename(columns={"value": "ref"})
    joined = ok.merge(ref, on=["dataset", "seed", "name"], how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        joined["rel"] = np.where(joined["ref"] != 0, joined["value"] / joined["ref"] - 1.0, np.nan)
    rel = joined.groupby([*IDENTITY, "name"], dropna=False)["rel"].mean().reset_index()
    wide = rel.pivot_table(index=IDENTITY, columns="name", values="rel", dropna=False)
    wide.columns = [f"{name}_rel" for name in wide.columns]
    return wide.reset_index()
