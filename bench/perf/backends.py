"""Which sparse propagation backend is fastest on our graphs.

    python -m bench.perf.backends --datasets yelp-lightgnn citeulike --threads 2 --out reports/performance
    python -m bench.perf.backends --device cuda --out reports/performance/cuda

For every dataset and every backend of :data:`bench.backbone.graph.BACKENDS` that is installed (torch
CSR, torch COO, and ``torch_sparse`` from the optional ``sparse`` extra), it times, on the full
training graph with d = 64 (``--dim``):

* one product ``Â X`` (the propagation kernel),
* one product with its backward (``Â X`` then ``Â G``, as in training),
* one whole BPR training step of LightGCN (2 layers, batch 4096, fused Adam), exactly the step of
  :func:`bench.training.fit_bpr`.

Each figure is the median of ``--repeats`` runs after a warm-up. Every backend's product is checked
against the CSR one before it is timed. The default backend (``TrainConfig.backend``) should be the
fastest; the markdown says which one won on each dataset. ``--device cuda`` times the same work on
the GPU (each run synchronised), so the default can be chosen for each device by measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

import torch

from bench.perf.common import (
    bpr_step,
    environment_fields,
    md_table,
    script_parser,
    set_threads,
    timed,
    write_outputs,
)


def available_backends() -> list[str]:
    from bench.backbone.graph import BACKENDS

    return [b for b in BACKENDS if b != "torch_sparse" or importlib.util.find_spec("torch_sparse")]


def _measure_backend(data: Any, backend: str, x: torch.Tensor, args: argparse.Namespace
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    from bench.training import TrainConfig, build_lightgcn

    config = TrainConfig(dim=args.dim, n_layers=2, batch_size=4096, lr=1e-3, backend=backend, seed=0)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_lightgcn(data, config, device)
    graph = model.graph
    x = x.to(device)
    fwd, _ = timed(lambda: graph.matmul(x), repeats=args.repeats, device=device)
    xg = x.clone().requires_grad_(True)
    both, _ = timed(lambda: graph.matmul(xg).backward(x), repeats=args.repeats, device=device)
    step = bpr_step(model, data, config.batch_size, config.lr, device)
    step_s, _ = timed(step, repeats=args.repeats, device=device)
    return graph.matmul(x).cpu(), {"n_nodes": graph.n_nodes, "nnz": graph.nnz, "spmm_seconds": fwd,
                             "spmm_fwd_bwd_seconds": both, "train_step_seconds": step_s}


def measure(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench.data.loading import load_dataset

    data = load_dataset(name, args.data_dir)
    n = data.n_users + data.n_items
    x = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(0))
    rows, reference = [], None
    for backend in available_backends():
        y, figures = _measure_backend(data, backend, x, args)
        if reference is None:
            reference = y
        else:  # every backend computes the same product
            torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-6)
        rows.append({"dataset": name, "backend": backend, "dim": args.dim, **figures,
                     **environment_fields(args.device)})
        ms = {k: v * 1e3 for k, v in figures.items() if k.endswith("seconds")}
        print(f"[{name}] {backend}: spmm {ms['spmm_seconds']:.2f} ms, "
              f"fwd+bwd {ms['spmm_fwd_bwd_seconds']:.2f} ms, step {ms['train_step_seconds']:.1f} ms",
              file=sys.stderr, flush=True)
    return rows


def _device_name(device: str) -> str:
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = script_parser(__doc__.split("\n")[0], ["yelp-lightgnn", "citeulike"], repeats=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--device", default="cpu", help="device to time on (cpu or cuda; default cpu)")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available here")
    set_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        rows += measure(name, args)
    from bench.training import TrainConfig

    default = TrainConfig().backend
    table, winners = [], []
    for name in args.datasets:
        mine = [r for r in rows if r["dataset"] == name]
        best = min(mine, key=lambda r: r["train_step_seconds"])
        winners.append(f"{name}: {best['backend']}")
        for r in mine:
            table.append([name, r["backend"] + (" (default)" if r["backend"] == default else ""),
                          f"{r['nnz']:,}", f"{r['spmm_seconds'] * 1e3:.2f}",
                          f"{r['spmm_fwd_bwd_seconds'] * 1e3:.2f}",
                          f"{r['train_step_seconds'] * 1e3:.1f}",
                          f"{r['train_step_seconds'] / best['train_step_seconds']:.2f}x"])
    missing = sorted(set(("csr", "coo", "torch_sparse")) - set(available_backends()))
    md = (
        "# Sparse propagation backends\n\n"
        f"Device {_device_name(args.device)}; "
        f"d={args.dim}, {torch.get_num_threads()} torch threads, median of {args.repeats}; "
        f"git {rows[0].get('git_sha') if rows else None}.\n"
        f"Command: `python -m bench.perf.backends {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        + md_table(["dataset", "backend", "nnz", "Â X (ms)", "Â X + backward (ms)", "BPR step (ms)",
                    "step vs fastest"], table)
        + f"\nFastest training step: {'; '.join(winners)}. Default backend: `{default}`."
        + (f" Not installed, so not measured: {', '.join(missing)}." if missing else "") + "\n"
    )
    write_outputs(args.out, "backends", rows, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
