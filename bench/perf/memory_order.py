"""Does a cell's memory figure depend on the cells that ran before it in the same process?

    .tox/recbole/bin/python -m bench.perf.memory_order --threads 1 --out reports/performance

Runs a matrix's cells (default: the built-in ``quick`` one, ml-100k from RecBole's package, hence
the ``recbole`` environment) one after another in this one process, twice: in the planned order,
then in the reverse order, each time with fresh base checkpoints so every cell trains. For each
cell it compares what the propagation and scoring phases needed (``mem_*_bytes``: on CPU the peak of
tensor memory allocated over the phase, :mod:`bench.measure.memory`) between the two orders,
and also the absolute peaks, which do depend on what the process already holds. Writes
``memory_order.csv`` and ``memory_order.md``; exits 1 when a cell's figure differs between the
orders by more than ``--tolerance-mib``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.perf.common import DEFAULT_OUT, environment_fields, md_table, set_threads, write_outputs

MiB = 2**20
PHASES = ("propagation", "scoring")


def run_in_order(specs: list[Any]) -> dict[str, dict[str, Any]]:
    """Each cell's measurements by its label, running ``specs`` in the given order in this process."""
    from bench.cell import run_cell

    out = {}
    for spec in specs:
        result = run_cell(spec)
        if result.status != "ok":
            raise RuntimeError(f"{spec.label()} failed: {result.error}")
        out[spec.label()] = {**result.measurements,
                             **{k: v for k, v in result.info.items() if k.startswith("mem_")}}
        print(f"{spec.label()}: " + ", ".join(
            f"{p} {result.measurements[f'mem_{p}_bytes'] / MiB:.1f} MiB" for p in PHASES), file=sys.stderr)
    return out


def _methods(results: list[dict[str, dict[str, Any]]]) -> str:
    """The measuring methods the phases' needs used, as recorded by the cells."""
    found = sorted({str(m.get(f"mem_{p}_method")) for r in results for m in r.values() for p in PHASES})
    return ", ".join(found)


def compare(specs: list[Any], first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]],
            tolerance_mib: float) -> tuple[list[dict[str, Any]], float]:
    """One row per cell with both orders' figures; the largest difference of a phase's need, MiB."""
    rows, worst = [], 0.0
    for spec in specs:
        a, b = first[spec.label()], second[spec.label()]
        row: dict[str, Any] = {"cell": spec.label()}
        for p in PHASES:
            need_a, need_b = a[f"mem_{p}_bytes"] / MiB, b[f"mem_{p}_bytes"] / MiB
            row.update({f"{p}_mib_planned": need_a, f"{p}_mib_reversed": need_b,
                        f"{p}_diff_mib": need_b - need_a,
                        f"{p}_peak_mib_planned": a[f"peak_mem_{p}_bytes"] / MiB,
                        f"{p}_peak_mib_reversed": b[f"peak_mem_{p}_bytes"] / MiB})
            worst = max(worst, abs(need_b - need_a))
        row["within_tolerance"] = all(abs(row[f"{p}_diff_mib"]) <= tolerance_mib for p in PHASES)
        rows.append(row)
    return rows, worst


def main(argv: list[str] | None = None) -> int:
    from bench.config import load_config
    from bench.runner import plan

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default=None, help="matrix config (default: the built-in quick)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance-mib", type=float, default=0.0,
                   help="largest accepted difference of a phase's need between the orders (MiB)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    set_threads(args.threads)
    config = load_config(args.config)
    results = []
    for order in ("planned", "reversed"):
        with tempfile.TemporaryDirectory() as tmp:  # fresh base checkpoints: every cell trains
            planned = plan(config, checkpoint_dir=Path(tmp))
            specs = [dataclasses.replace(s, threads=args.threads) for s in planned]
            results.append(run_in_order(specs if order == "planned" else specs[::-1]))
    rows, worst = compare(specs, results[0], results[1], args.tolerance_mib)
    env = environment_fields()
    table = [[r["cell"], *(f"{r[f'{ph}_mib_{o}']:.1f}" for ph in PHASES for o in ("planned", "reversed")),
              *(f"{r[f'{ph}_diff_mib']:+.1f}" for ph in PHASES),
              *(f"{r[f'scoring_peak_mib_{o}']:.0f}" for o in ("planned", "reversed"))] for r in rows]
    md = (
        "# Memory per cell against the order of cells\n\n"
        f"Matrix `{config.name}`, every cell run twice in one process (planned order, then reversed), "
        f"{env['torch_threads']} torch thread(s), git {env.get('git_sha')}. Figures: what the phase needed "
        f"(`mem_<phase>_bytes`, by {_methods(results)}), MiB; the last two columns are the absolute "
        f"scoring peaks for contrast. Largest difference {worst:.2f} MiB "
        f"(tolerance {args.tolerance_mib} MiB).\n\n"
        + md_table(["cell", "propagation planned", "propagation reversed", "scoring planned",
                    "scoring reversed", "propagation diff", "scoring diff", "scoring peak planned",
                    "scoring peak reversed"], table)
    )
    write_outputs(args.out, "memory_order", [{**r, **env} for r in rows], md)
    print(md)
    return 0 if all(r["within_tolerance"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
