"""One cell of the matrix: (dataset, method, options, target, seed) trained, evaluated and measured.

:func:`run_cell` is what every executor runs (in-process, in a worker process or on a Dask
worker). It never raises for a failing method: an exception, a diverged loss or an out-of-memory
error becomes a result with ``status = "failed"`` and the error, so that the matrix goes on.
Only ``KeyboardInterrupt`` propagates.

Order of work, the same for every method:

1. load the dataset and check its checksum against the one the matrix was planned with;
2. prepare the shared base checkpoint if the method uses one (outside every measured phase);
3. phase ``training``: ``method.compress(context, target)``;
4. phase ``propagation``: the final user and item representations;
5. phase ``scoring``: full-ranking evaluation on the test split (then validation, unmeasured);
6. measurements: sizes and achieved ratios, fvcore FLOPs, latency.

Peak memory is reset at the start of each phase (:mod:`bench.measure.memory`). What the method's
context logs (a damaged cache file rebuilt, a cache that could not be written) is kept in the
result's ``info["log"]`` and shown by the runner after the cell's line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench import live
from bench.contract import CompressedModel, Method, Target, TrainingCost
from bench.registry import get_method
from bench.result import CellResult, now

if TYPE_CHECKING:  # imported when a cell runs (see _execute)
    from bench.context import MethodContext
    from bench.data.dataset import InteractionData
    from bench.measure.memory import PhaseMemory
    from bench.training import TrainConfig

# a target missed by more than this (absolute, in ratio units) flags the cell
FLAG_TOLERANCE = 0.02
WARMUP_ROWS = 64  # users ranked once, unmeasured, before the measured scoring phase
SCORING_REPEATS = 3  # measured scoring phases per cell; the median one's memory is reported
DEFAULT_MEASURE: dict[str, Any] = {
    "flops": True,
    "latency": True,
    "latency_warmup": 3,
    "latency_repeats": 20,
    "latency_batches": [1, 64, 1024],
    "flops_batch_users": 256,
}


class DatasetChangedError(RuntimeError):
    """The dataset's content differs from the checksum the matrix was planned with."""


@dataclass
class CellSpec:
    """Everything that defines a cell. :attr:`key` hashes all of it but the run name and paths."""

    dataset: str
    method: str
    seed: int
    emb_target: float = 1.0
    edge_target: float | None = None
    layers_target: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MEASURE))
    device: str = "cpu"
    dataset_checksum: str = ""
    code_version: str = ""
    run: str = ""
    data_dir: str | None = None
    checkpoint_dir: str | None = None
    progress: bool = False
    # where the cell keeps its live progress file while it runs (bench.live; None: nowhere)
    live_dir: str | None = None
    threads: int | None = None  # torch CPU threads for this cell (None: leave as is)
    # cells the executor runs at once (recorded with the result, not part of the key; None: unknown)
    concurrent_cells: int | None = 1

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("run", "data_dir", "checkpoint_dir", "progress", "live_dir", "threads", "concurrent_cells"):
            d.pop(k)
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def label(self) -> str:
        t = f"emb={self.emb_target:g}"
        if self.edge_target is not None:
            t += f",edge={self.edge_target:g}"
        if self.layers_target is not None:
            t += f",layers={self.layers_target}"
        return f"{self.dataset}/{self.method}[{t}]/seed{self.seed}"


#: the budget keys that fix the model's architecture (:class:`bench.training.TrainConfig`): cells
#: that differ in them train different models, which a report neither compares nor lets one replace
#: the other
MODEL_SHAPE_KEYS = ("dim", "n_layers")


def model_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """A cell spec's (as a dict) model shape: its budget's :data:`MODEL_SHAPE_KEYS`, with
    :class:`~bench.training.TrainConfig`'s defaults where the budget leaves them out."""
    from bench.training import TrainConfig

    budget = spec.get("budget") or {}
    return {k: budget.get(k, getattr(TrainConfig, k)) for k in MODEL_SHAPE_KEYS}


