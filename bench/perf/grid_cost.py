"""The CPU time of one seed of a benchmark grid, cell by cell, for one checkout of the code.

    python -m bench.perf.grid_cost run --run before=/path/to/old/checkout --run after=. \\
        --workers 2 --work /tmp/grid --out reports/performance/grid
    python -m bench.perf.grid_cost compare reports/performance/grid/grid-before.csv \\
        reports/performance/grid/grid-after.csv --out reports/performance/grid

``run`` expands the grid (default: the published yelp-lightgnn configs ``yelp-lightgnn``,
``yelp-methods`` and ``legcf-lerg``, restricted to ``yelp-lightgnn`` and seed 0) with this
checkout's config parser, writes each cell as a one-cell matrix config, and runs it as
``python -m bench.cli run`` in a fresh process of the measured checkout (its directory first on
``PYTHONPATH``), one torch thread per cell. The cost of a cell is the user + system CPU time of
that process (``os.wait4``), so a cell that shares the machine with another job is charged for its
own work rather than for waiting. Cells that share a cached stage (the dense base of magnitude
pruning, UnKD and LightGNN, LightGNN's teacher and runs) form one unit, run in order in one worker
with that checkout's own cache folder, so every cached stage is trained once and charged to the
first cell that needs it, as in a real grid run. ``--workers`` units run at once (longest kind of
method first). Each finished cell is appended to ``grid-<label>.csv`` at once; a rerun skips the
cells already there, so a stopped run resumes.

``compare`` pairs the cells of two labels and writes ``grid.md`` / ``grid.csv``: each cell's CPU
seconds before and after, the ratio, and whether every test metric at the same seed is identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure.latency import machine_load
from bench.perf.common import default_data_dir, md_table

CONFIG_DIR = Path(__file__).parents[1] / "configs"
DEFAULT_CONFIGS = ("yelp-lightgnn", "yelp-methods", "legcf-lerg")
METRICS = ("recall@20", "ndcg@20")
FIELDS = ("label", "config", "cell", "method", "emb_target", "edge_target", "status", "cpu_user_s",
          "cpu_sys_s", "cpu_s", "wall_s", "cell_seconds", "base_seconds", "recall@20", "ndcg@20",
          "metrics", "git_sha", "load_1m_start", "load_1m_end", "started_at", "error")


@dataclass
class GridCell:
    config: str
    label: str
    method: str
    emb: float
    edge: float | None
    layers: int | None
    seed: int
    dataset: str
    options: dict[str, Any]
    budget: dict[str, Any]
    measure: dict[str, Any]

    @property
    def ident(self) -> str:
        return f"{self.config}:{self.label}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def cell_toml(cell: GridCell, name: str) -> str:
    """A one-cell matrix config: the cell's dataset, method (with its options), target and seed, and
    the budget and measurement settings it ran under in its grid."""
    target = f"emb = {cell.emb!r}"
    if cell.edge is not None:
        target += f", edge = {cell.edge!r}"
    if cell.layers is not None:
        target += f", layers = {cell.layers!r}"
    lines = [f"name = {json.dumps(name)}", f"datasets = [{json.dumps(cell.dataset)}]",
             f"targets = [{{{target}}}]", f"seeds = [{cell.seed}]", "", f"[methods.{cell.method}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(cell.options.items())]
    lines += ["", "[budget]"] + [f"{k} = {_toml_value(v)}" for k, v in sorted(cell.budget.items())]
    lines += ["", "[measure]"] + [f"{k} = {_toml_value(v)}" for k, v in sorted(cell.measure.items())]
    return "\n".join(lines) + "\n"


def grid_cells(configs: Sequence[str], dataset: str, seed: int) -> list[GridCell]:
    """The grid's cells in each config's planned order, without duplicates across configs."""
    from bench.config import load_config

    cells, seen = [], set()
    for name in configs:
        path = Path(name) if name.endswith(".toml") else CONFIG_DIR / f"{name}.toml"
        config = load_config(path)
        if dataset not in config.datasets:
            raise SystemExit(f"{path}: dataset {dataset!r} is not in this config")
        config.datasets, config.seeds = [dataset], [seed]
        for spec in config.cells("cpu", {}, "grid"):
            key = (spec.method, spec.emb_target, spec.edge_target, spec.layers_target,
                   json.dumps(spec.options, sort_keys=True), json.dumps(spec.budget, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            cells.append(GridCell(config=config.name, label=spec.label(), method=spec.method,
                                  emb=spec.emb_target, edge=spec.edge_target, layers=spec.layers_target,
                                  seed=seed, dataset=dataset, options=spec.options,
                                  budget=spec.budget, measure=spec.measure))
    return cells


def shares_stages(method: str) -> bool:
    """Whether a method's cells reuse the cached dense base of their dataset and budget (the
    method's ``uses_base``, from the registry)."""
    from bench.registry import get_method

    return bool(get_method(method).uses_base)


