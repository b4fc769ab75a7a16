"""What a method receives: dataset, device, seed, budget, progress and the shared base checkpoint.

The **base checkpoint** is the LightGCN trained with the matrix's shared budget on a (dataset,
seed). It is trained once, cached on disk under ``<cache>/checkpoints/`` (the dataset cache
directory, see :func:`bench.data.loading.cache_dir`) keyed by (dataset fingerprint, backbone
configuration, seed, torch version), and reused by every method that starts from a trained model
or a teacher, and by the ``lightgcn`` reference itself. The sha256 of its tensors is recorded with
every cell, so a report can show that all methods started from the same model. A file lock makes
concurrent workers train it once.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import live
from bench.backbone.graph import NormalizedGraph, normalized_adjacency
from bench.backbone.lightgcn import LightGCN
from bench.contract import TrainingCost
from bench.data.dataset import InteractionData
from bench.device import seed_everything
from bench.files import write_atomically
from bench.measure.flops import count_train_macs_per_epoch
from bench.measure.memory import PhaseMemory
from bench.registry import random_streams
from bench.resume import DEFAULT_EVERY_SECONDS, EpochCheckpoint
from bench.sampling import EpochSampler
from bench.training import (
    TrainConfig,
    TrainedModel,
    TrainHook,
    TrainResult,
    build_lightgcn,
    config_dict,
    fit_bpr,
)

CHECKPOINT_VERSION = 1
# free space below which a failed cache write is put down to a full disk
LOW_DISK_BYTES = 64 * 2**20
# options that change where or how fast a model trains, not what it learns
_NON_MODEL_KEYS = ("device", "eval_memory_bytes")


def result_fields(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that can change what a model learns (all but :data:`_NON_MODEL_KEYS`)."""
    return {k: v for k, v in config_dict(config).items() if k not in _NON_MODEL_KEYS}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class BaseModel(TrainedModel):
    """A freshly loaded copy of the base checkpoint (safe to modify), its best epoch and metrics, and
    its provenance."""

    model: LightGCN
    key: str
    state_hash: str
    training: TrainingCost
    path: Path | None
    budget_epochs: int | None = None  # the epoch budget it was trained under (None: not recorded)
    shared_epochs: int | None = None  # its epochs that ended beside other work (None: not recorded)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hashed(state: dict[str, torch.Tensor], meta: dict[str, Any]
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A CPU copy of ``state`` and ``meta`` with the state's sha256 added."""
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    return state, {**meta, "state_hash": state_hash(state)}


