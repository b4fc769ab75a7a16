"""Command line: ``recshrink run``, ``recshrink methods``, ``recshrink datasets``, ``recshrink train``.

Machine-readable output (``--json``) uses stable names that scripts rely on:
``datasets NAME --json`` prints ``name, n_users, n_items, n_train, n_valid, n_test`` and more;
``train ... --json`` prints the test metrics ``recall@K, ndcg@K, precision@K, hit@K, mrr@K``,
``epochs``, ``best_epoch`` and ``train_seconds_per_epoch`` (median), plus the configuration,
the dataset fingerprint, the environment and ``history`` (one row per epoch: ``epoch``, ``loss``,
``seconds``, ``lr`` and, on validation epochs, ``valid_<metric>``); ``methods --json`` prints
``name``, ``axes``, ``description``, ``knobs`` (and ``source``, ``target_mapping``) per method.

Exit status: 0 success; 1 a ``run`` with failed cells; 2 an error, reported on one line
``recshrink: error: ...`` (an invalid config, dataset or catalog file, output folder, a full
disk, ...), a usage error, or a ``run`` whose report could not be written (its cells are stored);
130 interrupted (Ctrl-C) and 143 terminated (SIGTERM), a ``run`` keeping every finished cell; 141
(128 + SIGPIPE, as a shell reports a program that a closed pipe stopped) when the reader of
stdout went away, e.g. ``recshrink methods --json | head -1``: the command stops quietly, without
a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Each subcommand imports what it needs inside its function, for import time only: `recshrink --help`,
# argument errors and the data commands should not load torch and the training stack.

# The errors reported as one line and exit status 2, by module: a module is looked up only when it is
# already imported (an error of a module never imported cannot have been raised), so catching them
# imports nothing.
_USER_ERRORS: dict[str, tuple[str, ...]] = {
    "bench.config": ("ConfigError",),
    "bench.contract": ("MethodError",),
    "bench.data.catalog": ("CatalogError",),
    "bench.data.readers": ("DataFormatError",),
    "bench.data.sources": ("ChecksumError", "DatasetUnavailableError"),
    "bench.store": ("StoreError",),
    "bench.training": ("TrainingDivergedError",),
}
# OSError covers a full disk or an unwritable folder (its message names the errno and the path)
_BUILTIN_USER_ERRORS = (OSError, ValueError, RuntimeError)
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = list(_BUILTIN_USER_ERRORS)
    for module, names in _USER_ERRORS.items():
        if module in sys.modules:
            found.extend(getattr(sys.modules[module], n) for n in names)
    return tuple(found)


def _check_out_dir(path: Path, option: str) -> None:
    """Refuse an output folder that exists as a file, or lies below a file, before any work."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == path else f"lies below {p}, which is"
                raise NotADirectoryError(f"{option} {path}: {what} an existing file, not a folder; "
                                         f"give a folder path")
            return


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="data root (default: $RECSHRINK_DATA, else ./datasets)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recshrink", description="Benchmark suite for compressing GNN recommenders."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a benchmark matrix; without CONFIG the quick matrix")
    p.add_argument("config", nargs="?", default=None,
                   help="matrix config TOML (README: 'Matrix configuration'); default: the built-in quick")
    p.add_argument("--out", default=None, help="output folder (default reports/<config name>/)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells stored as failed")
    p.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:N)")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=None,
                    help="run cells in N local worker processes (default: the config's 'workers', else 1 "
                         "in-process)")
    ex.add_argument("--dask-workers", type=int, default=None,
                    help="run cells on a Dask LocalCluster of N worker processes")
    ex.add_argument("--scheduler", default=None, help="run cells on the Dask scheduler at ADDRESS")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per cell (default: the cores not busy with other processes at the "
                        "start, split among workers; on a shared machine use 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")

    p = sub.add_parser("report", help="build the report (CSVs, HTML) from one or more result stores")
    p.add_argument("results", nargs="+", help="results.sqlite files (or folders holding one); merged")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--latex", action="store_true", help="also write the summary tables as LaTeX")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--run", action="append", dest="runs", metavar="NAME",
                   help="only the cells of this run (its config's name); repeatable")

    p = sub.add_parser("status", help="where a run's output folder stands: the run writing there, the "
                                      "stored cells, and each cell in training (stage, epoch, validation)")
    p.add_argument("out", nargs="*", default=None,
                   help="output folder(s) of `recshrink run` (default: the quick matrix's, reports/quick)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("methods", help="list the registered compression methods")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("datasets", help="list the dataset catalog, or show one dataset's statistics")
    p.add_argument("name", nargs="?", help="dataset to load and describe")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_data_dir(p)

    p = sub.add_parser("train", help="train one model and evaluate it on the test split")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--method", default="lightgcn", help="only lightgcn (use `run` for the others)")
    _add_data_dir(p)
    p.add_argument("--epochs", type=int, default=300, help="maximum epochs (default 300)")
    p.add_argument("--dim", type=int, default=64, help="embedding size (default 64)")
    p.add_argument("--layers", type=int, default=2, help="propagation layers (default 2)")
    p.add_argument("--batch-size", type=int, default=2048, help="BPR batch size (default 2048)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant, or cosine-annealed per epoch to --lr-min (default constant)")
    p.add_argument("--lr-min", type=float, default=0.0, help="cosine schedule's floor (default 0)")
    p.add_argument("--lr-period", type=int, default=0,
                   help="epochs of the cosine schedule (default 0: --epochs)")
    p.add_argument("--reg", type=float, default=1e-4, help="L2 weight on batch rows (default 1e-4)")
    p.add_argument("--reg-form", choices=("squared", "norm"), default="squared",
                   help="L2 form: LightGCN paper 'squared' or RecBole 'norm' (default squared)")
    p.add_argument("--patience", type=int, default=10,
                   help="validations without improvement before stopping (default 10)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between validations")
    p.add_argument("--ks", default="10,20,40", help="cut-offs, comma separated (default 10,20,40)")
    p.add_argument("--valid-metric", default="recall@20", help="early-stopping metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_datasets(args: argparse.Namespace) -> int:
    from bench.data.catalog import catalog, catalog_problems, data_root
    from bench.data.loading import load_dataset
    from bench.data.sources import availability

    root = data_root(args.data_dir)
    if args.name is None:
        for problem in catalog_problems(root):
            print(f"recshrink: warning: {problem} (its dataset is left out)", file=sys.stderr)
        rows = [
            {"name": s.name, "available": availability(s, root), "description": s.description,
             "defined_in": s.origin}
            for s in catalog(root).values()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"data root: {root.resolve()}")
            _print_table(rows, ["name", "available", "description"])
            if any(r["available"].startswith("missing") for r in rows):
                print("missing: not under this data root; point --data-dir (or $RECSHRINK_DATA) at the "
                      "folder that holds them, or see `recshrink datasets NAME` for what is looked for")
        return 0
    data = load_dataset(args.name, root)
    for warning in data.cold_pair_warnings():
        print(f"recshrink: warning: {warning}", file=sys.stderr)
    stats = data.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for k, v in stats.items():
            print(f"{k:32s} {v}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.data.loading import load_dataset
    from bench.environment import environment
    from bench.training import TrainConfig, config_dict, train_lightgcn

    if args.method != "lightgcn":
        raise ValueError(f"`train` trains the lightgcn backbone only, not {args.method!r}; "
                         "use `recshrink run` with a matrix config for compression methods")
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise ValueError(f"--ks must be comma-separated integers, got {args.ks!r}") from None
    config = TrainConfig(
        dim=args.dim, n_layers=args.layers, lr=args.lr, lr_schedule=args.lr_schedule,
        lr_min=args.lr_min, lr_period=args.lr_period, reg=args.reg, reg_form=args.reg_form,
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
        eval_every=args.eval_every, valid_metric=args.valid_metric, ks=ks, seed=args.seed,
        device=args.device,
    )
    config.validate()
    data = load_dataset(args.dataset, args.data_dir)
    result = train_lightgcn(data, config, progress=not args.no_progress)
    summary = result.summary()
    device = next(iter(result.model.parameters())).device
    out = {
        **summary,
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint(),
        "method": args.method,
        "seed": args.seed,
        "config": config_dict(config),
        "environment": environment(device),
        "history": result.history,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{data.name} / {args.method} / seed {args.seed}: stopped after {result.epochs} "
              f"epochs, best epoch {result.best_epoch}, "
              f"{result.train_seconds_per_epoch:.3f} s/epoch (median)")
        for k in ks:
            print(f"  test  recall@{k}={summary[f'recall@{k}']:.4f}  ndcg@{k}={summary[f'ndcg@{k}']:.4f}"
                  f"  precision@{k}={summary[f'precision@{k}']:.4f}  hit@{k}={summary[f'hit@{k}']:.4f}"
                  f"  mrr@{k}={summary[f'mrr@{k}']:.4f}")
    return 0


def _toml_value(value: Any) -> str:
    """``value`` as it is written in a TOML config (``None``: the method resolves it)."""
    return "(unset: the method resolves it)" if value is None else json.dumps(value)


def _allowed(knob: dict[str, Any]) -> str:
    """A knob's allowed values in words: its choices or its range, if it declares them."""
    if knob.get("choices"):
        return "  (one of " + ", ".join(_toml_value(c) for c in knob["choices"]) + ")"
    bounds = []
    if "min" in knob:
        bounds.append((">" if knob.get("min_exclusive") else ">=") + f" {knob['min']}")
    if "max" in knob:
        bounds.append(("<" if knob.get("max_exclusive") else "<=") + f" {knob['max']}")
    if not bounds:
        return ""
    sentinels = ", or " + ", ".join(map(str, knob["sentinels"])) if knob.get("sentinels") else ""
    return f"  ({' and '.join(bounds)}{sentinels})"


def cmd_methods(args: argparse.Namespace) -> int:
    from bench.registry import describe_methods, plugin_errors

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        axes = ", ".join(r["axes"]) or "none (reference)"
        print(f"{r['name']}: {r['description']}")
        print(f"    compresses: {axes}")
        print(f"    target: {r['target_mapping']}")
        if r["knobs"]:
            print(f"    options, set in a matrix config's [methods.{r['name']}] table (defaults shown):")
        for k in r["knobs"]:
            print(f"      {k['name']} = {_toml_value(k['default'])}{_allowed(k)}  # {k['description']}")
        print(f"    source: {r['source']}")
    for name, err in plugin_errors().items():
        print(f"plugin {name} failed to load: {err}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import build_report

    _check_out_dir(Path(args.out), "--out")
    paths = build_report(args.results, args.out, latex=args.latex, title=args.title, runs=args.runs)
    for p in paths.values():
        print(p)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.status import describe, folder_status

    found = [folder_status(out) for out in (args.out or [Path("reports") / "quick"])]
    if args.json:
        print(json.dumps([s.to_json() for s in found], indent=2))
    else:
        print("\n".join(describe(s) for s in found))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.executors import DaskExecutor, ProcessExecutor, SequentialExecutor
    from bench.runner import run_matrix

    config = load_config(args.config)
    _check_out_dir(Path(args.out) if args.out is not None else Path("reports") / config.name, "--out")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads is None and args.scheduler is None:  # a remote cluster's workers choose their own
        from bench.executors import default_threads

        args.threads, why = default_threads(max(1, args.workers or args.dask_workers or config.workers))
        print(f"recshrink: {why}", file=sys.stderr)
    if args.workers is not None:
        executor = ProcessExecutor(args.workers, args.threads)
    elif args.dask_workers is not None or args.scheduler is not None:
        executor = DaskExecutor(args.scheduler, args.dask_workers, args.threads)
    elif config.workers > 1:  # the config's default when the command line names no executor
        executor = ProcessExecutor(config.workers, args.threads)
    else:
        executor = SequentialExecutor()
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    from bench.runner import Terminated

    try:
        summary = run_matrix(config, args.out, executor, retry_failed=args.retry_failed,
                             device=args.device, progress=not args.no_progress, log=log)
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"recshrink: {how}; every finished cell is saved, run the same command to resume",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    if summary.report_error:
        print(f"recshrink: error: {summary.report_error}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"datasets": cmd_datasets, "train": cmd_train, "methods": cmd_methods, "run": cmd_run,
                "report": cmd_report, "status": cmd_status}
    try:
        try:
            status = handlers[args.command](args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return status
        except BrokenPipeError:
            raise
        except Exception as exc:
            if not isinstance(exc, _user_errors()):
                raise
            print(f"recshrink: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("recshrink: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout is gone: stop quietly; stdout goes to devnull so that the interpreter's
        # final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
