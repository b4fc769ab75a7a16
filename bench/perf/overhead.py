"""Harness overhead in the quick matrix: measurement and storage as a share of cell time.

    .tox/recbole/bin/python -m bench.perf.overhead --threads 2 --out reports/performance

Runs a matrix (default: the built-in ``quick`` one, every method on ml-100k, which needs RecBole's
packaged copy of ml-100k, hence the ``recbole`` environment) into a fresh temporary store and base
checkpoint folder, so that every cell really trains. The runner already times each cell's phases
(``load``, ``base``, ``compress``, ``evaluate``, ``measure``, ``total``) and the store's writes; the
overhead is ``(measure + store) / total`` summed over cells (:attr:`bench.runner.RunSummary.overhead_share`),
where ``measure`` covers FLOP counting, sizes, memory and latency measurement. Writes
``overhead.csv`` (one row per cell with its phase times) and ``overhead.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.perf.common import DEFAULT_OUT, environment_fields, md_table, set_threads, write_outputs


def main(argv: list[str] | None = None) -> int:
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default=None, help="matrix config (default: the built-in quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    set_threads(args.threads)
    config = load_config(args.config)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_matrix(config, Path(tmp) / "run", progress=False, checkpoint_dir=Path(tmp) / "ckpt",
                             log=lambda m: print(m, file=sys.stderr, flush=True), report=False)
        store = ResultStore(Path(tmp) / "run" / "results.sqlite")
        for r in store.cells():
            phases = {f"{k}_seconds": v for k, v in (r.get("timings") or {}).items()}
            label = f"{r['dataset']}/{r['method']}[emb={r['emb_target']}]/seed{r['seed']}"
            rows.append({"cell": label, "status": r["status"], **phases})
        store.close()
    env = environment_fields()
    share = summary.overhead_share
    rows = [{**row, **env} for row in rows]
    rows.append({"cell": "TOTAL", "total_seconds": summary.cell_seconds,
                 "measure_seconds": summary.measure_seconds, "store_seconds": summary.store_seconds,
                 "overhead_share": share, **env})
    worst = max((r for r in rows[:-1] if r.get("total_seconds")),
                key=lambda r: r.get("measure_seconds", 0.0) / r["total_seconds"], default=None)
    table = [[config.name, summary.ran, f"{summary.cell_seconds:.1f}", f"{summary.measure_seconds:.1f}",
              f"{summary.store_seconds:.2f}", f"**{100 * share:.2f}%**"]]
    md = (
        "# Harness overhead\n\n"
        f"Matrix `{config.name}` in a fresh store (every cell trains), {env['torch_threads']} torch threads, "
        f"git {env.get('git_sha')}.\nCommand: `python -m bench.perf.overhead "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        + md_table(["matrix", "cells", "cell time (s)", "measurement (s)", "storage (s)",
                    "overhead share"], table)
        + (f"\nLargest single-cell measurement share: {worst['cell']} "
           f"({100 * worst.get('measure_seconds', 0.0) / worst['total_seconds']:.1f}% of its "
           f"{worst['total_seconds']:.1f} s).\n" if worst else "")
    )
    write_outputs(args.out, "overhead", rows, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