def report_identity(spec: dict[str, Any]) -> str:
    """What a report shows one cell for: dataset, method, options, targets and seed of a cell spec
    (as a dict), not its budget or code version. The newest cell of an identity is reported."""
    keys = ("dataset", "method", "options", "emb_target", "edge_target", "layers_target", "seed")
    return json.dumps({k: spec.get(k) for k in keys}, sort_keys=True, default=str)


def describe_error(exc: BaseException) -> str:
    """One line naming the kind of failure: diverged, out of memory, or the exception."""
    from bench.training import TrainingDivergedError

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, TrainingDivergedError):
        return f"diverged: {msg}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in msg.lower()
    ):
        return f"out of memory: {type(exc).__name__}: {msg}"
    return f"{type(exc).__name__}: {msg}"


def new_result(spec: CellSpec) -> CellResult:
    """An empty result for ``spec``, started now, failed until filled in."""
    return CellResult.start(dataclasses.asdict(spec), spec.key)


def finish_result(result: CellResult, spec: CellSpec, device: torch.device | str) -> CellResult:
    """Stamp the finish time, the total seconds and the environment (with the code version) on a
    result."""
    from bench.environment import environment

    result.finished_at = now()
    result.seconds = result.timings.get("total")
    result.environment = {**environment(device), "code_version": spec.code_version,
                          "concurrent_cells": spec.concurrent_cells}
    return result


def training_stages(base: dict[str, Any] | None, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cell's training stages (the shared base first, if used), each marked ``at_budget`` when
    its best validation epoch was the last epoch its budget allowed: it was still improving when
    the budget stopped it, so its quality is a lower bound at this budget (the report notes it)."""
    rows = []
    if base is not None:
        rows.append({"stage": "base", "epochs": base["training"].epochs, "best_epoch": base["best_epoch"],
                     "budget_epochs": base.get("budget_epochs"), "cached": True,
                     "shared_epochs": base.get("shared_epochs")})
    rows.extend(dict(s) for s in stages)
    for r in rows:
        r["at_budget"] = bool(r["budget_epochs"] and r["best_epoch"] == r["budget_epochs"])
    return rows


def report_notes(compressed: CompressedModel) -> list[str] | None:
    """The notes a result stores for the report (``settings["report_note"]``, as every store has
    kept them): the model's ``notes``, then any a plugin still passes in its settings."""
    legacy = compressed.settings.get("report_note") or []
    notes = [*compressed.notes, *([legacy] if isinstance(legacy, str) else legacy)]
    return notes or None


def resume_dir(spec: CellSpec) -> Path | None:
    """Where the cell's training runs keep their epoch checkpoints (:mod:`bench.resume`) while it
    runs: ``<checkpoint_dir>/resume/<cell key>``; None without a checkpoint directory."""
    return Path(spec.checkpoint_dir) / "resume" / spec.key if spec.checkpoint_dir else None


def resume_every_seconds() -> float:
    """The least wall time between two epoch checkpoints of a training run: ``RECSHRINK_CHECKPOINT_EVERY``
    seconds (0: every epoch), by default :data:`bench.resume.DEFAULT_EVERY_SECONDS`."""
    from bench.resume import DEFAULT_EVERY_SECONDS

    raw = os.environ.get("RECSHRINK_CHECKPOINT_EVERY", "").strip()
    if not raw:
        return DEFAULT_EVERY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"RECSHRINK_CHECKPOINT_EVERY must be a number of seconds >= 0, got {raw!r}")
    return value


def run_cell(spec: CellSpec) -> CellResult:
    """Run one cell and return its result (see the module docstring). A cell that ends, ok or failed,
    removes its epoch checkpoints; one that is killed leaves them, and its rerun resumes from them."""
    result = new_result(spec)
    t0 = time.perf_counter()
    device = None
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        with live.watching(spec.live_dir, spec.key, spec.label()):
            device = _execute(spec, result)
        result.status = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result.error = describe_error(exc)
        result.traceback = "".join(traceback.format_exception(exc))[-8000:]
    finally:
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
    where = resume_dir(spec)
    if where is not None:
        shutil.rmtree(where, ignore_errors=True)
    result.timings["total"] = time.perf_counter() - t0
    if not result.info.get("log"):
        result.info.pop("log", None)
    return finish_result(result, spec, device or "cpu")


