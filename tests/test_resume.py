"""Epoch checkpoints: a run killed after any epoch resumes and ends exactly as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.device import seed_everything
from bench.resume import EpochCheckpoint
from bench.training import TrainHook, build_lightgcn, fit_bpr
from tests.helpers import clustered_data, small_config


class Killed(Exception):
    """Stands for the process being killed after an epoch."""


class CountingHook(TrainHook):
    """A hook with state across epochs and its own generator, as DSL's and UnKD's have."""

    def __init__(self) -> None:
        self.steps = 0
        self.gen = np.random.default_rng(5)
        self.draws: list[float] = []

    def epoch_start(self, epoch: int) -> None:
        self.draws.append(float(self.gen.random()))
        torch.rand(3)  # draws from the global generator too

    def step_end(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps, "gen": self.gen.bit_generator.state, "draws": list(self.draws)}

    def load_state_dict(self, state) -> None:
        self.steps, self.draws = state["steps"], list(state["draws"])
        self.gen.bit_generator.state = state["gen"]


class OpaqueHook(TrainHook):
    """A hook that does not say what its state is."""


def _train(data, config, checkpoint=None, kill_after=None, hooks=None):
    seed_everything(config.seed)
    model = build_lightgcn(data, config, torch.device("cpu"))
    hooks = [CountingHook()] if hooks is None else hooks

    def on_epoch(row):
        if kill_after is not None and row["epoch"] == kill_after:
            raise Killed

    return fit_bpr(model, data, config, progress=False, hooks=hooks, on_epoch=on_epoch,
                   resume=checkpoint), hooks


def _same(a, b) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.test == b.test and a.valid == b.valid
    assert (a.best_epoch, a.epochs) == (b.best_epoch, b.epochs)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


@pytest.mark.parametrize("kill_after", [1, 3, 5])
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path, kill_after):
    data = clustered_data()
    config = small_config(epochs=6, eval_every=2, patience=5, seed=3)
    whole, whole_hooks = _train(data, config)
    lines: list[str] = []
    ckpt = EpochCheckpoint(tmp_path, "fit", every_seconds=0, log=lines.append)
    with pytest.raises(Killed):
        _train(data, config, ckpt, kill_after=kill_after)
    assert ckpt.path.is_file() and not lines
    again = EpochCheckpoint(tmp_path, "fit", every_seconds=0, log=lines.append)
    resumed, hooks = _train(data, config, again)
    assert again.path == ckpt.path
    assert lines == [f"resuming training from epoch {kill_after} ({ckpt.path.name})"]
    assert resumed.resumed_from_epoch == kill_after and resumed.resumed_seconds > 0
    _same(resumed, whole)
    assert hooks[0].steps == whole_hooks[0].steps and hooks[0].draws == whole_hooks[0].draws
    assert len(resumed.epoch_seconds) == len(whole.epoch_seconds)


def test_a_finished_run_is_not_trained_again(tmp_path):
    data = clustered_data()
    config = small_config(epochs=4, seed=1)
    first, _ = _train(data, config, EpochCheckpoint(tmp_path, "fit", every_seconds=3600))
    ckpt = EpochCheckpoint(tmp_path, "fit", every_seconds=3600)
    second, _ = _train(data, config, ckpt)
    assert ckpt.saves == 0 and second.resumed_from_epoch == first.epochs
    _same(first, second)


def test_early_stopping_state_survives_a_resume(tmp_path):
    data = clustered_data()
    config = small_config(epochs=40, patience=2, lr=0.2, seed=0)
    whole, _ = _train(data, config)
    assert whole.epochs < config.epochs  # stopped on patience
    with pytest.raises(Killed):
        _train(data, config, EpochCheckpoint(tmp_path, "fit", every_seconds=0), kill_after=whole.epochs - 1)
    resumed, _ = _train(data, config, EpochCheckpoint(tmp_path, "fit", every_seconds=0))
    _same(resumed, whole)


def test_another_run_does_not_use_the_checkpoint(tmp_path):
    data = clustered_data()
    config = small_config(epochs=4, seed=1)
    with pytest.raises(Killed):
        _train(data, config, EpochCheckpoint(tmp_path, "fit", every_seconds=0), kill_after=2)
    other = EpochCheckpoint(tmp_path, "fit", every_seconds=0)
    res, _ = _train(data, small_config(epochs=4, seed=1, lr=0.01), other)  # another lr: another run
    assert res.resumed_from_epoch == 0 and len(list(tmp_path.glob("fit-*.pt"))) == 2


def test_a_damaged_checkpoint_is_ignored_and_said(tmp_path):
    data = clustered_data()
    config = small_config(epochs=4, seed=2)
    whole, _ = _train(data, config)
    ckpt = EpochCheckpoint(tmp_path, "fit", every_seconds=0)
    with pytest.raises(Killed):
        _train(data, config, ckpt, kill_after=2)
    blob = torch.load(ckpt.path, weights_only=True)
    body = bytearray(blob["payload"])
    body[len(body) // 2] ^= 0xFF
    torch.save({**blob, "payload": bytes(body)}, ckpt.path)
    lines: list[str] = []
    res, _ = _train(data, config, EpochCheckpoint(tmp_path, "fit", every_seconds=0, log=lines.append))
    assert res.resumed_from_epoch == 0
    assert len(lines) == 1 and "its sha256 does not match its content" in lines[0]
    _same(res, whole)


def test_a_hook_without_state_turns_checkpointing_off_and_says_so(tmp_path):
    data = clustered_data()
    lines: list[str] = []
    ckpt = EpochCheckpoint(tmp_path, "fit", every_seconds=0, log=lines.append)
    res, _ = _train(data, small_config(epochs=2), ckpt, hooks=[OpaqueHook()])
    assert res.resumed_from_epoch == 0 and ckpt.saves == 0 and not list(tmp_path.iterdir())
    assert lines == ["training is not checkpointed for resumption: hook(s) OpaqueHook cannot save their "
                     "state"]


def test_bad_interval_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="every_seconds must be >= 0, got -1"):
        EpochCheckpoint(tmp_path, "fit", every_seconds=-1)


# --- a whole cell ------------------------------------------------------------------------------


def _cell_spec(root, method: str, checkpoint_dir, **target):
    from bench.cell import CellSpec
    from bench.data.loading import load_dataset

    data = load_dataset("tiny", str(root))
    budget = {"epochs": 8, "dim": 8, "batch_size": 64, "lr": 0.05, "ks": [5, 10],
              "valid_metric": "recall@10", "eval_every": 2, "patience": 3}
    return CellSpec(dataset="tiny", method=method, seed=1, budget=budget, data_dir=str(root),
                    checkpoint_dir=str(checkpoint_dir), dataset_checksum=data.fingerprint(),
                    measure={"latency_warmup": 0, "latency_repeats": 1, "latency_batches": [1],
                             "flops": False}, **target)


def _epochs_counted(monkeypatch, kill_at: int | None = None) -> list[int]:
    """Count every training epoch of every run from now on; raise KeyboardInterrupt (standing for a
    kill: the cell neither stores a result nor cleans up) when epoch number ``kill_at`` ends."""
    from bench import training

    seen: list[int] = []
    real = training._EpochLoop.run

    def run(self, epoch, gen):
        row = real(self, epoch, gen)
        seen.append(epoch)
        if kill_at is not None and len(seen) == kill_at:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(training._EpochLoop, "run", run)
    return seen


CELLS = {"lightgcn": {}, "random-drop": {"emb_target": 0.5}, "magnitude": {"emb_target": 0.5},
         "unkd": {"emb_target": 0.5}, "dsl": {"emb_target": 0.5}, "legcf": {"emb_target": 0.5},
         "lerg": {"emb_target": 0.5}, "lightgnn": {"emb_target": 0.8, "edge_target": 0.8}}


@pytest.mark.parametrize("method", sorted(CELLS))
def test_a_cell_killed_mid_training_resumes_and_ends_with_the_same_metrics(tiny_root, tmp_path, method,
                                                                            monkeypatch):
    """Killed in the middle of the cell's training epochs (not in a run's first epoch, so that run has
    a checkpoint), the rerun resumes and stores exactly the uninterrupted cell's metrics."""
    from bench.cell import resume_dir, run_cell

    monkeypatch.setenv("RECSHRINK_CHECKPOINT_EVERY", "0")
    whole_spec = _cell_spec(tiny_root, method, tmp_path / "whole", **CELLS[method])
    with monkeypatch.context() as m:
        epochs = _epochs_counted(m)
        whole = run_cell(whole_spec)
    assert whole.status == "ok", whole.error
    total = len(epochs)
    kill_at = next(i + 1 for i in range(total // 2, total) if epochs[i] >= 2)
    spec = _cell_spec(tiny_root, method, tmp_path / "killed", **CELLS[method])
    with monkeypatch.context() as m:
        _epochs_counted(m, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            run_cell(spec)
    assert list((tmp_path / "killed" / "resume").rglob("*.pt"))
    with monkeypatch.context() as m:
        rest = _epochs_counted(m)
        again = run_cell(spec)
    assert again.status == "ok", again.error
    # it did not start over: the epochs before the one killed (saved at their end) are not rerun
    assert len(rest) <= total - (kill_at - 1)
    assert any(line.startswith("resuming training from epoch") for line in again.info["log"])
    assert again.metrics == whole.metrics
    assert not resume_dir(spec).exists()


def test_a_full_disk_while_saving_a_checkpoint_does_not_stop_training(tmp_path, monkeypatch):
    from bench import files

    data = clustered_data()
    config = small_config(epochs=3, seed=1)
    whole, _ = _train(data, config)

    def full(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bench.resume.write_atomically", full)
    lines: list[str] = []
    ckpt = EpochCheckpoint(tmp_path / "resume", "fit", every_seconds=0, log=lines.append)
    res, _ = _train(data, config, ckpt)
    _same(res, whole)
    assert ckpt.saves == 0 and not (tmp_path / "resume").exists()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "goes on without" in lines[0]
    assert files.write_atomically is not full
