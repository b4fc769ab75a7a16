"""Training loop: negative sampling, learning, determinism, early stopping, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.dataset import EmptySplitError
from bench.sampling import NegativeSampler
from bench.training import TrainingDivergedError, fit_bpr, train_lightgcn
from tests.helpers import clustered_data, random_interactions, small_config


def test_negative_sampler_never_returns_a_training_positive():
    rng = np.random.default_rng(0)
    pairs = random_interactions(rng, 50, 30, 25)  # dense: 25 of 30 items per user
    sampler = NegativeSampler(pairs, 50, 30)
    users = torch.from_numpy(np.repeat(np.arange(50), 200))
    neg = sampler.sample(users, torch.Generator().manual_seed(1))
    assert not sampler.is_positive(users, neg).any()
    pos = set(map(tuple, pairs.tolist()))
    assert all((u, i) not in pos for u, i in zip(users.tolist(), neg.tolist(), strict=True))
    # uniform over the 5 allowed items of a user
    counts = np.bincount(neg[users == 0].numpy(), minlength=30)
    allowed = sorted(set(range(30)) - {i for u, i in pos if u == 0})
    assert set(np.flatnonzero(counts)) == set(allowed)


def test_negative_sampler_rejects_users_with_every_item():
    pairs = np.array([[0, 0], [0, 1], [1, 0]])
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(pairs, 2, 2)


def test_training_learns_the_structure_and_beats_random():
    data = clustered_data()
    res = train_lightgcn(data, small_config(), progress=False)
    # random ranking of 40 items with ~1/4 of a user's held-out items ... recall@10 ~ 0.25-0.3;
    # the two communities are separable, so a trained model ranks its own half first
    assert res.test["recall@10"] > 0.45
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_numbers_on_cpu():
    data = clustered_data()
    a = train_lightgcn(data, small_config(epochs=4), progress=False)
    b = train_lightgcn(data, small_config(epochs=4), progress=False)
    c = train_lightgcn(data, small_config(epochs=4, seed=4), progress=False)
    assert a.test == b.test
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_early_stopping_restores_the_best_validation_state():
    data = clustered_data()
    cfg = small_config(epochs=40, patience=2, lr=0.2)
    res = train_lightgcn(data, cfg, progress=False)
    valid = [h["valid_recall@10"] for h in res.history]
    assert res.best_valid == max(valid)
    assert res.best_epoch == 1 + int(np.argmax(valid))
    assert res.epochs - res.best_epoch == 2 or res.epochs == cfg.epochs
    from bench.training import evaluate_split
    again = evaluate_split(res.model, data, "valid", cfg).metrics["recall@10"]
    assert again == res.best_valid


class _NaNModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def propagate(self):
        return torch.zeros(60, 2), torch.zeros(40, 2)

    def bpr_loss(self, users, pos, neg, reg, reg_form):
        return self.w.sum() * float("nan"), self.w.sum()


def test_nan_loss_raises_a_clear_error():
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1"):
        fit_bpr(_NaNModel(), clustered_data(), small_config(), progress=False)


def test_invalid_options_and_empty_validation_are_rejected():
    with pytest.raises(ValueError, match="lr=-1"):
        small_config(lr=-1).validate()
    with pytest.raises(ValueError, match="valid_metric"):
        small_config(valid_metric="recall@7").validate()
    data = clustered_data()
    data.valid = np.zeros((0, 2), dtype=np.int64)
    with pytest.raises(EmptySplitError, match="validation split is empty"):
        train_lightgcn(data, small_config(), progress=False)


def test_cosine_schedule_matches_torch_cosine_annealing_per_epoch():
    from bench.training import scheduled_lr

    cfg = small_config(lr=1e-2, lr_schedule="cosine", lr_min=1e-4, epochs=12)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    for epoch in range(1, cfg.epochs + 1):  # the DSL code steps its scheduler after each epoch
        assert scheduled_lr(cfg, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    # an explicit period shorter than the budget: the floor is held after it
    short = small_config(lr=1e-2, lr_schedule="cosine", lr_min=1e-4, lr_period=4, epochs=12)
    assert [scheduled_lr(short, e) for e in (5, 9, 12)] == [1e-4] * 3
    assert scheduled_lr(small_config(lr=0.05), 7) == 0.05


def test_fit_bpr_trains_each_epoch_at_the_scheduled_lr():
    data = clustered_data()
    res = train_lightgcn(data, small_config(epochs=5, lr_schedule="cosine", lr_min=0.01), progress=False)
    expected = [0.01 + 0.04 * (1 + np.cos(np.pi * k / 5)) / 2 for k in range(5)]
    assert [h["lr"] for h in res.history] == pytest.approx(expected, rel=1e-12)
    const = train_lightgcn(data, small_config(epochs=3), progress=False)
    assert [h["lr"] for h in const.history] == [0.05] * 3


def test_a_converged_run_stops_on_patience_well_before_its_maximum():
    data = clustered_data()
    cfg = small_config(epochs=300, patience=3, eval_every=2, lr=0.2)
    res = train_lightgcn(data, cfg, progress=False)
    assert res.epochs < cfg.epochs  # stopped by the rule, not by the maximum
    assert res.epochs - res.best_epoch == cfg.patience * cfg.eval_every
    assert res.best_epoch < res.epochs


def test_invalid_schedules_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"lr_schedule='step'.*one of \('constant', 'cosine'\)"):
        small_config(lr_schedule="step").validate()
    with pytest.raises(ValueError, match="lr_min"):
        small_config(lr_schedule="cosine", lr_min=0.5).validate()
    with pytest.raises(ValueError, match="lr_period=-1"):
        small_config(lr_period=-1).validate()
