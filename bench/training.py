"""The BPR training loop with validation early stopping, shared by every method.

Protocol (LightGCN paper, §4.1 and Eq. 15): each epoch draws one uniform negative (never a
training positive of the user) for every training interaction, shuffles the triples and
takes Adam steps on mini-batches of BPR loss plus the L2 penalty of the batch's layer-0 rows.
Every ``eval_every`` epochs the model is evaluated on the validation split by full ranking;
the state with the best ``valid_metric`` is kept and restored at the end, and training stops
after ``patience`` validations without improvement: ``epochs`` is a maximum, and a run whose
best validation is at that maximum was still improving (a lower bound, not a converged result).
Test metrics are computed once, on the restored state, masking training and validation items.

The learning rate is constant (``lr_schedule = "constant"``) or cosine-annealed per epoch
(``"cosine"``, SGDR without restarts as ``torch.optim.lr_scheduler.CosineAnnealingLR`` steps it
once per epoch): epoch ``e`` (from 1) trains at
``lr_min + (lr - lr_min) (1 + cos(pi min(e - 1, T) / T)) / 2`` with ``T = lr_period`` (0: the
budget's ``epochs``), and at ``lr_min`` after ``T`` epochs.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from bench import live
from bench.backbone.graph import BACKENDS, normalized_adjacency
from bench.backbone.lightgcn import INITS, REG_FORMS, LightGCN
from bench.data.dataset import EmptySplitError, InteractionData
from bench.device import resolve_device, seed_everything
from bench.evaluation import (
    DEFAULT_EVAL_MEMORY_BYTES,
    DEFAULT_KS,
    EvalResult,
    evaluate_embeddings,
    excluded_splits,
)
from bench.measure.latency import machine_load
from bench.metrics import METRIC_NAMES
from bench.resume import (
    EpochCheckpoint,
    generator_states,
    generators_digest,
    random_states,
    run_identity,
    set_generator_states,
    set_random_states,
)
from bench.sampling import EpochSampler, InteractionSampler


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class BPRModel(Protocol):
    """What the loop needs from a model."""

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def bpr_loss(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float, reg_form: str
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def parameters(self): ...

    def state_dict(self): ...

    def load_state_dict(self, state): ...


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (counted from 1) under ``config``'s schedule (module docstring)."""
    if config.lr_schedule == "constant":
        return config.lr
    period = config.lr_period or config.epochs
    k = min(epoch - 1, period)
    return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * k / period)) / 2


