"""Training and evaluation speed of our LightGCN against RecBole 1.2.1's, side by side: is our
training at least as fast at equal accuracy, and how close is our evaluation to its floor?

Run in the ``recbole`` tox environment (it has RecBole's pinned stack)::

    .tox/recbole/bin/python -m bench.perf.recbole_compare --datasets ml-100k yelp-lightgnn \\
        --epochs 5 --threads 2 --out reports/performance

For each dataset both libraries train on **the same split** with identical hyperparameters
(embedding 64, 2 layers, batch 4096, Adam lr 1e-3, L2 1e-5 in RecBole's norm form, Xavier-uniform
init, one uniform negative per interaction) for ``--epochs`` epochs, in this process, one after
the other, with the same torch thread count:

* ml-100k: RecBole's own split (random 80/10/10 per user) from the copy its package ships, turned
  into our dataset as in :mod:`bench.parity_recbole`;
* any catalog dataset (``yelp-lightgnn``, ``citeulike``): our split written as RecBole atomic
  files (``benchmark_filename`` train/valid/test), so RecBole trains on exactly our train pairs.

Measured, per library: the median training-epoch time (RecBole: its ``_train_epoch``, which
includes its data loader's negative sampling; ours: :func:`bench.training.fit_bpr`'s epoch,
sampling included); the validation Recall@20 after the last epoch (the check that both reach the
same accuracy); and the time of one full-ranking evaluation of all test users (RecBole:
``Trainer.evaluate`` on its full-sort loader; ours: :func:`bench.training.evaluate_split` on
``test``, propagation included in both). The floor of evaluation is the bare score GEMM of the
same shapes,
``U_test (n x d) @ I^T (d x items)``, timed once as one product and once in our evaluation's
user chunks; the smaller is the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.dataset import InteractionData
from bench.perf.common import environment_fields, md_table, script_parser, set_threads, timed, write_outputs

HYPER = {"dim": 64, "layers": 2, "batch_size": 4096, "lr": 1e-3, "reg": 1e-5}


def _recbole_config(dataset: str, data_path: Path, args: argparse.Namespace, workdir: Path,
                    extra: dict[str, Any]):
    from recbole.config import Config

    cfg = {
        "data_path": str(data_path),
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "epochs": args.epochs,
        "train_batch_size": HYPER["batch_size"],
        "learning_rate": HYPER["lr"],
        "embedding_size": HYPER["dim"],
        "n_layers": HYPER["layers"],
        "reg_weight": HYPER["reg"],
        "stopping_step": 10**6,
        "eval_step": args.epochs,  # validate once, after the last epoch
        "topk": [20],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "recall@20",
        "show_progress": False,
        "checkpoint_dir": str(workdir),
        "worker": 0,
    }
    cfg.update(extra)
    return Config(model="LightGCN", dataset=dataset, config_dict=cfg)


def _write_atomic(data: InteractionData, root: Path) -> Path:
    """Our split as RecBole atomic files ``<name>.{train,valid,test}.inter`` under ``root/<name>``."""
    folder = root / data.name
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        pairs = getattr(data, split)
        with (folder / f"{data.name}.{split}.inter").open("w") as fh:
            fh.write("user_id:token\titem_id:token\n")
            np.savetxt(fh, pairs, fmt="%d", delimiter="\t")
    return root


def run_recbole(name: str, args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], InteractionData]:
    """Train RecBole's LightGCN; return its timings and metrics and the split as our dataset."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from bench.parity_recbole import time_recbole_epochs

    if name == "ml-100k":
        from bench.parity_recbole import recbole_dataset_dir

        config = _recbole_config("ml-100k", recbole_dataset_dir(), args, workdir, {})
    else:
        from bench.data.loading import load_dataset

        ours = load_dataset(name, args.data_dir)
        root = _write_atomic(ours, workdir / "atomic")
        config = _recbole_config(name, root, args, workdir, {
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id"]},
        })
    init_seed(args.seed, True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(args.seed, True)
    model = LightGCN(config, train_data._dataset).to("cpu")
    trainer = Trainer(config, model)
    epoch_times = time_recbole_epochs(trainer)
    t0 = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=False, show_progress=False, verbose=False)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_seconds = time.perf_counter() - t0
    uid, iid = dataset.uid_field, dataset.iid_field

    def pairs(dl: Any) -> np.ndarray:
        feat = dl._dataset.inter_feat
        # RecBole's internal ids with its [PAD] id 0 dropped
        return np.stack([feat[uid].numpy() - 1, feat[iid].numpy() - 1], axis=1).astype(np.int64)

    data = InteractionData(
        name, dataset.user_num - 1, dataset.item_num - 1,
        pairs(train_data), pairs(valid_data), pairs(test_data),
        info={"split": "RecBole's (ids remapped by RecBole)", "seed": args.seed},
    )
    result = {
        "epoch_seconds": statistics.median(epoch_times),
        "epoch_seconds_all": epoch_times,
        "fit_seconds": fit_seconds,
        "valid_recall@20": float(best_valid),
        "test_recall@20": float(test["recall@20"]),
        "eval_seconds": eval_seconds,
    }
    return result, data


