"""Matrix configuration files (``recshrink run CONFIG.toml``): parsing, validation, expansion.

Schema (README, "Matrix configuration"):

.. code-block:: toml

    name = "my-matrix"             # required: results go to reports/<name>/
    description = "..."            # optional
    datasets = ["ml-100k"]         # required: catalog names
    methods = ["lightgcn", "dsl"]  # required: registered names, "all", or a table (below)
    emb_targets = [0.5, 0.2]       # fractions of embedding parameters kept, 0 < x <= 1
    edge_targets = [1.0, 0.5]      # optional: fractions of training edges (crossed with emb_targets)
    # targets = [[0.5, 0.8], {emb = 0.2, edge = 0.5, layers = 1}]   # or explicit targets
    seeds = [0, 1, 2]              # required
    device = "auto"                # optional: auto, cpu, cuda, cuda:N
    data_dir = "datasets"          # optional: the data root
    workers = 2                    # optional: cells at once in local worker processes when the
                                   # command line names no executor (default 1: in-process)

    [budget]                       # optional: the shared training budget (bench.training.TrainConfig)
    epochs = 100
    [measure]                      # optional: latency repeats, batches, FLOPs on/off
    latency_repeats = 20

TOML cannot hold both ``methods = [...]`` and ``[methods.<name>]``; to give a method options, write
``methods`` as a table, one sub-table per method (an empty one keeps the defaults):

.. code-block:: toml

    [methods.lightgcn]
    [methods.dsl]
    update_interval = 100          # a knob of the method (``recshrink methods`` lists them)
    emb_targets = [0.5]            # per-method targets (also edge_targets, targets)
    [methods.dsl.budget]           # per-method budget overrides (not dim or n_layers: every
    epochs = 200                   # method of a config trains the model shape of [budget])

A method that compresses nothing (the ``lightgcn`` reference) runs once per dataset and seed at the
full target, whatever the targets. Every error names the offending key and happens before any
training.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.cell import DEFAULT_MEASURE, MODEL_SHAPE_KEYS, CellSpec
from bench.contract import REFERENCE, MethodError, Target
from bench.registry import available_methods, get_method
from bench.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = ("name", "description", "datasets", "methods", "emb_targets", "edge_targets", "targets",
            "seeds", "device", "data_dir", "budget", "measure", "workers")
METHOD_RESERVED = ("budget", "emb_targets", "edge_targets", "targets")
BUDGET_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", "device"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
QUICK = "quick"


class ConfigError(ValueError):
    """A matrix configuration is invalid; the message names the file and the key."""


@dataclass
class MethodEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] | None = None


@dataclass
class MatrixConfig:
    name: str
    datasets: list[str]
    methods: list[MethodEntry]
    targets: list[Target]
    seeds: list[int]
    budget: dict[str, Any]
    measure: dict[str, Any]
    device: str = "auto"
    data_dir: str | None = None
    description: str = ""
    source: str = "<config>"
    workers: int = 1
    text: str = ""

    def check_dataset(self, data: Any) -> None:
        """The budget values that depend on a dataset (``ks`` at most its item count), for the shared
        budget and every method's override; a :class:`ConfigError` names the key."""
        budgets = [("budget", self.budget)] + [(f"methods.{e.name}.budget", {**self.budget, **e.budget})
                                               for e in self.methods if "ks" in e.budget]
        for key, budget in budgets:
            try:
                TrainConfig(**{**budget, "ks": tuple(budget.get("ks", TrainConfig.ks))}).check_against(data)
            except ValueError as exc:
                raise _err(self.source, f"{key}.ks", str(exc)) from None

    def cells(self, device: str, checksums: dict[str, str], code_version: str,
              checkpoint_dir: str | None = None, progress: bool = False) -> list[CellSpec]:
        """The matrix, one :class:`CellSpec` per (dataset, method, target, seed), without duplicates."""
        out: dict[str, CellSpec] = {}
        for dataset, entry in itertools.product(self.datasets, self.methods):
            cls = get_method(entry.name)
            targets = [Target()] if not cls.axes else (entry.targets or self.targets)
            for target, seed in itertools.product(targets, self.seeds):
                spec = CellSpec(
                    dataset=dataset, method=entry.name, seed=seed, emb_target=target.emb,
                    edge_target=target.edge, layers_target=target.layers, options=dict(entry.options),
                    budget={**self.budget, **entry.budget}, measure=dict(self.measure), device=device,
                    dataset_checksum=checksums.get(dataset, ""), code_version=code_version, run=self.name,
                    data_dir=self.data_dir, checkpoint_dir=checkpoint_dir, progress=progress,
                )
                out.setdefault(spec.key, spec)
        # cells sharing a base checkpoint run next to each other
        return sorted(out.values(), key=lambda c: (c.dataset, c.seed, c.method != REFERENCE,
                                                   c.method, -c.emb_target))