class TrainHook:
    """Method-specific steps inside :func:`fit_bpr` (no-ops by default).

    ``epoch_start(epoch)`` runs before an epoch's negatives are drawn (e.g. UnKD redraws its
    distillation pairs); ``before_step(step, optimizer)`` between the backward pass and the
    optimiser step (``step`` is the step about to be taken; e.g. LEGCF's gradient clipping);
    ``step_end(step, optimizer)`` runs right after each optimiser step, with the step's gradients
    still on the parameters (``step`` counts completed steps from 1; e.g. re-zeroing masked entries,
    DSL's prune-and-grow); ``train_end(epoch)`` after the last epoch, before the best state is
    restored.
    """

    def epoch_start(self, epoch: int) -> None:
        pass

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Runs after the backward pass, before the optimiser step (e.g. gradient clipping)."""

    def step_end(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        pass

    def train_end(self, epoch: int) -> None:
        """Runs after the last epoch, before the best state is restored (e.g. keep the last state)."""

    def state_dict(self) -> dict[str, Any] | None:
        """What the hook carries from one epoch to the next (masks, counters, its own random
        generators' states), for an epoch checkpoint (:mod:`bench.resume`); ``{}`` for a hook that
        carries nothing. ``None`` (the default) says the hook cannot be checkpointed: a run with it
        is then not saved for resumption."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called before the first resumed epoch)."""


@dataclass
class TrainConfig:
    """Hyperparameters of a BPR training run.

    Defaults that follow RecBole 1.2.1's LightGCN (its ``LightGCN.yaml`` and overall defaults):
    ``dim`` 64, ``n_layers`` 2, ``lr`` 1e-3 (Adam, constant), ``batch_size`` 2048, at most
    ``epochs`` 300, stop after ``patience`` 10 validations without improvement, validate every
    epoch (``eval_every`` 1), Xavier-uniform ``init``.

    Defaults that do **not** follow RecBole: the L2 term is the LightGCN paper's (Eq. 15),
    ``reg_form = "squared"``, ``0.5 sum ||row||^2 / B``, at LightGCN's ``reg`` 1e-4; RecBole's is
    ``reg_form = "norm"``, ``sum ||rows||_F / B``, at 1e-5 (set both to train as RecBole does, as
    :mod:`bench.parity_recbole` does). Model selection is on ``valid_metric`` recall@20 with
    ``ks`` (10, 20, 40), not RecBole's MRR@10; ``backend``, ``eval_memory_bytes``, ``seed`` and
    ``device`` are this harness's own. See the README's "Training protocol" section.
    """

    dim: int = 64
    n_layers: int = 2
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    lr_period: int = 0
    reg: float = 1e-4
    reg_form: str = "squared"
    batch_size: int = 2048
    epochs: int = 300
    patience: int = 10
    eval_every: int = 1
    valid_metric: str = "recall@20"
    ks: tuple[int, ...] = DEFAULT_KS
    init: str = "xavier_uniform"
    backend: str = "csr"
    eval_memory_bytes: int = DEFAULT_EVAL_MEMORY_BYTES
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        """Every option's type and range, before any training: an error names each bad option."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"invalid training option: {f.name}={value!r} (an integer)")
        checks = {
            "dim": self.dim >= 1,
            "n_layers": self.n_layers >= 0,
            "lr": self.lr > 0,
            "reg": self.reg >= 0,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "patience": self.patience >= 1,
            "eval_every": self.eval_every >= 1,
            "lr_schedule": self.lr_schedule in LR_SCHEDULES,
            "lr_min": 0 <= self.lr_min <= self.lr,
            "lr_period": self.lr_period >= 0,
            "reg_form": self.reg_form in REG_FORMS,
            "init": self.init in INITS,
            "backend": self.backend in BACKENDS,
            "eval_memory_bytes": self.eval_memory_bytes >= 1,
            "ks": bool(self.ks) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                        for k in self.ks),
        }
        allowed = {"lr_schedule": LR_SCHEDULES, "reg_form": REG_FORMS, "init": INITS, "backend": BACKENDS}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid training option(s): "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + "".join(f" ({k} is one of {allowed[k]})" for k in bad if k in allowed)
                + (" (0 <= lr_min <= lr)" if "lr_min" in bad else "")
                + (" (ks: positive integers)" if "ks" in bad else "")
                + (" (eval_memory_bytes >= 1)" if "eval_memory_bytes" in bad else "")
            )
        name, _, k = self.valid_metric.partition("@")
        if name not in METRIC_NAMES or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(
                f"valid_metric {self.valid_metric!r} must be NAME@K with NAME one of {METRIC_NAMES} "
                f"and K in ks={self.ks}"
            )

    def check_against(self, data: InteractionData) -> None:
        """What depends on the dataset: every K of ``ks`` at most its item count."""
        too_large = [k for k in self.ks if k > data.n_items]
        if too_large:
            raise ValueError(f"ks {too_large} exceed {data.name}'s {data.n_items} items: a top-K list "
                             "cannot be longer than the catalogue")


@dataclass
class TrainedModel:
    """A trained model restored to its best validation epoch, with its metrics there."""

    model: Any
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]


@dataclass
class TrainResult(TrainedModel):
    """Outcome of a run: the restored best model and what happened."""

    config: TrainConfig
    epochs: int
    best_valid: float
    epoch_seconds: list[float]
    history: list[dict[str, float]] = field(default_factory=list)

    #: the epoch an interrupted run was resumed after (0: it ran from the start), and the wall
    #: seconds it had spent before that (part of its training cost)
    resumed_from_epoch: int = 0
    resumed_seconds: float = 0.0
    #: the epochs that ended with other work on the machine (:func:`shared_epochs`; None: unknown)
    shared_epochs: int | None = None

    @property
    def train_seconds_per_epoch(self) -> float:
        return statistics.median(self.epoch_seconds) if self.epoch_seconds else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.test)
        out.update({f"valid_{k}": v for k, v in self.valid.items()})
        out.update(
            epochs=self.epochs,
            best_epoch=self.best_epoch,
            train_seconds_per_epoch=self.train_seconds_per_epoch,
            train_seconds=sum(self.epoch_seconds),
        )
        return out


def make_adam(params: Sequence[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba) over ``params``, with torch's fused kernel where it applies.

    The fused implementation updates each parameter in one pass instead of the ~8 passes of the
    multi-tensor one (about 4x faster on a 70k x 64 table on CPU); same algorithm, same state keys
    (``exp_avg``, ``exp_avg_sq``, ``step``), results equal up to float rounding.
    """
    params = list(params)
    fusable = bool(params) and all(
        p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fusable or None)


def evaluate_split(
    model: BPRModel, data: InteractionData, split: str, config: TrainConfig
) -> EvalResult:
    """Full-ranking metrics on ``valid`` (masking train) or ``test`` (masking train and valid)."""
    with torch.no_grad():
        users, items = model.propagate()
    exclude = [data.matrix(s) for s in excluded_splits(split)]
    return evaluate_embeddings(
        users, items, data.matrix(split), exclude, ks=config.ks, memory_bytes=config.eval_memory_bytes
    )


def bpr_step(model: BPRModel, optimizer: torch.optim.Optimizer,
             batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], config: TrainConfig,
             hooks: Sequence[TrainHook] = (), step: int = 1) -> float:
    """One optimiser step on a batch of (user, positive, negative) triples: the BPR loss plus the
    model's penalty (LightGCN paper Eq. 15), backward, the hooks' ``before_step``, the step, their
    ``step_end``; ``step`` counts from 1. Returns the batch loss. A non-finite loss raises
    :class:`TrainingDivergedError` ("loss became nan"; callers add where it happened). This is the
    step :func:`fit_bpr` takes and the one the speed benchmarks time."""
    users, pos, neg = batch
    bpr, penalty = model.bpr_loss(users, pos, neg, config.reg, config.reg_form)
    loss = bpr + penalty
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for hook in hooks:
        hook.before_step(step, optimizer)
    optimizer.step()
    for hook in hooks:
        hook.step_end(step, optimizer)
    return loss.item()