def run_ours(data: InteractionData, args: argparse.Namespace) -> dict[str, Any]:
    """Train our LightGCN with the same hyperparameters; time an epoch, the evaluation and the GEMM floor."""
    from bench.evaluation import chunk_size_for, evaluate_embeddings, excluded_splits
    from bench.training import TrainConfig, evaluate_split, train_lightgcn

    config = TrainConfig(
        dim=HYPER["dim"], n_layers=HYPER["layers"], lr=HYPER["lr"], reg=HYPER["reg"], reg_form="norm",
        batch_size=HYPER["batch_size"], epochs=args.epochs, patience=10**6, eval_every=args.epochs,
        valid_metric="recall@20", ks=(20,), init="xavier_uniform", seed=args.seed, device="cpu",
    )
    t0 = time.perf_counter()
    res = train_lightgcn(data, config, progress=False)
    fit_seconds = time.perf_counter() - t0
    model = res.model
    eval_seconds, eval_all = timed(lambda: evaluate_split(model, data, "test", config),
                                   repeats=args.repeats, warmup=1)
    # the floor: the bare score GEMM of the same shapes
    with torch.no_grad():
        users, items = model.propagate()
    test_users = torch.from_numpy(np.flatnonzero(np.diff(data.matrix("test").indptr) > 0))
    u = users[test_users].contiguous()
    item_t = items.t().contiguous()
    full_out = torch.empty(len(u), item_t.shape[1])
    gemm_one, _ = timed(lambda: torch.mm(u, item_t, out=full_out), repeats=args.repeats)
    full_out = torch.empty(0)
    step = chunk_size_for(data.n_items, config.eval_memory_bytes)
    buf = torch.empty(min(step, len(u)), item_t.shape[1])

    def chunked() -> None:
        for s in range(0, len(u), step):
            part = u[s : s + step]
            torch.mm(part, item_t, out=buf[: len(part)])

    gemm_chunked, _ = timed(chunked, repeats=args.repeats)
    # the ranking alone (scores, masking, top-K, metrics) on the propagated embeddings
    exclude = [data.matrix(s) for s in excluded_splits("test")]
    test = data.matrix("test")
    rank_seconds, _ = timed(lambda: evaluate_embeddings(users, items, test, exclude, ks=config.ks,
                                                        memory_bytes=config.eval_memory_bytes),
                            repeats=args.repeats)
    return {
        "epoch_seconds": res.train_seconds_per_epoch,
        "epoch_seconds_all": res.epoch_seconds,
        "fit_seconds": fit_seconds,
        "valid_recall@20": res.history[-1]["valid_recall@20"],
        "test_recall@20": res.test["recall@20"],
        "eval_seconds": eval_seconds,
        "eval_seconds_all": eval_all,
        "gemm_seconds_one": gemm_one,
        "gemm_seconds_chunked": gemm_chunked,
        "gemm_floor_seconds": min(gemm_one, gemm_chunked),
        "rank_seconds": rank_seconds,
        "n_test_users": len(u),
        "eval_chunk_users": step,
    }


