"""Training a compositional model in stages, the LEGCF way (LEGCF's Algorithm 1; LERG trains its
table the same way): the stage fit with LEGCF's sampler, the hook that clips gradients, applies the
assignment updates and keeps the last state and Adam's moments, and the error for a target no knob
setting fits.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from bench.api import MethodError, MultiNegativeSampler, TrainHook, TrainingCost
from methods.shared.composition import Assignment, CompositionalLightGCN, assignment_update

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext, Options, TrainConfig, TrainResult


class InfeasibleTargetError(MethodError):
    """No knob setting of the method fits the target's budget."""



def adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``) keyed by parameter name."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            out[f"{name}.{key}"] = torch.as_tensor(value).detach().clone()
    return out


def load_adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      moments: dict[str, torch.Tensor]) -> int:
    """Install :func:`adam_moments` into a new Adam over ``model``'s trainable parameters in order
    (the shared loop's optimiser); returns how many parameters got their state back."""
    index = {id(p): i for i, p in enumerate(optimizer.param_groups[0]["params"])}
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if id(p) in index and f"{name}.exp_avg" in moments:
            state[index[id(p)]] = {k: moments[f"{name}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    return len(state)


class LegcfHook(TrainHook):
    """Gradient clipping by value, LEGCF's assignment updates (Algorithm 1), the last state and
    Adam's moments at the end (so stage 2 can continue stage 1's optimiser, as the code does)."""

    def __init__(self, model: CompositionalLightGCN, clip: float, update_every: int = 0,
                 chunk: int = 4096, refit: bool = False,
                 resume_adam: dict[str, torch.Tensor] | None = None) -> None:
        self.model, self.clip, self.every, self.chunk = model, clip, update_every, chunk
        self.refit = refit
        self.resume_adam = resume_adam
        self.pending: Assignment | None = None
        self.updates: list[dict[str, Any]] = []
        self.last_state: dict[str, torch.Tensor] | None = None
        self.last_adam: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def epoch_start(self, epoch: int) -> None:
        # the weights are those the epoch's first minibatch sees, so this is that batch's H
        if self.every and (epoch - 1) % self.every == 0:
            t0 = time.perf_counter()
            with torch.no_grad():
                _, h_full, h_meta = self.model.forward_all()
            assert h_meta is not None
            new, clamped = assignment_update(h_full, h_meta, self.model.assignment().t, self.chunk,
                                             refit=self.refit)
            self.pending = new.to(self.model.assign_index.device)
            sums = new.value.sum(1)
            self.updates.append({"epoch": epoch, "clamped": clamped, "columns_used": new.columns_used(),
                                 "row_sum_mean": float(sums.mean()), "row_sum_min": float(sums.min()),
                                 "row_sum_max": float(sums.max()), "seconds": time.perf_counter() - t0})

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        if step == 1 and self.resume_adam:
            load_adam_moments(self.model, optimizer, self.resume_adam)
        if self.clip > 0:
            torch.nn.utils.clip_grad_value_([p for p in self.model.parameters() if p.grad is not None],
                                            self.clip)

    def step_end(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.model.clamp_step_()
        if self.pending is not None:  # installed after the first batch, whose loss used the old S
            self.model.set_assignment(self.pending)
            self.pending = None

    def state_dict(self) -> dict[str, Any]:
        """The update log; S is the model's buffers, and at an epoch's end no update is pending."""
        if self.pending is not None:
            raise RuntimeError("LegcfHook: an assignment update is pending at the end of an epoch")
        return {"updates": [dict(u) for u in self.updates]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = [dict(u) for u in state["updates"]]

    def train_end(self, epoch: int) -> None:
        self.last_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.optimizer is not None:
            self.last_adam = adam_moments(self.model, self.optimizer)


def composition_config(ctx: MethodContext, o: Options, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` a compositional stage trains with: the budget with ``overrides``, and
    with ``o.batch_triples`` (LEGCF's; 0 or absent: the budget's) as the batch size."""
    batch_triples = o.get("batch_triples")
    if batch_triples:
        overrides["batch_size"] = batch_triples
    return ctx.train_config(**overrides)


def fit_composition_stage(ctx: MethodContext, model: torch.nn.Module, config: TrainConfig, hook: TrainHook,
                          o: Options, extra_macs: float = 0.0, stage: str = "legcf-pretrain"
                          ) -> tuple[TrainingCost, TrainResult]:
    """One stage of a compositional model through the shared loop with LEGCF's sampler (``o.n_neg``
    distinct negatives per positive; with ``o.batch_triples`` triples shuffled into batches of
    ``config.batch_size``, see :func:`composition_config`); returns that stage's own cost and result.
    LEGCF's two stages and LERG's both use it."""
    sampler = MultiNegativeSampler(ctx.data.train, ctx.data.n_users, ctx.data.n_items, o.n_neg,
                                   shuffle_triples=bool(o.get("batch_triples")))
    return ctx.fit_stage(model, config, hooks=[hook], sampler=sampler, extra_macs_per_epoch=extra_macs,
                         stage=stage)