def units(cells: list[GridCell], first: tuple[str, ...] = ()) -> list[list[GridCell]]:
    """Cells that share cached stages (same config and budget, a method that uses the base) in one
    unit, in planned order; every other cell alone. Units with a method of ``first`` come first, in
    that order (the longest kinds, so that the workers finish close together); then the larger
    units."""
    groups: dict[str, list[GridCell]] = {}
    for c in cells:
        if shares_stages(c.method):
            key = f"shared:{json.dumps(c.budget, sort_keys=True)}"
        else:
            key = f"own:{c.ident}"
        groups.setdefault(key, []).append(c)

    def rank(unit: list[GridCell]) -> int:
        return min(first.index(c.method) if c.method in first else len(first) for c in unit)

    return sorted(groups.values(), key=lambda u: (rank(u), -len(u)))


def _stored(out: Path) -> dict[str, Any]:
    """The one cell of a finished one-cell run: status, metrics, seconds, timings, git SHA."""
    path = out / "results.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as con:
        row = con.execute("SELECT status, metrics, seconds, timings, environment, error "
                          "FROM cells").fetchone()
    if row is None:
        return {}
    status, metrics, seconds, timings, env, error = row
    return {"status": status, "metrics": json.loads(metrics or "{}"), "seconds": seconds,
            "timings": json.loads(timings or "{}"), "environment": json.loads(env or "{}"),
            "error": error}