def locked_cache(path: Path, build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
                 log: Callable[[str], None] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """Load ``path`` (state + meta, hash-checked) or build, save atomically and return it.

    A file lock makes concurrent workers build it once; an unreadable or tampered file is rebuilt.
    Returns ``(state, meta, loaded)``.
    """
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                state, meta = blob["state"], json.loads(blob["meta"])
                if state_hash(state) != meta["state_hash"]:
                    raise ValueError("state hash mismatch")
                return state, meta, True
            except Exception as exc:  # unreadable or tampered: rebuild
                if log:
                    log(f"cached state {path} is unusable ({exc}); rebuilding it")
        state, meta = _hashed(*build())
        _save_atomically({"state": state, "meta": json.dumps(meta)}, path, log)
        return state, meta, False


def _save_atomically(blob: dict[str, Any], path: Path, log: Callable[[str], None] | None) -> bool:
    """Write ``blob`` to ``path`` through a temporary file and a rename; whether it was written.

    A failed write (a full disk, a read-only cache) removes the temporary file and is logged: the
    caller keeps the state it just built in memory, so the cells of this run still use it.
    """
    try:
        write_atomically(path, lambda tmp: torch.save(blob, tmp))
        return True
    except (OSError, RuntimeError) as exc:
        if log:
            log(f"could not write the cache file {path} ({_write_failure(exc, path.parent)}); "
                "it is used from memory in this run and rebuilt by the next one")
        return False


def _write_failure(exc: BaseException, directory: Path) -> str:
    """``exc`` in words, saying "the disk is full" when that is the cause (torch reports a full disk
    as a bare ``RuntimeError: [enforce fail ...] file write failed``)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk is full: {exc.strerror}"
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    if free is not None and free < LOW_DISK_BYTES:
        return f"the disk is full ({free / 2**20:.1f} MiB free): {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class BaseCheckpoints:
    """Trains, caches and hands out base LightGCN checkpoints (see the module docstring)."""

    def __init__(self, directory: Path | None, resume_every_seconds: float = DEFAULT_EVERY_SECONDS) -> None:
        self.directory = directory
        self.resume_every_seconds = resume_every_seconds
        self._memory: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}

    @staticmethod
    def key(data: InteractionData, config: TrainConfig) -> str:
        backbone = result_fields(config)
        blob = json.dumps({"dataset": data.fingerprint(), "backbone": backbone,
                           "torch": torch.__version__.split("+")[0], "version": CHECKPOINT_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prepare(self, data: InteractionData, config: TrainConfig, device: torch.device,
                progress: bool = False, log: Callable[[str], None] | None = None) -> str:
        """Load (or train and save) the checkpoint's state into memory; returns its key."""
        key = self.key(data, config)
        if key not in self._memory:
            self._memory[key] = self._load_or_train(key, data, config, device, progress, log)
        return key

    def get(self, data: InteractionData, config: TrainConfig, device: torch.device,
            progress: bool = False, log: Callable[[str], None] | None = None) -> BaseModel:
        key = self.prepare(data, config, device, progress, log)
        state, _ = self._memory[key]
        model = build_lightgcn(data, config, device)
        model.load_state_dict(copy.deepcopy(state))
        return BaseModel(model=model, **self.provenance(data, key))

    def provenance(self, data: InteractionData, key: str) -> dict[str, Any]:
        """What a prepared checkpoint is: hash, training cost, its metrics, where it is stored."""
        meta = self._memory[key][1]
        return {"key": key, "state_hash": meta["state_hash"], "training": TrainingCost(**meta["training"]),
                "valid": meta["valid"], "test": meta["test"], "best_epoch": meta["best_epoch"],
                "budget_epochs": meta.get("budget_epochs", meta.get("config", {}).get("epochs")),
                "shared_epochs": meta.get("shared_epochs"),
                "path": self._path(data, key)}

    def _path(self, data: InteractionData, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{data.name}-lightgcn-{key[:20]}.pt"

    def _load_or_train(self, key: str, data: InteractionData, config: TrainConfig,
                       device: torch.device, progress: bool, log: Callable[[str], None] | None):
        path = self._path(data, key)
        if path is None:
            return self._train(data, config, device, progress)
        # epoch checkpoints of an interrupted base training, removed once the base is cached
        resume = EpochCheckpoint(path.parent / "resume", path.stem, self.resume_every_seconds, log)

        def train():
            if log:
                log(f"training the base LightGCN for {data.name} (seed {config.seed})")
            return self._train(data, config, device, progress, resume)

        state, meta, _ = locked_cache(path, train, log)
        if resume.identity is not None:
            resume.remove()
        return state, meta

    @staticmethod
    def stage_key(data: InteractionData, name: str, config: TrainConfig, fields: Mapping[str, Any]) -> str:
        """The cache key of a stage: the dataset fingerprint, ``name``, every field of ``config`` (the
        :class:`TrainConfig` the stage trains with) that can change what it learns, the JSON of
        ``fields`` (what else the result depends on: method options outside the config, the hashes
        of the states it starts from, a version) and the torch version."""
        blob = json.dumps({"dataset": data.fingerprint(), "stage": name, "config": result_fields(config),
                           "fields": dict(fields), "torch": torch.__version__.split("+")[0],
                           "version": CHECKPOINT_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def stage(self, data: InteractionData, name: str, config: TrainConfig, fields: Mapping[str, Any],
              build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
              log: Callable[[str], None] | None = None
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """A method's cached training stage: ``(state, meta, hit)``.

        Keyed by :meth:`stage_key`; kept in memory and, with a directory, on disk next to the base
        checkpoints (file-locked, so concurrent workers build it once). ``build()`` returns the state
        and a JSON-able meta (e.g. its training cost); ``hit`` says whether it was reused.
        """
        key = self.stage_key(data, name, config, fields)
        if key in self._memory:
            state, meta = self._memory[key]
            return state, meta, True
        if self.directory is None:
            state, meta = _hashed(*build())
            hit = False
        else:
            state, meta, hit = locked_cache(self.directory / f"{data.name}-{name}-{key[:20]}.pt", build, log)
        self._memory[key] = (state, meta)
        return state, meta, hit

    @staticmethod
    def _train(data: InteractionData, config: TrainConfig, device: torch.device, progress: bool,
               resume: EpochCheckpoint | None = None):
        seed_everything(config.seed)
        model = build_lightgcn(data, config, device)
        memory = PhaseMemory(device)
        t0 = time.perf_counter()
        with memory.phase("training"), live.stage("base LightGCN"):
            result = fit_bpr(model, data, config, progress=progress, resume=resume)
        seconds = time.perf_counter() - t0 + result.resumed_seconds
        macs = count_train_macs_per_epoch(model, len(data.train), config.batch_size,
                                          data.n_users, data.n_items)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        meta = {
            "state_hash": state_hash(state),
            "training": {"seconds": seconds, "epochs": result.epochs, "macs_per_epoch": macs,
                         "peak_mem_bytes": memory.peaks["training"]},
            "valid": result.valid, "test": result.test, "best_epoch": result.best_epoch,
            "budget_epochs": config.epochs, "shared_epochs": result.shared_epochs,
            "config": config_dict(config), "dataset": data.name,
            "dataset_fingerprint": data.fingerprint(),
        }
        return state, meta


@dataclass
class MethodContext:
    """Everything a method's ``compress`` may use; see :mod:`bench.contract` for the contract."""

    data: InteractionData
    device: torch.device
    seed: int
    budget: TrainConfig
    checkpoints: BaseCheckpoints
    progress: bool = False
    log: Callable[[str], None] = print
    cost: TrainingCost = field(default_factory=TrainingCost)
    #: every training stage this cell ran or reused: name, epochs, best epoch, epoch budget
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: the random streams :meth:`rng` draws (name -> id): the cell's method's ``random_streams``;
    #: None: every stream a registered method declares
    streams: Mapping[str, int] | None = None
    #: where this cell's training runs keep epoch checkpoints (:mod:`bench.resume`); None: nowhere
    resume_dir: Path | None = None
    resume_every_seconds: float = DEFAULT_EVERY_SECONDS
    _base_key: str | None = None

    def prepare_base(self) -> None:
        """Train or load the shared base checkpoint now (the harness does it before measuring)."""
        self._base_key = self.checkpoints.prepare(self.data, self.budget, self.device, self.progress,
                                                  self.log)

    def base(self) -> BaseModel:
        """A fresh copy of the shared base LightGCN (trained with the budget on first use)."""
        model = self.checkpoints.get(self.data, self.budget, self.device, self.progress, self.log)
        self._base_key = model.key
        return model

    @property
    def base_info(self) -> dict[str, Any] | None:
        """Provenance of the base checkpoint this cell used, if any (its hash goes into the results)."""
        return None if self._base_key is None else self.checkpoints.provenance(self.data, self._base_key)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The shared budget with ``overrides`` (validated)."""
        cfg = dataclasses.replace(self.budget, **overrides)
        cfg.validate()
        return cfg

    def generator(self, stream: str) -> torch.Generator:
        """A CPU generator seeded from (seed, ``stream``): one independent stream per purpose."""
        digest = hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def training_graph(self, pairs: np.ndarray | None = None, backend: str | None = None) -> NormalizedGraph:
        """Normalised adjacency of ``pairs`` (default: all training interactions) on the device."""
        pairs = self.data.train if pairs is None else pairs
        return normalized_adjacency(self.data.n_users, self.data.n_items, pairs[:, 0], pairs[:, 1],
                                    backend=backend or self.budget.backend, device=self.device)

    def rng(self, stream: str, *spawn: int) -> np.random.Generator:
        """``numpy.random.default_rng([seed, id, *spawn])``: per-purpose random streams.

        A method declares the streams it draws, name -> id, in its ``random_streams`` (the
        conventions of docs/methods/random-drop.md and docs/methods/unkd.md: edge mask ``[s, 1]``,
        embedding mask ``[s, 2]``, UnKD pairs ``[s, 3]``); a mask never changes when another
        component consumes randomness. ``spawn`` integers extend the seed (e.g. a pruning run's
        index: ``[s, id, run]``).
        """
        streams = random_streams() if self.streams is None else self.streams
        if stream not in streams:
            raise KeyError(f"unknown random stream {stream!r}; known: {sorted(streams)}")
        return np.random.default_rng([self.seed, streams[stream], *spawn])

    def stage(self, name: str, config: TrainConfig, fields: Mapping[str, Any],
              build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """A cached training stage (:meth:`BaseCheckpoints.stage` on this cell's data); ``config``: the
        :class:`TrainConfig` ``build`` trains with, ``fields``: what else its result depends on (this
        cell's seed, which seeds :meth:`rng`, is added). A reused stage is recorded in :attr:`stages`
        from its meta (a built one was recorded by :meth:`fit_stage`)."""
        n_before = len(self.stages)
        state, meta, hit = self.checkpoints.stage(self.data, name, config, {**fields, "seed": self.seed},
                                                  build, self.log)
        if len(self.stages) == n_before and "best_epoch" in meta:
            self.stages.append({"stage": name, "epochs": meta.get("epochs"), "best_epoch": meta["best_epoch"],
                                "budget_epochs": meta.get("budget_epochs"), "cached": True,
                                "shared_epochs": meta.get("shared_epochs")})
        elif len(self.stages) > n_before:
            self.stages[-1]["stage"] = name
        return state, meta, hit

    def fit(self, model: Any, config: TrainConfig | None = None, hooks: Sequence[TrainHook] = (),
            extra_macs_per_epoch: float | Callable[[TrainResult], float] = 0.0,
            sampler: EpochSampler | None = None, stage: str = "training") -> TrainResult:
        """Train ``model`` with the shared BPR loop and add its cost (time, epochs, MACs) to ``cost``.

        See :meth:`fit_stage` for the arguments and how the cost is counted.
        """
        cost, result = self.fit_stage(model, config, hooks, extra_macs_per_epoch, sampler, stage)
        self.cost = self.cost.add(cost)
        return result

    def fit_stage(self, model: Any, config: TrainConfig | None = None, hooks: Sequence[TrainHook] = (),
                  extra_macs_per_epoch: float | Callable[[TrainResult], float] = 0.0,
                  sampler: EpochSampler | None = None, stage: str = "training"
                  ) -> tuple[TrainingCost, TrainResult]:
        """Train ``model`` with the shared BPR loop; return this run's own cost and its result.

        For a cached stage, which records its cost and is charged when a cell uses it. MACs per
        epoch are counted by fvcore on the model's BPR forward (x3 for the backward) over the
        sampler's triples per epoch and batch, plus ``extra_macs_per_epoch`` for work the hooks do
        outside it (counted by the method; a callable gets the finished run, for counts known only
        after training). ``sampler``: see :func:`bench.training.fit_bpr`. ``stage``: its name in
        :attr:`stages` (a cached stage's name replaces it).
        """
        config = config or self.budget
        resume = None if self.resume_dir is None else EpochCheckpoint(
            self.resume_dir, stage, self.resume_every_seconds, self.log)
        t0 = time.perf_counter()
        with live.stage(stage):
            result = fit_bpr(model, self.data, config, progress=self.progress, hooks=hooks, sampler=sampler,
                             resume=resume)
        seconds = time.perf_counter() - t0 + result.resumed_seconds
        n_triples = len(self.data.train) if sampler is None else sampler.triples_per_epoch
        batch = config.batch_size if sampler is None else sampler.batch_triples(config.batch_size)
        macs = count_train_macs_per_epoch(model, n_triples, batch, self.data.n_users, self.data.n_items)
        extra = extra_macs_per_epoch(result) if callable(extra_macs_per_epoch) else extra_macs_per_epoch
        self.stages.append({"stage": stage, "epochs": result.epochs,
                            "best_epoch": result.best_epoch, "budget_epochs": config.epochs, "cached": False,
                            "shared_epochs": result.shared_epochs,
                            **({"resumed_from_epoch": result.resumed_from_epoch}
                               if result.resumed_from_epoch else {})})
        return TrainingCost(seconds, result.epochs, macs + extra), result


def stage_meta(cost: TrainingCost, result: TrainResult, **extra: Any) -> dict[str, Any]:
    """The JSON meta of a cached training stage: its cost, metrics and epochs (plus ``extra``)."""
    return {"training": dataclasses.asdict(cost), "valid": result.valid, "test": result.test,
            "best_epoch": result.best_epoch, "epochs": result.epochs,
            "budget_epochs": result.config.epochs, "shared_epochs": result.shared_epochs, **extra}