def _err(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {msg}")


def _number_list(value: Any, source: str, key: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise _err(source, key, f"must be a non-empty list of numbers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _err(source, key, f"must contain numbers only, got {v!r}")
    return [float(v) for v in value]


def _target(value: Any, source: str, key: str) -> Target:
    try:
        if isinstance(value, list):
            if not 1 <= len(value) <= 3:
                raise _err(source, key, f"a target list is [emb], [emb, edge] or [emb, edge, layers], "
                                        f"got {value!r}")
            return Target(*value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"emb", "edge", "layers"})
            if unknown:
                raise _err(source, key, f"unknown target key(s) {unknown}; use emb, edge, layers")
            return Target(**value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Target(value)
    except MethodError as exc:
        raise _err(source, key, str(exc)) from None
    raise _err(source, key, f"a target is a number, a list [emb, edge] or a table, got {value!r}")


def _targets(table: dict[str, Any], source: str, prefix: str, required: bool) -> list[Target] | None:
    has_emb, has_edge, has_explicit = ("emb_targets" in table, "edge_targets" in table,
                                       "targets" in table)
    if has_explicit and (has_emb or has_edge):
        raise _err(source, f"{prefix}targets", "give either targets or emb_targets/edge_targets, not both")
    if has_explicit:
        raw = table["targets"]
        if not isinstance(raw, list) or not raw:
            raise _err(source, f"{prefix}targets", f"must be a non-empty list, got {raw!r}")
        return [_target(v, source, f"{prefix}targets[{i}]") for i, v in enumerate(raw)]
    if has_edge and not has_emb:
        raise _err(source, f"{prefix}edge_targets", "needs emb_targets too")
    if not has_emb:
        if required:
            raise _err(source, "emb_targets", "missing (or give explicit targets)")
        return None
    embs = _number_list(table["emb_targets"], source, f"{prefix}emb_targets")
    edges: list[float | None] = (
        list(_number_list(table["edge_targets"], source, f"{prefix}edge_targets")) if has_edge else [None]
    )
    out = []
    for emb, edge in itertools.product(embs, edges):
        try:
            out.append(Target(emb, edge))
        except MethodError as exc:
            key = "emb_targets" if not (0 < emb <= 1) else "edge_targets"
            raise _err(source, f"{prefix}{key}", str(exc)) from None
    return out


def _budget(value: Any, source: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(source, key, f"must be a table, got {value!r}")
    unknown = sorted(set(value) - set(BUDGET_KEYS))
    if unknown:
        hint = " (seeds and device are top-level keys)" if {"seed", "device"} & set(unknown) else ""
        raise _err(source, f"{key}.{unknown[0]}",
                   f"unknown budget option{hint}; known: {', '.join(BUDGET_KEYS)}")
    out = dict(value)
    if "ks" in out:
        out["ks"] = list(out["ks"]) if isinstance(out["ks"], list) else out["ks"]
    try:
        cfg = TrainConfig(**{**out, "ks": tuple(out["ks"]) if "ks" in out else TrainConfig.ks})
        cfg.validate()
        for f in dataclasses.fields(TrainConfig):
            if f.name in out and f.name != "ks":
                default = getattr(TrainConfig, f.name)
                v = out[f.name]
                if isinstance(default, int | float) and (
                    isinstance(v, bool) or not isinstance(v, int | float)
                ):
                    raise ValueError(f"{f.name} must be a number, got {v!r}")
                if isinstance(default, str) and not isinstance(v, str):
                    raise ValueError(f"{f.name} must be a string, got {v!r}")
    except (TypeError, ValueError) as exc:
        raise _err(source, key, str(exc)) from None
    return out


def _measure(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(source, "measure", f"must be a table, got {value!r}")
    unknown = sorted(set(value) - set(DEFAULT_MEASURE))
    if unknown:
        raise _err(source, f"measure.{unknown[0]}", f"unknown option; known: {', '.join(DEFAULT_MEASURE)}")
    out = {**DEFAULT_MEASURE, **value}
    for k in ("flops", "latency"):
        if not isinstance(out[k], bool):
            raise _err(source, f"measure.{k}", "must be true or false")
    for k in ("latency_warmup", "latency_repeats", "flops_batch_users"):
        v = out[k]
        low = 0 if k == "latency_warmup" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _err(source, f"measure.{k}", f"must be an integer >= {low}, got {v!r}")
    b = out["latency_batches"]
    if not isinstance(b, list) or not b or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                                 for x in b):
        raise _err(source, "measure.latency_batches", f"must be a list of positive integers, got {b!r}")
    return out


def _methods(value: Any, source: str) -> list[MethodEntry]:
    if value == "all":
        return [MethodEntry(n) for n in available_methods()]
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise _err(source, "methods", f"must be a non-empty list of method names, got {value!r}")
        entries = [MethodEntry(v) for v in value]
    elif isinstance(value, dict):
        if not value:
            raise _err(source, "methods", "is empty")
        entries = []
        for name, table in value.items():
            if not isinstance(table, dict):
                raise _err(source, f"methods.{name}", f"must be a table of options, got {table!r}")
            prefix = f"methods.{name}."
            entry = MethodEntry(name, {k: v for k, v in table.items() if k not in METHOD_RESERVED})
            if "budget" in table:
                entry.budget = _budget(table["budget"], source, f"methods.{name}.budget")
                shaped = [k for k in MODEL_SHAPE_KEYS if k in entry.budget]
                if shaped:
                    raise _err(source, f"methods.{name}.budget.{shaped[0]}",
                               "a method cannot change the model's shape: every method of a config "
                               "trains the [budget]'s dim and n_layers, so that its cells compare with "
                               "the reference's; put another shape in another config and store")
            entry.targets = _targets(table, source, prefix, required=False)
            entries.append(entry)
    else:
        raise _err(source, "methods", f"must be a list of names, \"all\" or a table, got {value!r}")
    seen = set()
    for e in entries:
        if e.name in seen:
            raise _err(source, "methods", f"method {e.name!r} is listed twice")
        seen.add(e.name)
        try:
            cls = get_method(e.name)
            cls.resolve_options(e.options)
        except MethodError as exc:
            raise _err(source, f"methods.{e.name}", str(exc)) from None
    return entries


def parse_config(table: dict[str, Any], source: str = "<config>", text: str = "") -> MatrixConfig:
    """Validate a parsed TOML table; every error names the key (see the module docstring)."""
    from bench.data.catalog import CatalogError, data_root, get_spec

    unknown = sorted(set(table) - set(TOP_KEYS))
    if unknown:
        raise _err(source, unknown[0], f"unknown key; known: {', '.join(TOP_KEYS)}")
    for key in ("name", "datasets", "methods", "seeds"):
        if key not in table:
            raise _err(source, key, "missing")
    name = table["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(source, "name", f"must be a simple name (letters, digits, '-', '_', '.'), got {name!r}")
    datasets = table["datasets"]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise _err(source, "datasets", f"must be a non-empty list of dataset names, got {datasets!r}")
    data_dir = table.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise _err(source, "data_dir", f"must be a path string, got {data_dir!r}")
    root = data_root(data_dir)
    for d in datasets:
        try:
            get_spec(d, root)
        except CatalogError as exc:
            raise _err(source, "datasets", str(exc)) from None
    seeds = table["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise _err(source, "seeds", f"must be a non-empty list of integers >= 0, got {table['seeds']!r}")
    device = table.get("device", "auto")
    if not isinstance(device, str) or not re.match(r"^(auto|cpu|cuda(:\d+)?)$", device):
        raise _err(source, "device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    workers = table.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise _err(source, "workers", f"must be an integer >= 1, got {workers!r}")
    budget = _budget(table.get("budget", {}), source, "budget")
    measure = _measure(table.get("measure", {}), source)
    methods = _methods(table["methods"], source)
    targets = _targets(table, source, "", required=True) or []
    base_layers = budget.get("n_layers", TrainConfig.n_layers)
    for entry in methods:
        cls = get_method(entry.name)
        if not cls.axes:
            continue
        layers = entry.budget.get("n_layers", base_layers)
        for t in entry.targets or targets:
            try:
                cls.check_target(t, layers)
            except MethodError as exc:
                where = f"methods.{entry.name}" if entry.targets else "targets"
                raise _err(source, where, str(exc)) from None
    return MatrixConfig(
        name=name, datasets=list(dict.fromkeys(datasets)), methods=methods, targets=targets,
        seeds=list(dict.fromkeys(seeds)), budget=budget, measure=measure, device=device,
        data_dir=data_dir, description=str(table.get("description", "")), source=source, text=text,
        workers=workers,
    )


def load_config(path: str | Path | None) -> MatrixConfig:
    """Read and validate a config file; ``None`` (or ``"quick"``) gives the built-in quick matrix."""
    if path is None or str(path) == QUICK:
        text = resources.files("bench").joinpath("configs/quick.toml").read_text(encoding="utf-8")
        source = "quick (built-in)"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        source = str(p)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(table, source, text)