def fit_bpr(
    model: BPRModel,
    data: InteractionData,
    config: TrainConfig,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    hooks: Sequence[TrainHook] = (),
    sampler: EpochSampler | None = None,
    resume: EpochCheckpoint | None = None,
) -> TrainResult:
    """Train ``model`` with BPR and validation early stopping; see the module docstring.

    ``hooks`` add method-specific steps (:class:`TrainHook`); the optimiser is Adam over the
    model's parameters that require a gradient. ``sampler`` gives each epoch's triples (default:
    :class:`bench.sampling.InteractionSampler`, every interaction once with one negative); a step
    takes ``sampler.batch_triples(batch_size)`` of them. ``resume``: save epoch checkpoints there
    and continue from one this same run saved before it was interrupted (:mod:`bench.resume`);
    ignored when a hook cannot be checkpointed.
    """
    _check_trainable(data, config)
    gen = torch.Generator().manual_seed(config.seed)
    if sampler is None:
        sampler = InteractionSampler(data.train, data.n_users, data.n_items)
    loop = _EpochLoop(model, data, config, hooks, sampler,
                      make_adam([p for p in model.parameters() if p.requires_grad], config.lr))
    best = _BestState()
    history: list[dict[str, float]] = []
    run = _Resumable.start(resume, model, data, config, hooks, sampler)
    start = run.restore(model, loop, best, history, gen, hooks) if run else 0
    epoch = start
    t0 = time.perf_counter()
    _report_live(start, config, best, history, loop, run, t0, start)
    finished = start > 0 and (best.since >= config.patience or start >= config.epochs)
    bar = tqdm(range(start + 1, config.epochs + 1), desc=live.current_title() or f"train {data.name}",
               unit="ep", disable=not progress or finished, leave=False, initial=start, total=config.epochs)
    for epoch in bar:
        row = loop.run(epoch, gen)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            value = best.validate(model, data, config, epoch)
            row[f"valid_{config.valid_metric}"] = value
            bar.set_postfix(loss=f"{row['loss']:.4f}", **{config.valid_metric: f"{value:.4f}"},
                            best=best.epoch)
        load = machine_load()["load_1m"]
        if load is not None:
            row["load_1m"] = load
        history.append(row)
        stop = best.since >= config.patience
        if run:
            run.save_if_due(epoch, stop or epoch == config.epochs, model, loop, best, history, gen, hooks)
        _report_live(epoch, config, best, history, loop, run, t0, start)
        if on_epoch is not None:
            on_epoch(row)
        if stop:
            break
    bar.close()
    for hook in hooks:
        hook.train_end(epoch)
    if best.state is not None:
        model.load_state_dict(best.state)
    test = evaluate_split(model, data, "test", config).metrics if len(data.test) else {}
    return TrainResult(model=model, config=config, epochs=epoch, best_epoch=best.epoch,
                       best_valid=best.value, valid=best.valid, test=test,
                       epoch_seconds=loop.epoch_seconds, history=history, resumed_from_epoch=start,
                       resumed_seconds=run.seconds_before if run else 0.0,
                       shared_epochs=shared_epochs(history, torch.get_num_threads()))