def main(argv: list[str] | None = None) -> int:
    p = script_parser(__doc__.split("\n")[0], ["ml-100k", "yelp-lightgnn"], repeats=3,
                      repeats_help="timed repeats of each evaluation")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import recbole  # noqa: F401
    except ImportError:
        sys.exit("recbole is not installed: run this script in the `recbole` tox environment")
    set_threads(args.threads)
    rows: list[dict[str, Any]] = []
    table = []
    for name in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"[{name}] RecBole ...", file=sys.stderr, flush=True)
            rb, data = run_recbole(name, args, Path(tmp))
        print(f"[{name}] recshrink ...", file=sys.stderr, flush=True)
        ours = run_ours(data, args)
        env = environment_fields()
        for lib, r in (("recbole", rb), ("recshrink", ours)):
            rows.append({"dataset": name, "library": lib, "epochs": args.epochs, "seed": args.seed,
                         **HYPER, "n_users": data.n_users, "n_items": data.n_items,
                         "n_train": len(data.train), **r, **env})
        train_ratio = rb["epoch_seconds"] / ours["epoch_seconds"]
        eval_ratio = rb["eval_seconds"] / ours["eval_seconds"]
        floor_ratio = ours["rank_seconds"] / ours["gemm_floor_seconds"]
        table.append([
            name, f"{rb['epoch_seconds']:.3f}", f"{ours['epoch_seconds']:.3f}", f"**{train_ratio:.1f}x**",
            f"{rb['valid_recall@20']:.4f}", f"{ours['valid_recall@20']:.4f}",
            f"{rb['eval_seconds']:.3f}", f"{ours['eval_seconds']:.3f}", f"**{eval_ratio:.1f}x**",
            f"{ours['rank_seconds']:.3f}", f"{ours['gemm_floor_seconds']:.3f}", f"**{floor_ratio:.2f}x**",
        ])
        print(f"[{name}] train {train_ratio:.1f}x, eval {eval_ratio:.1f}x, eval/GEMM {floor_ratio:.2f}",
              file=sys.stderr, flush=True)
        md = (
            f"# recshrink vs RecBole 1.2.1: LightGCN training and evaluation speed\n\n"
            f"Same split and hyperparameters (d={HYPER['dim']}, {HYPER['layers']} layers, batch "
            f"{HYPER['batch_size']}, lr {HYPER['lr']}, L2 {HYPER['reg']} norm form), {args.epochs} epochs, "
            f"seed {args.seed}, {torch.get_num_threads()} torch threads, CPU; git {env.get('git_sha')}.\n"
            f"Command: `python -m bench.perf.recbole_compare {' '.join(argv or sys.argv[1:])}`\n\n"
            + md_table(["dataset", "RecBole s/epoch", "ours s/epoch", "train speed-up",
                        f"RecBole valid R@20 (ep {args.epochs})", f"ours valid R@20 (ep {args.epochs})",
                        "RecBole eval s", "ours eval s", "eval speed-up", "ours ranking s", "GEMM floor s",
                        "ranking / GEMM"], table)
            + "\nEpoch time: median over the epochs, negative sampling included. Eval: one full-ranking "
            "evaluation of all test users, propagation included (both libraries). Ranking: the same "
            "evaluation on already propagated embeddings (scores, masking, top-K, metrics). GEMM floor: the "
            "bare score product U_test @ I^T of the same shapes (the faster of one product and our user "
            "chunks).\n"
        )
        write_outputs(args.out, "recbole", rows, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
