"""The method contract: what a compression method declares, receives and returns.

A method is a subclass of :class:`Method` (imported, like everything a method uses from the
harness, from :mod:`bench.api`), found by the registry (:mod:`bench.registry`) under a name. It
declares

* ``axes``: which of :data:`AXES` it compresses (``emb`` embedding entries, ``edge`` edges
  used in propagation, ``layers`` propagation depth, ``bits`` numeric precision);
* ``knobs``: its hyperparameters, each with a default, a one-line description and the values it
  allows (choices or a range); ``self.options`` holds them checked, as an :class:`Options`;
* ``target_mapping``: one sentence on how a preservation :class:`Target` becomes knob values;
* ``random_streams``: the named numpy random streams it draws from ``context.rng(name)``;

and implements :meth:`Method.compress`, which gets a context (dataset, device, seed, training
budget, progress, the shared base LightGCN checkpoint; see :mod:`bench.context`) and a target,
and returns a :class:`CompressedModel`. The harness measures every returned model with the same
code (:mod:`bench.measure`), so a method never reports its own accuracy, size or speed.

A method that owns a numerical kernel (a custom autograd function, a sparse product, a fake
quantiser) may also declare :meth:`Method.device_checks`: a sequence of :class:`DeviceCheck`, each a
name and a function ``run(device, seed) -> {name: tensor}`` that builds its inputs from ``seed`` on
the CPU, moves them to ``device``, runs the kernel (forward, and backward where it has one) and
returns its outputs and gradients. ``python -m bench.perf.gpu_check`` runs every registered
method's checks on the CPU and on a CUDA device and compares each returned tensor within the
check's ``rtol``/``atol``, so a plugin's kernels are checked on a GPU exactly like the built-ins'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from bench.claims import Claim

if TYPE_CHECKING:  # pragma: no cover
    from bench.backbone.graph import NormalizedGraph

#: the name of the uncompressed reference every method is compared with (the shared base LightGCN
#: itself, registered by methods/reference.py)
REFERENCE = "lightgcn"
AXES: tuple[str, ...] = ("emb", "edge", "layers", "bits")
AXIS_DESCRIPTIONS = {
    "emb": "embedding entries stored",
    "edge": "training edges used in propagation",
    "layers": "propagation layers",
    "bits": "bits per stored value (quantisation)",
}
ARTIFACT_KINDS: tuple[str, ...] = ("values", "indices", "codebook", "assignment", "mask", "scale", "graph")
# kinds whose entries count as stored embedding parameters unless a part says otherwise
_PARAM_KINDS = frozenset({"values", "codebook"})


@dataclass(frozen=True)
class DeviceCheck:
    """A kernel a method owns, run on two devices and compared tensor by tensor.

    ``run(device, seed)`` builds its inputs deterministically from ``seed`` on the CPU (so both
    runs see identical inputs), moves them to ``device``, runs the kernel, forward and backward
    where it has one, and returns ``{name: tensor}`` (outputs and gradients). Floating-point
    tensors must agree within ``|a - b| <= atol + rtol |b|`` (``b`` the CPU result); integer and
    boolean tensors must be equal. ``description`` says what it computes, in one sentence.
    """

    name: str
    run: Callable[[torch.device, int], dict[str, torch.Tensor]]
    rtol: float = 1e-5
    atol: float = 1e-6
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a device check needs a non-empty name, got {self.name!r}")
        if not callable(self.run):
            raise ValueError(f"device check {self.name!r}: run must be callable")
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"device check {self.name!r}: rtol and atol must be >= 0")


class MethodError(ValueError):
    """A method was asked for something it cannot do (bad option, unsupported axis)."""


class UnknownOptionError(MethodError):
    """An option that the method does not declare as a knob."""


@dataclass(frozen=True)
class Target:
    """A preservation target, relative to the uncompressed LightGCN of the same budget.

    ``emb``: fraction of the uncompressed model's embedding parameters kept, ``0 < emb <= 1``.
    ``edge``: fraction of training edges used in propagation, ``0 < edge <= 1`` (None: all).
    ``layers``: number of propagation layers (None: the budget's).
    """

    emb: float = 1.0
    edge: float | None = None
    layers: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.emb, bool) or not isinstance(self.emb, int | float) or not (
            0 < float(self.emb) <= 1
        ):
            raise MethodError(f"emb target must be a number in (0, 1], got {self.emb!r}")
        if self.edge is not None and (
            isinstance(self.edge, bool) or not isinstance(self.edge, int | float)
            or not (0 < float(self.edge) <= 1)
        ):
            raise MethodError(f"edge target must be a number in (0, 1], got {self.edge!r}")
        if self.layers is not None and (
            isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0
        ):
            raise MethodError(f"layers target must be an integer >= 0, got {self.layers!r}")
        object.__setattr__(self, "emb", float(self.emb))
        if self.edge is not None:
            object.__setattr__(self, "edge", float(self.edge))

    def compressed_axes(self, base_layers: int | None = None) -> set[str]:
        """The axes this target asks to compress (an axis kept whole is not compressed)."""
        axes = set()
        if self.emb < 1:
            axes.add("emb")
        if self.edge is not None and self.edge < 1:
            axes.add("edge")
        if self.layers is not None and self.layers != base_layers:
            axes.add("layers")
        return axes

    def as_dict(self) -> dict[str, Any]:
        return {"emb": self.emb, "edge": self.edge, "layers": self.layers}


@dataclass(frozen=True)
class Knob:
    """A hyperparameter of a method: name, default, one-line description, allowed values.

    ``choices``: the only values allowed. ``min``/``max``: a numeric range, inclusive unless
    ``min_exclusive``/``max_exclusive``; ``sentinels``: values outside the range that still mean
    something (e.g. ``-1``: chosen by the method). ``type``: the value's type when the default is
    None (a default of None means "resolved by the method"; None itself is then always allowed).
    A rule that involves two knobs is the method's own (checked where it resolves its options).
    """

    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    sentinels: tuple[Any, ...] = ()
    type: type | None = None

    def check(self, value: Any, owner: str) -> Any:
        """``value`` converted to the default's type, or :class:`MethodError` naming the knob."""
        where = f"{owner}.{self.name}"
        kind = self.type if self.default is None else type(self.default)
        if kind is None or (self.default is None and value is None):
            pass
        elif kind is bool:
            if not isinstance(value, bool):
                raise MethodError(f"option {where} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise MethodError(f"option {where} must be an integer, got {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise MethodError(f"option {where} must be a finite number, got {value!r}")
            value = float(value)
        elif kind is str and not isinstance(value, str):
            raise MethodError(f"option {where} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise MethodError(f"option {where} must be one of {list(self.choices)}, got {value!r}")
        if value is not None and value not in self.sentinels and not self.in_range(value):
            raise MethodError(f"option {where} must be {self.range_text()}, got {value!r}")
        return value

    def in_range(self, value: Any) -> bool:
        """Whether ``value`` lies in the knob's ``min``/``max`` range (True without one)."""
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            return False
        return self.max is None or not (value >= self.max if self.max_exclusive else value > self.max)

    def range_text(self) -> str:
        """The range in words, e.g. ``>= 1``, ``in (0, 1]`` or ``>= 0 (or -1)``; empty without one."""
        low = None if self.min is None else ("(" if self.min_exclusive else "[", f"{self.min:g}")
        high = None if self.max is None else (f"{self.max:g}", ")" if self.max_exclusive else "]")
        if low and high:
            text = f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
        elif low:
            text = f"{'>' if self.min_exclusive else '>='} {low[1]}"
        elif high:
            text = f"{'<' if self.max_exclusive else '<='} {high[0]}"
        else:
            return ""
        if self.sentinels:
            text += f" (or {', '.join(repr(v) for v in self.sentinels)})"
        return text

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "default": self.default, "description": self.description}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.min is not None:
            d["min"] = self.min
            d["min_exclusive"] = self.min_exclusive
        if self.max is not None:
            d["max"] = self.max
            d["max_exclusive"] = self.max_exclusive
        if self.sentinels:
            d["sentinels"] = list(self.sentinels)
        if self.type is not None:
            d["type"] = self.type.__name__
        return d


class Options(Mapping[str, Any]):
    """A method's options, read as attributes (``o.update_every``) or by name (``o["update_every"]``).

    Immutable: :meth:`replace` returns a copy with some values changed (e.g. placeholders a method
    resolves against the budget), :meth:`extend` one with values of new names (e.g. a solved size);
    :meth:`as_dict` is the plain dict (in order: the knobs', then the added names). It compares
    equal to a dict with the same items.
    """

    __slots__ = ("_owner", "_values")

    def __init__(self, values: Mapping[str, Any], owner: str = "") -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._owner or 'the method'} has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"options are read-only; use replace({name}=...)")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Options({self._values!r})"

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` to existing options (an unknown name is a ``KeyError``)."""
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise KeyError(f"{self._owner or 'the method'} has no option(s) {', '.join(unknown)}")
        return Options({**self._values, **changes}, self._owner)

    def extend(self, **values: Any) -> Options:
        """A copy with values of new names added after the others (a known name is a ``KeyError``)."""
        known = sorted(set(values) & set(self._values))
        if known:
            raise KeyError(f"options {', '.join(known)} already exist; use replace()")
        return Options({**self._values, **values}, self._owner)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


@dataclass
class ArtifactPart:
    """One component of a model's deployable state.

    ``kind`` is one of :data:`ARTIFACT_KINDS`; ``bits_per_element`` defaults to the dtype's width
    (1 for a ``bool`` mask, stored as a bitmap). ``param`` says whether its entries count as stored
    embedding parameters (default: yes for ``values`` and ``codebook``, no otherwise).
    """

    name: str
    kind: str
    tensor: torch.Tensor
    bits_per_element: int | None = None
    param: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARTIFACT_KINDS:
            raise MethodError(f"artifact part {self.name!r}: unknown kind {self.kind!r}; "
                              f"choose from {ARTIFACT_KINDS}")
        if self.bits_per_element is None:
            self.bits_per_element = 1 if self.tensor.dtype == torch.bool else self.tensor.element_size() * 8
        if self.bits_per_element < 1:
            raise MethodError(f"artifact part {self.name!r}: bits_per_element must be >= 1")
        if self.param is None:
            self.param = self.kind in _PARAM_KINDS

    @property
    def numel(self) -> int:
        return int(self.tensor.numel())

    @property
    def bits(self) -> int:
        return self.numel * int(self.bits_per_element)


@dataclass
class TrainingCost:
    """What producing the model cost: wall time, epochs and multiply-adds per epoch.

    ``peak_mem_bytes`` is set only when the training happened outside the measured call (the
    reference model is the shared base checkpoint, trained once); otherwise the harness measures it.
    """

    seconds: float = 0.0
    epochs: int = 0
    macs_per_epoch: float = float("nan")
    peak_mem_bytes: int | None = None

    def add(self, other: TrainingCost) -> TrainingCost:
        """Two training stages in sequence: times and epochs add, MACs/epoch is epoch-weighted."""
        parts = [(c.epochs, c.macs_per_epoch) for c in (self, other)
                 if c.epochs > 0 and not math.isnan(c.macs_per_epoch)]
        epochs = sum(e for e, _ in parts)
        macs = sum(e * m for e, m in parts) / epochs if epochs else float("nan")
        return TrainingCost(self.seconds + other.seconds, self.epochs + other.epochs, macs,
                            self.peak_mem_bytes)


@dataclass
class CompressedModel:
    """What a method returns.

    ``module`` computes the final representations with ``propagate() -> (users, items)`` from its
    stored state (optionally ``score(user_reps, item_reps)``; the default is the dot product).
    ``graph`` is the propagation graph the module actually uses (None: no propagation) and
    ``n_layers`` its depth. ``artifact`` is the deployable state, part by part. ``settings``
    records how the method mapped the target to its knobs (e.g. the student dimension).
    ``measurements`` are extra numbers computed from the stored state by shared helpers (e.g. the
    bytes of a sparse table in each storage format, sparse-aware multiply-adds); they are stored
    beside the harness's measurements and may not replace any of them. ``graph_bits``: the bits of
    the stored propagation graph when the method stores it itself (directed entries with learned
    values, self-loops); None: the harness's symmetric edge list. ``notes``: sentences the report
    shows beside the method's results (e.g. "not comparable to the paper's numbers").
    """

    module: nn.Module
    artifact: list[ArtifactPart]
    graph: NormalizedGraph | None
    n_layers: int
    training: TrainingCost = field(default_factory=TrainingCost)
    settings: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, float] = field(default_factory=dict)
    graph_bits: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.notes, list) or not all(isinstance(n, str) and n for n in self.notes):
            raise MethodError(f"CompressedModel.notes must be a list of non-empty strings, "
                              f"got {self.notes!r}")
        names = [p.name for p in self.artifact]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise MethodError(f"artifact part names must be unique, repeated: {sorted(dup)}")

    @torch.no_grad()
    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.module.eval()
        return self.module.propagate()

    def score(self, user_reps: torch.Tensor, item_reps: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.module, "score", None)
        if fn is not None:
            return fn(user_reps, item_reps)
        return user_reps @ item_reps.T

    def export(self) -> dict[str, torch.Tensor]:
        """The deployable state: every artifact part's tensor, by name."""
        return {p.name: p.tensor.detach().cpu() for p in self.artifact}


class Method:
    """Base class of a compression method; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    axes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    target_mapping: ClassVar[str] = ""
    uses_base: ClassVar[bool] = False
    simplifications: ClassVar[tuple[str, ...]] = ()
    #: the paper's claims, checked by the report against the store (:mod:`bench.claims`)
    claims: ClassVar[tuple[Claim, ...]] = ()
    #: the numpy random streams the method draws with ``context.rng(name)``: name -> stream id. The
    #: id is part of the seed (``[seed, id, *spawn]``), so changing it changes results; a name is the
    #: same stream in every method that declares it (the registry checks).
    random_streams: ClassVar[Mapping[str, int]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = self.resolve_options(options)

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> Options:
        """Defaults overridden by ``options``, each checked by its knob (type, choices, range); an
        undeclared option is an error naming it. The config loader calls it, so a bad value fails
        before any training."""
        by_name = {k.name: k for k in cls.knobs}
        unknown = sorted(set(options) - set(by_name))
        if unknown:
            known = ", ".join(by_name) or "none"
            raise UnknownOptionError(
                f"unknown option(s) for method {cls.name!r}: {', '.join(unknown)} (known: {known})"
            )
        out = {k.name: k.default for k in cls.knobs}
        for key, value in options.items():
            out[key] = by_name[key].check(value, cls.name)
        return Options(out, cls.name)

    @classmethod
    def check_target(cls, target: Target, base_layers: int | None = None) -> None:
        """Refuse a target that compresses an axis the method does not support."""
        extra = sorted(target.compressed_axes(base_layers) - set(cls.axes))
        if extra:
            raise MethodError(
                f"method {cls.name!r} cannot compress {', '.join(extra)} "
                f"(it compresses: {', '.join(cls.axes) or 'nothing; it is the reference'}); "
                f"target was {target.as_dict()}"
            )

    def compress(self, context: Any, target: Target) -> CompressedModel:
        """The compressed model for ``target``; ``context`` is a :class:`bench.context.MethodContext`
        (typed ``Any`` here: the context depends on the contract, not the other way round)."""
        raise NotImplementedError

    @classmethod
    def device_checks(cls) -> Sequence[DeviceCheck]:
        """The method's own kernels to compare between the CPU and a GPU (default: none); see
        :class:`DeviceCheck`. Checks shared by several methods keep one name and one function."""
        return ()

    @classmethod
    def info(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "axes": list(cls.axes),
            "description": cls.description,
            "knobs": [k.as_dict() for k in cls.knobs],
            "target_mapping": cls.target_mapping,
            "uses_base": cls.uses_base,
            "simplifications": list(cls.simplifications),
        }