def run_cell(cell: GridCell, checkout: Path, label: str, work: Path, data_dir: str | None) -> dict[str, Any]:
    """Run one cell in a fresh process of ``checkout``; its CPU time from ``os.wait4``."""
    digest = hashlib.sha256(cell.ident.encode()).hexdigest()[:8]
    name = f"grid-{cell.config}-{cell.method}-{digest}"
    cell_dir = work / label / name
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "config.toml").write_text(cell_toml(cell, name))
    env = {**os.environ, "PYTHONPATH": str(checkout), "RECSHRINK_CACHE": str(work / label / "cache"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if data_dir:
        env["RECSHRINK_DATA"] = str(Path(data_dir).resolve())
    cmd = [sys.executable, "-m", "bench.cli", "run", str(cell_dir / "config.toml"), "--out",
           str(cell_dir / "out"), "--threads", "1", "--no-progress"]
    load0, started, t0 = machine_load()["load_1m"], time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    with open(cell_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stored = _stored(cell_dir / "out")
    ok = os.waitstatus_to_exitcode(status) == 0 and stored.get("status") == "ok"
    metrics = stored.get("metrics", {})
    return {"label": label, "config": cell.config, "cell": cell.label, "method": cell.method,
            "emb_target": cell.emb, "edge_target": cell.edge, "status": "ok" if ok else "failed",
            "cpu_user_s": round(usage.ru_utime, 2), "cpu_sys_s": round(usage.ru_stime, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
            "cell_seconds": round(stored.get("seconds") or 0.0, 2),
            "base_seconds": round(stored.get("timings", {}).get("base", 0.0), 2),
            **{m: metrics.get(m, "") for m in METRICS}, "metrics": json.dumps(metrics, sort_keys=True),
            "git_sha": stored.get("environment", {}).get("git_sha", ""),
            "load_1m_start": _rounded(load0), "load_1m_end": _rounded(machine_load()["load_1m"]),
            "started_at": started,
            "error": "" if ok else (stored.get("error") or f"exit {os.waitstatus_to_exitcode(status)}; "
                                    f"see {cell_dir / 'log.txt'}")}


def _rounded(load: float | None) -> float | str:
    return "" if load is None else round(load, 2)


def _done(path: Path) -> set[str]:
    return set(_read(path)) if path.exists() else set()


def run_grid(args: argparse.Namespace) -> int:
    """Measure every ``LABEL=CHECKOUT`` of ``args.run``: all their units on one pool of workers."""
    import threading

    cells = grid_cells(args.configs, args.dataset, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[int, int, str, Path, list[GridCell]]] = []
    for order, item in enumerate(args.run):
        label, _, checkout = item.partition("=")
        if not label or not checkout or not Path(checkout).is_dir():
            raise SystemExit(f"--run expects LABEL=CHECKOUT with an existing folder, got {item!r}")
        done = _done(args.out / f"grid-{label}.csv")
        for rank, unit in enumerate(units(cells, tuple(args.first))):
            unit = [c for c in unit if c.ident not in done]
            if unit:
                jobs.append((rank, order, label, Path(checkout).resolve(), unit))
        print(f"{label}: {len(cells)} cells, {len(done)} already measured", file=sys.stderr)
    jobs.sort(key=lambda j: (j[0], j[1]))
    print(f"{sum(len(j[4]) for j in jobs)} cells to run in {len(jobs)} units on {args.workers} workers",
          file=sys.stderr)
    lock = threading.Lock()

    def work(job: tuple[int, int, str, Path, list[GridCell]]) -> int:
        _, _, label, checkout, unit = job
        csv_path = args.out / f"grid-{label}.csv"
        failed = 0
        for cell in unit:
            row = run_cell(cell, checkout, label, args.work.resolve(), args.data_dir)
            with lock:
                new = not csv_path.exists()
                with open(csv_path, "a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=FIELDS)
                    if new:
                        w.writeheader()
                    w.writerow(row)
                print(f"{label} {cell.ident}: {row['status']} cpu {row['cpu_s']:.0f} s "
                      f"wall {row['wall_s']:.0f} s recall@20 {row['recall@20']}", file=sys.stderr, flush=True)
            failed += row["status"] != "ok"
            if row["status"] != "ok":
                break  # the unit's later cells need this one's cached stages
        return failed

    with ThreadPoolExecutor(args.workers) as pool:
        failed = sum(pool.map(work, jobs))
    return 1 if failed else 0


def _read(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {f"{r['config']}:{r['cell']}": r for r in csv.DictReader(f) if r["status"] == "ok"}


def compare(before_path: Path, after_path: Path, out: Path) -> int:
    """Pair the cells of two grid CSVs; write ``grid.csv`` and ``grid.md``."""
    before, after = _read(before_path), _read(after_path)
    rows, table = [], []
    for ident in sorted(set(before) | set(after)):
        b, a = before.get(ident), after.get(ident)
        cb = float(b["cpu_s"]) if b else None
        ca = float(a["cpu_s"]) if a else None
        same = None
        if a and b:
            same = json.loads(a["metrics"]) == json.loads(b["metrics"])
        rows.append({"cell": ident, "cpu_s_before": cb, "cpu_s_after": ca,
                     "ratio": round(cb / ca, 3) if cb and ca else None,
                     **{f"{m}_before": b[m] if b else "" for m in METRICS},
                     **{f"{m}_after": a[m] if a else "" for m in METRICS},
                     "metrics_identical": same})
        fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        table.append([ident, fmt(cb), fmt(ca), "-" if not (cb and ca) else f"{cb / ca:.2f}x",
                      b["recall@20"][:8] if b else "-", a["recall@20"][:8] if a else "-",
                      {True: "yes", False: "**no**", None: "-"}[same]])
    paired = [r for r in rows if r["cpu_s_before"] and r["cpu_s_after"]]
    tb = sum(r["cpu_s_before"] for r in paired)
    ta = sum(r["cpu_s_after"] for r in paired)
    missing = [r["cell"] for r in rows if r not in paired]
    shas = {p: sorted({r["git_sha"][:10] for r in _read(p).values()}) for p in (before_path, after_path)}
    md = [f"# Grid CPU time: {before_path.stem} vs {after_path.stem}", "",
          f"Code: before {', '.join(shas[before_path])}, after {', '.join(shas[after_path])}.", "",
          f"**Paired cells: {len(paired)}; CPU before {tb / 3600:.2f} h, after {ta / 3600:.2f} h"
          + (f" (before/after {tb / ta:.2f})" if ta else "") + "**; metrics identical in "
          f"{sum(bool(r['metrics_identical']) for r in paired)} of {len(paired)}.", ""]
    if missing:
        md += [f"Not yet measured on both sides ({len(missing)}): " + ", ".join(missing), ""]
    md += [md_table(["cell", "CPU s before", "CPU s after", "before/after", "recall@20 before",
                     "recall@20 after", "identical"], table)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "grid.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:6]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure one checkout's grid, cell by cell")
    r.add_argument("--run", action="append", required=True, metavar="LABEL=CHECKOUT",
                   help="a name for the measurement and the checkout of the code it measures; repeat "
                        "for several (their units share the workers, the first label's first)")
    r.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    r.add_argument("--dataset", default="yelp-lightgnn")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--first", nargs="*", default=[], metavar="METHOD",
                   help="methods whose cells start first, longest first (e.g. legcf lerg)")
    r.add_argument("--work", type=Path, required=True, help="scratch folder: cell configs, stores, caches")
    r.add_argument("--data-dir", default=default_data_dir())
    r.add_argument("--out", type=Path, default=Path("reports/performance/grid"))
    c = sub.add_parser("compare", help="pair two labels' cells")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--out", type=Path, default=Path("reports/performance/grid"))
    args = p.parse_args(argv)
    if args.command == "run":
        return run_grid(args)
    return compare(args.before, args.after, args.out)


if __name__ == "__main__":
    sys.exit(main())
