"""Parity of our LightGCN with RecBole 1.2.1's LightGCN on ml-100k: our test metrics
should match RecBole's on the same split and hyperparameters.

Run in the ``recbole`` environment (``tox -e recbole`` installs it)::

    python -m bench.parity_recbole --seeds 0 1 2 --out reports/parity

For each seed, RecBole builds ml-100k with its own defaults (random 80/10/10 per-user split,
the ``[PAD]`` id 0 removed from the ranking) and trains its LightGCN; then our LightGCN trains on
*exactly RecBole's split* with the same hyperparameters: embedding 64, 2 layers, batch 2048,
Adam lr 1e-3, L2 1e-5 in RecBole's form (``reg_form="norm"``), Xavier-uniform init, validation
Recall@20 every epoch, early stopping after 10 validations without improvement, at most
``--epochs`` epochs. With ``--patience`` >= ``--epochs`` both train the full budget and restore
the best validation epoch, which removes the noise of where a patience rule happens to stop a
slowly rising curve (the per-epoch validation curves of both are stored). Both report test
metrics masking training and validation items.
The script writes ``parity.json`` (per seed) and ``parity.md`` (means and relative gaps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.dataset import InteractionData
from bench.environment import environment
from bench.training import TrainConfig, train_lightgcn

KEYS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")


def recbole_dataset_dir() -> Path:
    from bench.data.sources import recbole_file

    path = recbole_file("recbole/dataset_example/ml-100k/ml-100k.inter")
    if path is None:
        sys.exit("recbole is not installed: run this script in the `recbole` tox environment")
    return path.parent.parent


def time_recbole_epochs(trainer: Any) -> list[float]:
    """Wrap a RecBole ``Trainer``'s ``_train_epoch`` (its data loader's negative sampling included)
    so that every epoch's wall time is appended to the returned list."""
    epoch_times: list[float] = []
    inner = trainer._train_epoch

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        epoch_times.append(time.perf_counter() - t0)
        return out

    trainer._train_epoch = timed
    return epoch_times


def run_recbole(seed: int, args: argparse.Namespace, workdir: Path) -> tuple[dict, InteractionData]:
    """Train RecBole's LightGCN; return its test metrics and its split as our dataset."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(
        model="LightGCN",
        dataset="ml-100k",
        config_dict={
            "data_path": str(recbole_dataset_dir()),
            "seed": seed,
            "reproducibility": True,
            "use_gpu": False,
            "device": "cpu",
            "epochs": args.epochs,
            "train_batch_size": args.batch_size,
            "learning_rate": args.lr,
            "embedding_size": args.dim,
            "n_layers": args.layers,
            "reg_weight": args.reg,
            "stopping_step": args.patience,
            "eval_step": 1,
            "topk": [10, 20],
            "metrics": ["Recall", "NDCG", "Precision", "Hit", "MRR"],
            "valid_metric": "recall@20",
            "show_progress": False,
            "metric_decimal_place": 8,
            "checkpoint_dir": str(workdir),
            "worker": 0,
        },
    )
    init_seed(seed, True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(seed, True)
    model = LightGCN(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    epoch_times = time_recbole_epochs(trainer)
    curve: list[float] = []
    inner_valid = trainer._valid_epoch

    def recorded(*a: Any, **kw: Any) -> Any:
        score, result = inner_valid(*a, **kw)
        curve.append(float(result["recall@20"]))
        return score, result

    trainer._valid_epoch = recorded  # type: ignore[method-assign]
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)  # score, dict
    # RecBole 1.2.1 calls torch.load without weights_only=False, which torch >= 2.6 refuses for
    # its checkpoints; load the best checkpoint here and evaluate the restored model.
    state = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    uid, iid = dataset.uid_field, dataset.iid_field

    def pairs(dl: Any) -> np.ndarray:
        feat = dl._dataset.inter_feat
        # drop RecBole's [PAD] id 0 so that both models rank the same items
        return np.stack([feat[uid].numpy() - 1, feat[iid].numpy() - 1], axis=1).astype(np.int64)

    data = InteractionData(
        "ml-100k (RecBole split)", dataset.user_num - 1, dataset.item_num - 1,
        pairs(train_data), pairs(valid_data), pairs(test_data),
        info={"split": "RecBole RS 0.8/0.1/0.1, RO, group_by user", "seed": seed},
    )
    result = {k.lower(): float(v) for k, v in test.items()}
    result["valid_recall@20"] = float(best_valid)
    result["epochs"] = len(epoch_times)
    result["best_epoch"] = len(epoch_times) - trainer.cur_step
    result["valid_curve"] = curve
    result["train_seconds_per_epoch"] = statistics.median(epoch_times)
    return result, data


def run_ours(seed: int, data: InteractionData, args: argparse.Namespace) -> dict:
    config = TrainConfig(
        dim=args.dim, n_layers=args.layers, lr=args.lr, reg=args.reg, reg_form="norm",
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, eval_every=1,
        valid_metric="recall@20", ks=(10, 20), init="xavier_uniform", seed=seed, device="cpu",
    )
    res = train_lightgcn(data, config, progress=False)
    out = dict(res.test)
    out.update(valid_recall_20=res.best_valid, epochs=res.epochs, best_epoch=res.best_epoch,
               train_seconds_per_epoch=res.train_seconds_per_epoch)
    out["valid_recall@20"] = out.pop("valid_recall_20")
    out["valid_curve"] = [h["valid_recall@20"] for h in res.history]
    return out


def _sd(x: list[float]) -> float:
    return statistics.stdev(x) if len(x) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--reg", type=float, default=1e-5)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--out", default="reports/parity")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rb, data = run_recbole(seed, args, Path(tmp))
        ours = run_ours(seed, data, args)
        rows.append({"seed": seed, "recbole": rb, "recshrink": ours, "data": data.stats()})
        print(json.dumps({"seed": seed, "recbole": {k: rb[k] for k in KEYS},
                          "recshrink": {k: ours[k] for k in KEYS}}), flush=True)
        (out / "parity.json").write_text(json.dumps(
            {"args": vars(args), "runs": rows, "environment": environment()}, indent=2))
    lines = ["| metric | RecBole (mean ± sd) | recshrink (mean ± sd) | relative gap |",
             "|---|---|---|---|"]
    for k in (*KEYS, "train_seconds_per_epoch", "epochs"):
        a = [r["recbole"][k] for r in rows]
        b = [r["recshrink"][k] for r in rows]
        gap = (statistics.mean(b) - statistics.mean(a)) / statistics.mean(a)
        lines.append(f"| {k} | {statistics.mean(a):.4f} ± {_sd(a):.4f} | "
                     f"{statistics.mean(b):.4f} ± {_sd(b):.4f} | {gap:+.2%} |")
    table = "\n".join(lines)
    (out / "parity.md").write_text(
        f"# LightGCN parity on ml-100k, seeds {args.seeds}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