@dataclass
class _Setup:
    """What a cell runs: its data, device, budget, method, target and the context it hands over."""

    data: InteractionData
    device: torch.device
    config: TrainConfig
    method: Method
    target: Target
    ctx: MethodContext


def _execute(spec: CellSpec, result: CellResult) -> torch.device:
    """Steps 1-6 of the module docstring, filling ``result``; returns the device the cell ran on."""
    # imported here for import time only: the config parser and the report import this module for
    # CellSpec and report_identity and need none of the training and measuring stack
    from bench.measure.memory import PhaseMemory, set_allocator

    timings = result.timings
    t = time.perf_counter()
    data = _load_checked(spec)
    result.info["cold_pairs"] = data.cold_pairs()
    timings["load"] = time.perf_counter() - t
    setup = _set_up(spec, data, timings, result.info.setdefault("log", []).append)
    memory = PhaseMemory(setup.device)
    if setup.device.type == "cpu":
        # every cell trains under the same fixed allocator thresholds, whatever ran before it
        result.info["allocator"] = "glibc, fixed thresholds" if set_allocator("training") else "default"
    t = time.perf_counter()
    with memory.phase("training"):
        compressed = setup.method.compress(setup.ctx, setup.target)
    timings["compress"] = time.perf_counter() - t
    ctx = setup.ctx
    cost = compressed.training if (compressed.training.epochs or compressed.training.seconds) else ctx.cost
    compressed.module.eval()

    t = time.perf_counter()
    test, valid = _evaluate(spec, setup, compressed, memory)
    timings["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    m = _measure(spec, setup, compressed, cost, memory, result)
    timings["measure"] = time.perf_counter() - t

    result.metrics = {**test, **{f"valid_{k}": v for k, v in valid.items()}}
    # numbers are measurements; descriptions (units, skipped ops, how memory was read) are info
    for k in [k for k, v in m.items() if isinstance(v, bool) or not isinstance(v, int | float)]:
        result.info[k] = m.pop(k)
    result.measurements = m
    notes = report_notes(compressed)
    result.settings = {**compressed.settings, "report_note": notes} if notes else compressed.settings
    reasons = flag_reasons(spec, m)
    if reasons:
        result.flagged = True
        result.flag_reason = "; ".join(reasons)
    return setup.device


def _load_checked(spec: CellSpec) -> InteractionData:
    """The cell's dataset, checked against the checksum the matrix was planned with."""
    from bench.data.loading import load_dataset

    data = load_dataset(spec.dataset, spec.data_dir)
    if spec.dataset_checksum and data.fingerprint() != spec.dataset_checksum:
        raise DatasetChangedError(
            f"dataset {spec.dataset!r} changed since the matrix was planned "
            f"(checksum {data.fingerprint()[:12]} != {spec.dataset_checksum[:12]})"
        )
    return data


def _set_up(spec: CellSpec, data: InteractionData, timings: dict[str, Any],
            log: Callable[[str], None]) -> _Setup:
    """Device, budget, method and target checked, seeds set, and the shared base checkpoint prepared
    (timed as ``base``) if the method uses one; seeds are set again after it. What the context logs
    (e.g. a damaged cache file it rebuilt) goes to ``log``."""
    from bench.context import BaseCheckpoints, MethodContext
    from bench.device import resolve_device, seed_everything
    from bench.training import TrainConfig

    device = resolve_device(spec.device)
    config = TrainConfig(**{**spec.budget, "seed": spec.seed, "device": str(device)})
    config.validate()
    cls = get_method(spec.method)
    method = cls(**spec.options)
    target = Target(spec.emb_target, spec.edge_target, spec.layers_target)
    cls.check_target(target, config.n_layers)
    seed_everything(spec.seed)
    every = resume_every_seconds()
    checkpoints = BaseCheckpoints(Path(spec.checkpoint_dir) if spec.checkpoint_dir else None, every)
    ctx = MethodContext(data=data, device=device, seed=spec.seed, budget=config,
                        checkpoints=checkpoints, progress=spec.progress,
                        log=log, streams=cls.random_streams, resume_dir=resume_dir(spec),
                        resume_every_seconds=every)
    if cls.uses_base:
        t = time.perf_counter()
        ctx.prepare_base()
        timings["base"] = time.perf_counter() - t
        seed_everything(spec.seed)
    return _Setup(data, device, config, method, target, ctx)


def _evaluate(spec: CellSpec, setup: _Setup, compressed: CompressedModel,
              memory: PhaseMemory) -> tuple[dict[str, float], dict[str, float]]:
    """Test and validation metrics of the compressed model: its representations (phase
    ``propagation``), then full ranking of the test split (phase ``scoring``) and of the validation
    split (unmeasured). Each measured phase runs once unmeasured first, on a few rows for the
    ranking: what a first call costs once per process (lazy initialisation) is then not charged to
    whichever cell happens to run first. Both count their need as tensor allocations
    (:class:`PhaseMemory`, ``tensors=True``). The scoring phase runs ``SCORING_REPEATS`` times and
    reports the repeat with the median absolute peak (the metrics are the first repeat's; the
    ranking is deterministic)."""
    from bench.evaluation import evaluate_scores, excluded_splits
    from bench.measure.memory import TensorAllocations
    from bench.training import TrainingDivergedError

    # the warm-up, discarded; under the allocation counter, whose first start in a process is slow
    with TensorAllocations():
        compressed.representations()
    with memory.phase("propagation", tensors=True):
        users, items = compressed.representations()
    if not (torch.isfinite(users).all() and torch.isfinite(items).all()):
        raise TrainingDivergedError(f"{spec.method} produced non-finite representations")

    def score_rows(u: torch.Tensor) -> torch.Tensor:
        return compressed.score(users[u], items)

    data, config = setup.data, setup.config
    matrices = {s: data.matrix(s) for s in ("train", "valid", "test")}
    exclude = {s: [matrices[e] for e in excluded_splits(s)] for s in ("test", "valid")}
    warm = min(WARMUP_ROWS, matrices["test"].shape[0])
    with torch.no_grad():
        evaluate_scores(score_rows, matrices["test"][:warm], [m[:warm] for m in exclude["test"]],
                        ks=config.ks, memory_bytes=config.eval_memory_bytes, device=setup.device)
    readings = []  # (peak, baseline, need) of each repeat
    for repeat in range(SCORING_REPEATS):
        with torch.no_grad(), memory.phase("scoring", tensors=True):
            metrics = evaluate_scores(score_rows, matrices["test"], exclude["test"], ks=config.ks,
                                      memory_bytes=config.eval_memory_bytes, device=setup.device).metrics
        if repeat == 0:
            test = metrics
        readings.append((memory.peaks["scoring"], memory.baseline["scoring"], memory.increments()["scoring"]))
    # the median repeat's reading: one RSS reading now and then lands ~3 MiB high on its own
    memory.peaks["scoring"], memory.baseline["scoring"], need = sorted(readings)[len(readings) // 2]
    if "scoring" in memory.needs:
        memory.needs["scoring"] = need
    with torch.no_grad():
        valid = evaluate_scores(score_rows, matrices["valid"], exclude["valid"], ks=config.ks,
                                memory_bytes=config.eval_memory_bytes, device=setup.device).metrics
    return test, valid


def _inference_measurements(spec: CellSpec, setup: _Setup, compressed: CompressedModel,
                            result: CellResult) -> dict[str, Any]:
    """Sizes and achieved ratios, then (as ``spec.measure`` asks) FLOPs and latency; the latency
    timer's description goes to ``result.info``."""
    from bench.measure.flops import count_inference_flops
    from bench.measure.latency import latency_info, load_between, machine_load, measure_latency
    from bench.measure.size import achieved_compression

    data = setup.data
    m: dict[str, Any] = achieved_compression(compressed, data.n_users, data.n_items, len(data.train),
                                             setup.config.dim)
    measure = {**DEFAULT_MEASURE, **spec.measure}
    if measure["flops"]:
        m.update(count_inference_flops(compressed, data.n_users, measure["flops_batch_users"]))
    if measure["latency"]:
        before = machine_load()
        m.update(measure_latency(compressed, batches=tuple(measure["latency_batches"]),
                                 warmup=measure["latency_warmup"], repeats=measure["latency_repeats"],
                                 seed=spec.seed))
        load = load_between(before, machine_load())
        result.info["latency"] = {**latency_info(setup.device), "machine_load": load}
    return m


def _measure(spec: CellSpec, setup: _Setup, compressed: CompressedModel, cost: TrainingCost,
             memory: PhaseMemory, result: CellResult) -> dict[str, Any]:
    """Every measurement of the cell (numbers and descriptions): inference cost, training ``cost`` and
    peak memory, the method's own measurements (which may not reuse a harness name), totals with
    the shared base's training, and the training stages (to ``result.info``; the base checkpoint's
    hash to ``result.base_checkpoint``)."""
    ctx = setup.ctx
    m = _inference_measurements(spec, setup, compressed, result)
    m.update(_training_measurements(cost, memory))
    clash = sorted(set(compressed.measurements)
                   & (set(m) | {"base_train_seconds", "train_seconds_total", "train_epochs_total"}))
    if clash:
        raise ValueError(f"method {spec.method!r} reports measurements the harness owns: {clash}")
    m.update(compressed.measurements)
    base = ctx.base_info
    own_is_base = base is not None and cost == base["training"]  # the reference: the base itself
    m["train_seconds_total"], m["train_epochs_total"] = cost.seconds, cost.epochs
    if base is not None:
        m["base_train_seconds"] = base["training"].seconds
        result.base_checkpoint = base["state_hash"]
        if not own_is_base:
            m["train_seconds_total"] += base["training"].seconds
            m["train_epochs_total"] += base["training"].epochs
    stages = training_stages(base, ctx.stages)
    result.info["training_stages"] = stages
    m["stages_at_budget"] = sum(s["at_budget"] for s in stages)
    shared = [s.get("shared_epochs") for s in stages]
    m["train_shared_epochs"] = float("nan") if None in shared else float(sum(shared))
    return m


def _training_measurements(cost: TrainingCost, memory: PhaseMemory) -> dict[str, Any]:
    """Training cost (seconds, epochs, MACs per epoch) and memory per phase: the peak, and for the
    phases measured in this call also the footprint they started from (``mem_baseline_*``) and what
    the phase itself needed (``mem_*``, by the method ``mem_*_method`` names: counted tensor
    allocations for propagation and scoring on CPU, which do not depend on the cells run before
    it in the same process, else peak - baseline; see :mod:`bench.measure.memory`)."""
    m: dict[str, Any] = {"train_seconds": cost.seconds, "train_epochs": cost.epochs,
                         "train_macs_per_epoch": cost.macs_per_epoch}
    peaks = dict(memory.peaks)
    if cost.peak_mem_bytes is not None:  # trained outside this call: its own record, no baseline here
        peaks["training"] = cost.peak_mem_bytes
    needs = memory.increments()
    for phase, value in peaks.items():
        m[f"peak_mem_{phase}_bytes"] = value
        if phase in memory.baseline and not (phase == "training" and cost.peak_mem_bytes is not None):
            m[f"mem_baseline_{phase}_bytes"] = memory.baseline[phase]
            m[f"mem_{phase}_bytes"] = needs[phase]
            m[f"mem_{phase}_method"] = memory.need_methods[phase]
    m["peak_mem_method"] = memory.method
    m["mem_released_free_memory"] = memory.released_free_memory
    return m


def flag_reasons(spec: CellSpec, m: dict[str, Any]) -> list[str]:
    """Why a cell's achieved compression (measurements ``m``) misses its targets, if it does."""
    reasons = []
    if abs(m["emb_achieved"] - spec.emb_target) > FLAG_TOLERANCE:
        reasons.append(f"emb achieved {m['emb_achieved']:.4f} vs target {spec.emb_target:g}")
    if spec.edge_target is not None and not math.isnan(m["edge_achieved"]) and (
        abs(m["edge_achieved"] - spec.edge_target) > FLAG_TOLERANCE
    ):
        reasons.append(f"edge achieved {m['edge_achieved']:.4f} vs target {spec.edge_target:g}")
    if spec.layers_target is not None and m["layers"] != spec.layers_target:
        reasons.append(f"layers {m['layers']} vs target {spec.layers_target}")
    return reasons
