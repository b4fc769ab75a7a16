"""This machine's floor for a LightGCN BPR step, and our step as a multiple of it.

    python -m bench.perf.floor --datasets ml-100k citeulike yelp-lightgnn gowalla --repeats 30

A BPR step of LightGCN (d = 64, L = 2 layers, batch 4096) does ``2L`` sparse products over the
whole graph (L forward, L backward) and one Adam update of every parameter. A sparse product
``Â X`` must read, for each of the graph's nnz entries, one row of ``X`` at a random place (the
entry's column): that read is the product's irreducible work, and on these graphs it is bound by
memory latency rather than arithmetic. Adam must stream every parameter, its gradient and its
two moments once. For every dataset the script times, with 1 and with 2 threads:

* **random-row read**: the graph's column indices, in the product's order, gather rows of a
  ``(U+I) x d`` table into a small cache-resident buffer (chunks of 4096 rows), so that only the
  random reads cost, not the writes; with 2 threads each thread reads half of the chunks (torch
  releases the GIL inside ``index_select``);
* **materialised gather**: the same gather written to one ``nnz x d`` buffer (allocated once),
  that is the reads plus a sequential write of every gathered row;
* **Adam stream**: one fused Adam step (:func:`bench.training.make_adam`) over the model's
  ``(U+I) x d`` parameters with a dense gradient;
* **our product** ``Â X`` (:meth:`bench.backbone.graph.NormalizedGraph.product`), and with 2 threads
  also the **row-partitioned product**: the CSR matrix split into two row blocks of equal entries,
  each multiplied on its own Python thread (one torch thread each) into its own rows of the output,
  the candidate kernel for using both cores where torch's kernel does not;
* **our BPR step** (exactly the step of :func:`bench.training.fit_bpr`).

The step's floor is ``2L x random-row read + Adam stream`` at the same thread count, and the
table reports our step as a multiple of it. Each figure is the median of ``--repeats`` runs after
two warm-up runs; the CSV also keeps the interquartile range. Run it on a quiet machine: the
script records the load average before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from bench.perf.common import bpr_step, environment_fields, md_table, script_parser, timed, write_outputs

CHUNK_ROWS = 4096  # 1 MiB of d = 64 floats: the read buffer stays in the core's L2 cache
DIM, LAYERS, BATCH = 64, 2, 4096


def _times(fn: Any, repeats: int) -> tuple[float, float]:
    """Median and interquartile range (seconds) of ``fn()`` over ``repeats`` runs after 2 warm-ups."""
    median, times = timed(fn, repeats=repeats, warmup=2)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return median, q[2] - q[0]


def random_row_read(x: torch.Tensor, cols: torch.Tensor, threads: int,
                    pool: ThreadPoolExecutor) -> Any:
    """A callable that reads the rows ``x[cols]`` (in ``cols``' order) into per-thread chunk buffers
    of :data:`CHUNK_ROWS` rows; ``threads`` (1 or 2) Python threads share the chunks."""
    chunks = list(cols.split(CHUNK_ROWS))
    bufs = [x.new_empty(CHUNK_ROWS, x.shape[1]) for _ in range(threads)]

    def read(part: list[torch.Tensor], buf: torch.Tensor) -> None:
        for c in part:
            torch.index_select(x, 0, c, out=buf[: c.numel()])

    if threads == 1:
        return lambda: read(chunks, bufs[0])
    half = len(chunks) // 2

    def read_two() -> None:
        other = pool.submit(read, chunks[half:], bufs[1])
        read(chunks[:half], bufs[0])
        other.result()

    return read_two


def row_partitioned_product(graph: Any, x: torch.Tensor, out: torch.Tensor,
                            pool: ThreadPoolExecutor) -> Any:
    """A callable computing ``Â x`` into ``out`` as two row blocks of (nearly) equal entries, the
    second on ``pool``'s thread: each block is its own CSR matrix over the same kernel, so every
    row equals :meth:`~bench.backbone.graph.NormalizedGraph.product`'s bit for bit."""
    mat = graph._mat
    crow = mat.crow_indices().long()
    nnz = int(crow[-1])
    cut = int(torch.searchsorted(crow, torch.tensor(nnz // 2)))
    blocks = []
    for lo, hi in ((0, cut), (cut, graph.n_nodes)):
        s, e = int(crow[lo]), int(crow[hi])
        block = torch.sparse_csr_tensor((crow[lo: hi + 1] - s).to(mat.col_indices().dtype),
                                        mat.col_indices()[s:e], mat.values()[s:e], (hi - lo, graph.n_nodes))
        blocks.append((block, out[lo:hi]))

    def run(block: torch.Tensor, part: torch.Tensor) -> None:
        torch.addmm(part, block, x, beta=0, out=part)

    def both() -> None:
        other = pool.submit(run, *blocks[1])
        run(*blocks[0])
        other.result()

    return both


def measure(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per thread count: the floors, our product and step, and the ratios."""
    from bench.data.loading import load_dataset
    from bench.training import TrainConfig, build_lightgcn, make_adam

    data = load_dataset(name, args.data_dir)
    config = TrainConfig(dim=DIM, n_layers=LAYERS, batch_size=BATCH, lr=1e-3, seed=0)
    torch.manual_seed(0)
    model = build_lightgcn(data, config, torch.device("cpu"))
    graph = model.graph
    n, nnz = graph.n_nodes, graph.nnz
    cols = graph.cols  # the product's order: entries sorted by (row, col)
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(0))
    gathered = x.new_empty(nnz, DIM)
    out = x.new_empty(n, DIM)
    table = torch.nn.Parameter(torch.randn(n, DIM))
    table.grad = torch.randn(n, DIM)
    adam = make_adam([table], 1e-3)
    step = bpr_step(model, data, BATCH, config.lr)

    rows = []
    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for threads in (1, 2):
            torch.set_num_threads(1)  # each Python thread reads its chunks on one core
            read = _times(random_row_read(x, cols, threads, pool), args.repeats)
            torch.set_num_threads(threads)
            mat = _times(lambda: torch.index_select(x, 0, cols, out=gathered), args.repeats)
            adam_s = _times(adam.step, args.repeats)
            product = _times(lambda: graph.product(x, out=out), args.repeats)
            step_s = _times(step, args.repeats)
            partitioned = (float("nan"), float("nan"))
            if threads == 2:
                torch.set_num_threads(1)
                run_parts = row_partitioned_product(graph, x, out, pool)
                run_parts()
                if not torch.equal(out, graph.product(x)):
                    raise AssertionError(f"{name}: the row-partitioned product differs from the product")
                partitioned = _times(run_parts, args.repeats)
                torch.set_num_threads(threads)
            floor = 2 * LAYERS * read[0] + adam_s[0]
            rows.append({
                "dataset": name, "threads": threads, "n_nodes": n, "nnz": nnz, "dim": DIM,
                "layers": LAYERS, "batch": BATCH,
                "random_read_s": read[0], "random_read_iqr_s": read[1],
                "gather_s": mat[0], "gather_iqr_s": mat[1],
                "adam_s": adam_s[0], "adam_iqr_s": adam_s[1],
                "product_s": product[0], "product_iqr_s": product[1],
                "partitioned_product_s": partitioned[0], "partitioned_product_iqr_s": partitioned[1],
                "step_s": step_s[0], "step_iqr_s": step_s[1],
                "floor_step_s": floor, "step_over_floor": step_s[0] / floor,
                "product_over_read": product[0] / read[0],
                **environment_fields(),
            })
            print(f"[{name}] {threads} thread(s): read {read[0] * 1e3:.2f} ms, product "
                  f"{product[0] * 1e3:.2f} ms, Adam {adam_s[0] * 1e3:.2f} ms, step {step_s[0] * 1e3:.1f} ms "
                  f"= {step_s[0] / floor:.2f}x floor", file=sys.stderr, flush=True)
    return rows


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str],
              load: tuple[float, float]) -> str:
    ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
    table = [[r["dataset"], f"{r['nnz']:,}", r["threads"], ms(r["random_read_s"]), ms(r["gather_s"]),
              ms(r["adam_s"]), ms(r["product_s"]),
              "" if math.isnan(r["partitioned_product_s"]) else ms(r["partitioned_product_s"]),
              f"{r['product_over_read']:.2f}x", ms(r["floor_step_s"]),
              ms(r["step_s"]), f"**{r['step_over_floor']:.2f}x**"] for r in rows]
    sha = rows[0].get("git_sha") if rows else None
    return (
        "# The floor of a BPR step on this machine\n\n"
        f"LightGCN d={DIM}, L={LAYERS}, batch {BATCH}; median of {args.repeats} runs after 2 warm-ups; "
        f"git {sha}; {os.cpu_count()} CPUs; 1-minute load average {load[0]:.2f} before and "
        f"{load[1]:.2f} after.\n"
        f"Command: `python -m bench.perf.floor {' '.join(argv)}`\n\n"
        "Floor of a step = 2L x random-row read + Adam stream, at the same thread count. "
        "Random-row read: the graph's nnz column indices gather rows of the (U+I) x d table into a "
        "cache-resident buffer (the product's irreducible reads); materialised gather: the same rows "
        "written to an nnz x d buffer; Adam stream: one fused Adam step over (U+I) x d parameters; "
        "row-partitioned product: two row blocks of equal entries on two Python threads.\n\n"
        + md_table(["dataset", "nnz", "threads", "random-row read (ms)", "materialised gather (ms)",
                    "Adam stream (ms)", "our product (ms)", "row-partitioned product (ms)",
                    "product / read", "step floor (ms)",
                    "our step (ms)", "step / floor"], table)
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__.split("\n")[0], ["ml-100k", "citeulike", "yelp-lightgnn", "gowalla"],
                      repeats=30)
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        rows += measure(name, args)
    md = _markdown(rows, args, argv, (load_before, os.getloadavg()[0]))
    write_outputs(args.out, "floor", rows, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
