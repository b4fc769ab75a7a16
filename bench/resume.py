"""Epoch checkpoints: a training run that is killed resumes from its last saved epoch.

:func:`bench.training.fit_bpr` given an :class:`EpochCheckpoint` saves, at the end of an epoch (at
most every ``every_seconds``, and always after the last epoch), everything the rest of the run
depends on:

* the model's and the optimiser's states, the epoch's sampling generator, the random generators
  the model keeps as attributes (:func:`generator_states`), the global torch, numpy and Python
  random states;
* the loop's position (epoch, optimiser steps, epoch times, history, wall seconds so far) and the
  early-stopping state (best value, epoch, metrics and model state, validations since);
* every hook's :meth:`~bench.training.TrainHook.state_dict` (masks, schedules, its own random
  generators).

A rerun of the same training (same identity: dataset fingerprint, configuration, starting state,
hooks; see :func:`run_identity`) loads it and continues from the next epoch, and ends with the
same model and metrics as an uninterrupted run at the same seed. The file holds the payload's
sha256: a truncated or altered file, or one written for another run, is ignored (the reason is
logged) and training starts over. Files are written atomically, so a kill while saving leaves
the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.files import write_atomically

FORMAT_VERSION = 1
DEFAULT_EVERY_SECONDS = 60.0


def random_states() -> dict[str, Any]:
    """The global random states a run may draw from: torch (CPU and CUDA), numpy, Python."""
    # numpy's legacy global state: seed_everything seeds it, and code outside ours may draw from it
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": np.random.get_state(),  # noqa: NPY002
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`random_states` returned."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _generators(model: Any) -> dict[str, Any]:
    """The random generators a model keeps as attributes of itself or its submodules (e.g. a
    distillation objective drawing its own triples), by attribute path."""
    found: dict[str, Any] = {}
    modules = model.named_modules() if isinstance(model, torch.nn.Module) else [("", model)]
    for prefix, module in modules:
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator | np.random.Generator):
                found[f"{prefix}.{attr}" if prefix else attr] = value
    return found


def generator_states(model: Any) -> dict[str, Any]:
    """The states of :func:`_generators`."""
    return {k: g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
            for k, g in _generators(model).items()}


def generators_digest(model: Any) -> str:
    """sha256 of :func:`generator_states` (the bytes of each state, not its pickle, which varies)."""
    h = hashlib.sha256()
    for name, state in sorted(generator_states(model).items()):
        h.update(name.encode())
        h.update(state.numpy().tobytes() if isinstance(state, torch.Tensor)
                 else json.dumps(state, sort_keys=True, default=str).encode())
    return h.hexdigest()


def set_generator_states(model: Any, states: Mapping[str, Any]) -> None:
    """Restore what :func:`generator_states` returned (the same model, built again)."""
    gens = _generators(model)
    if set(gens) != set(states):
        raise ValueError(f"the model's generators {sorted(gens)} differ from the checkpoint's "
                         f"{sorted(states)}")
    for k, g in gens.items():
        if isinstance(g, torch.Generator):
            g.set_state(states[k])
        else:
            g.bit_generator.state = states[k]


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values (identifies a starting point)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_identity(data_fingerprint: str, config: Mapping[str, Any], model_state: Mapping[str, torch.Tensor],
                 hooks: list[Any], extra: Mapping[str, Any] | None = None) -> str:
    """A digest of what defines a training run: the dataset, the configuration, the model's state
    at the start (so a run after a different pruning is another run), the hooks' classes and
    ``extra``."""
    blob = json.dumps({"data": data_fingerprint, "config": dict(config),
                       "start": state_digest(model_state),
                       "hooks": [f"{type(h).__module__}.{type(h).__qualname__}" for h in hooks],
                       "extra": dict(extra or {}), "format": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class EpochCheckpoint:
    """Where a training run keeps its epoch checkpoint, and how often it saves.

    The file is ``directory/<name>-<identity>.pt``: :func:`bench.training.fit_bpr` binds the run's
    identity (:func:`run_identity`) before it loads or saves, so two different runs never share a
    file and a rerun of the same run finds its own. ``every_seconds``: the least wall time between
    two saves (0: every epoch); the last epoch is always saved. ``log`` receives one line when a
    checkpoint is resumed or ignored.
    """

    def __init__(self, directory: Path | str, name: str, every_seconds: float = DEFAULT_EVERY_SECONDS,
                 log: Callable[[str], None] | None = None) -> None:
        if every_seconds < 0:
            raise ValueError(f"every_seconds must be >= 0, got {every_seconds}")
        self.directory, self.name = Path(directory), name
        self.every_seconds = every_seconds
        self.log = log
        self.identity: str | None = None
        self._last_save = time.monotonic()
        self.saves = 0
        self.failed = False

    def bind(self, identity: str) -> None:
        """Set the run's identity (which names the file)."""
        self.identity = identity

    @property
    def path(self) -> Path:
        if self.identity is None:
            raise RuntimeError("an epoch checkpoint's path is known once the run's identity is bound")
        return self.directory / f"{self.name}-{self.identity[:24]}.pt"

    def due(self, final: bool) -> bool:
        """Whether the epoch that just ended should be saved."""
        return final or time.monotonic() - self._last_save >= self.every_seconds

    def save(self, payload: dict[str, Any]) -> None:
        """Write ``payload`` (torch-serialisable) with its sha256 and this run's identity.

        A checkpoint only saves time later, so a failed write (a full disk) does not stop training:
        the reason is logged once, the partial file removed, and this run saves no more checkpoints.
        """
        if self.failed:
            return
        try:
            buf = io.BytesIO()
            torch.save(payload, buf)
            body = buf.getvalue()
            blob = {"format": FORMAT_VERSION, "identity": self.identity,
                    "sha256": hashlib.sha256(body).hexdigest(), "payload": body}
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, lambda tmp: torch.save(blob, tmp))
        except Exception as exc:
            self.failed = True
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if empty
            self.say(f"could not save the epoch checkpoint {self.path.name} ({type(exc).__name__}: {exc}); "
                     "training goes on without checkpoints")
            return
        self._last_save = time.monotonic()
        self.saves += 1

    def load(self) -> dict[str, Any] | None:
        """The saved payload of this run, or None (no file, or one that is not usable: logged)."""
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            if blob.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {blob.get('format')!r}, expected {FORMAT_VERSION}")
            if blob.get("identity") != self.identity:
                raise ValueError("it was written by another training run (identity differs)")
            body = blob["payload"]
            if hashlib.sha256(body).hexdigest() != blob["sha256"]:
                raise ValueError("its sha256 does not match its content")
            payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
        except Exception as exc:
            self.say(f"epoch checkpoint {self.path} not used: {type(exc).__name__}: {exc}; training from "
                      "the start")
            return None
        self.say(f"resuming training from epoch {payload['epoch']} ({self.path.name})")
        return payload

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