@dataclass
class _Resumable:
    """:func:`fit_bpr`'s side of an :class:`~bench.resume.EpochCheckpoint`: what one epoch's
    checkpoint holds, and restoring it."""

    checkpoint: EpochCheckpoint
    started: float
    seconds_before: float = 0.0
    saved_epoch: int = 0  # the last epoch in the checkpoint file (0: none yet)

    @classmethod
    def start(cls, checkpoint: EpochCheckpoint | None, model: BPRModel, data: InteractionData,
              config: TrainConfig, hooks: Sequence[TrainHook], sampler: EpochSampler) -> _Resumable | None:
        """None without a checkpoint or when a hook cannot be checkpointed (said in the log)."""
        if checkpoint is None:
            return None
        blocking = [type(h).__name__ for h in hooks if h.state_dict() is None]
        if blocking:
            checkpoint.say(f"training is not checkpointed for resumption: hook(s) {', '.join(blocking)} "
                           "cannot save their state")
            return None
        checkpoint.bind(run_identity(
            data.fingerprint(), config_dict(config), model.state_dict(), list(hooks),
            {"sampler": f"{type(sampler).__module__}.{type(sampler).__qualname__}",
             "triples": sampler.triples_per_epoch,
             "model_generators": generators_digest(model)}))
        return cls(checkpoint, time.perf_counter())

    def restore(self, model: BPRModel, loop: _EpochLoop, best: _BestState, history: list[dict[str, float]],
                gen: torch.Generator, hooks: Sequence[TrainHook]) -> int:
        """Load this run's checkpoint, if any, into the run's pieces; returns its epoch (0: none)."""
        snap = self.checkpoint.load()
        if snap is None:
            return 0
        model.load_state_dict(snap["model"])
        loop.optimizer.load_state_dict(snap["optimizer"])
        loop.step, loop.epoch_seconds = snap["step"], list(snap["epoch_seconds"])
        history.extend(snap["history"])
        for k, v in snap["best"].items():
            setattr(best, k, v)
        gen.set_state(snap["generator"])
        for hook, state in zip(hooks, snap["hooks"], strict=True):
            hook.load_state_dict(state)
        set_random_states(snap["random"])
        set_generator_states(model, snap["model_generators"])
        self.seconds_before = snap["seconds"]
        self.saved_epoch = int(snap["epoch"])
        return self.saved_epoch

    def save_if_due(self, epoch: int, final: bool, model: BPRModel, loop: _EpochLoop, best: _BestState,
                    history: list[dict[str, float]], gen: torch.Generator,
                    hooks: Sequence[TrainHook]) -> None:
        if not self.checkpoint.due(final):
            return
        self.checkpoint.save({
            "epoch": epoch, "seconds": self.seconds_before + time.perf_counter() - self.started,
            "model": model.state_dict(), "optimizer": loop.optimizer.state_dict(), "step": loop.step,
            "epoch_seconds": loop.epoch_seconds, "history": history,
            "best": {"value": best.value, "epoch": best.epoch, "state": best.state, "valid": best.valid,
                     "since": best.since},
            "generator": gen.get_state(), "hooks": [h.state_dict() for h in hooks],
            "random": random_states(), "model_generators": generator_states(model),
        })
        if not self.checkpoint.failed:
            self.saved_epoch = epoch


#: how far the 1-minute load may exceed a training's own threads before other work counts as running
SHARED_LOAD_MARGIN = 0.75


def shared_epochs(history: Sequence[dict[str, float]], threads: int) -> int | None:
    """How many of a run's epochs ended with other work on the machine: the 1-minute load recorded
    after the epoch (``load_1m``) above the training's own ``threads`` by more than
    :data:`SHARED_LOAD_MARGIN`: those epochs' times are not an idle machine's. Epochs without a
    reading (history resumed from a checkpoint written before loads were recorded) are not counted,
    so the count is a lower bound then; None when no epoch has a reading (a platform without load
    averages)."""
    loads = [row["load_1m"] for row in history if row.get("load_1m") is not None]
    if not loads:
        return None
    return sum(x > threads + SHARED_LOAD_MARGIN for x in loads)


def _report_live(epoch: int, config: TrainConfig, best: _BestState, history: list[dict[str, float]],
                 loop: _EpochLoop, run: _Resumable | None, t0: float, start: int) -> None:
    """Tell :mod:`bench.live` where the run stands after ``epoch`` (0 or the restored epoch: before
    the first epoch of this process)."""
    key = f"valid_{config.valid_metric}"
    last = next((row[key] for row in reversed(history) if key in row), None)
    live.report(live.EpochProgress(
        epoch=epoch, epochs=config.epochs, valid_metric=config.valid_metric, last_valid=last,
        best_valid=best.value if best.epoch else None, best_epoch=best.epoch,
        validations_since_best=best.since, patience=config.patience,
        seconds=(run.seconds_before + time.perf_counter() - run.started) if run else time.perf_counter() - t0,
        last_epoch_seconds=loop.epoch_seconds[-1] if loop.epoch_seconds else None,
        checkpoint_epoch=run.saved_epoch if run and not run.checkpoint.failed else None,
        resumed_from=start))


def _check_trainable(data: InteractionData, config: TrainConfig) -> None:
    """Raise unless ``config`` is valid and ``data`` has the train and validation pairs training needs."""
    config.validate()
    if len(data.train) == 0:
        raise EmptySplitError(f"{data.name}: the train split is empty")
    if len(data.valid) == 0:
        raise EmptySplitError(f"{data.name}: the validation split is empty (needed for early stopping)")


@dataclass
class _BestState:
    """Early stopping: the best validation value so far, its epoch, metrics and model state, and the
    validations since it."""

    value: float = -math.inf
    epoch: int = 0
    state: dict[str, Any] | None = None
    valid: dict[str, float] = field(default_factory=dict)
    since: int = 0

    def validate(self, model: BPRModel, data: InteractionData, config: TrainConfig, epoch: int) -> float:
        """Evaluate ``model`` on the validation split after ``epoch``, keep its state if it is the best
        so far; returns the value of ``config.valid_metric``."""
        res = evaluate_split(model, data, "valid", config)
        value = res.metrics[config.valid_metric]
        if value > self.value:
            self.value, self.epoch, self.valid = value, epoch, res.metrics
            self.state = copy.deepcopy(model.state_dict())
            self.since = 0
        else:
            self.since += 1
        return value


class _EpochLoop:
    """One training epoch at a time: the scheduled learning rate, the hooks' ``epoch_start``, the
    epoch's triples from the sampler, and a :func:`bpr_step` per mini-batch (steps counted across
    epochs); keeps each epoch's wall time."""

    def __init__(self, model: BPRModel, data: InteractionData, config: TrainConfig,
                 hooks: Sequence[TrainHook], sampler: EpochSampler, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.data, self.config, self.hooks = model, data, config, hooks
        self.sampler, self.optimizer = sampler, optimizer
        self.device = next(iter(model.parameters())).device
        self.batch = sampler.batch_triples(config.batch_size)
        self.step = 0
        self.epoch_seconds: list[float] = []

    def run(self, epoch: int, gen: torch.Generator) -> dict[str, float]:
        """Train epoch ``epoch`` drawing from ``gen``; returns its history row (epoch, mean loss,
        seconds, learning rate)."""
        t0 = time.perf_counter()
        config, batch = self.config, self.batch
        lr = scheduled_lr(config, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for hook in self.hooks:
            hook.epoch_start(epoch)
        users_all, pos_all, neg_all = self.sampler.epoch(gen)
        n = users_all.numel()
        n_batches = math.ceil(n / batch)
        total = 0.0
        for b in range(n_batches):
            u = users_all[b * batch : (b + 1) * batch].to(self.device)
            p = pos_all[b * batch : (b + 1) * batch].to(self.device)
            q = neg_all[b * batch : (b + 1) * batch].to(self.device)
            try:
                loss = bpr_step(self.model, self.optimizer, (u, p, q), config, self.hooks, self.step + 1)
            except TrainingDivergedError as exc:
                where = f"epoch {epoch}, batch {b + 1}/{n_batches}"
                raise TrainingDivergedError(f"{self.data.name}: {exc} at {where} "
                                            f"(lr={config.lr}, reg={config.reg})") from None
            self.step += 1
            total += loss * u.numel()
        self.epoch_seconds.append(time.perf_counter() - t0)
        return {"epoch": epoch, "loss": total / n, "seconds": self.epoch_seconds[-1], "lr": lr}


def build_lightgcn(data: InteractionData, config: TrainConfig, device: torch.device):
    """The LightGCN backbone over the full training graph, initialised from the global generator."""
    graph = normalized_adjacency(
        data.n_users, data.n_items, data.train[:, 0], data.train[:, 1],
        backend=config.backend, device=device,
    )
    return LightGCN(data.n_users, data.n_items, config.dim, config.n_layers, graph,
                    init=config.init).to(device)


def train_lightgcn(
    data: InteractionData, config: TrainConfig, progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Build the LightGCN backbone on the training graph and train it with :func:`fit_bpr`."""
    config.validate()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_lightgcn(data, config, device)
    return fit_bpr(model, data, config, progress=progress, on_epoch=on_epoch)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["ks"] = list(config.ks)
    return d
