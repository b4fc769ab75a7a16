"""The method contract (``bench/contract.py``), checked for every method the registry lists: a newly
registered method (built-in or plugin) is covered without editing this file.

For each method, on the tiny clustered dataset (60 users x 40 items, the one ``tiny_root`` writes)
with a tiny CPU budget: its declaration (axes, description, knobs); one compression to a target on
every axis it declares (emb 0.5, edge 0.8 where declared; the reference gets the full model),
measured by the harness's own code (``bench.measure.size``) and held to the harness's flag
tolerance; its artifact (per-part bits, the export, a save/load round trip); and determinism under
a seed (a second run with the same seed gives identical representations).

The contract has no way to rebuild a model from its exported parts, so the artifact check compares
the parts' sizes with their shapes and dtypes and the exported tensors with the parts.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch

from bench import registry
from bench.cell import FLAG_TOLERANCE
from bench.context import BaseCheckpoints, MethodContext
from bench.contract import AXES, REFERENCE, CompressedModel, Method, Target
from bench.device import seed_everything
from bench.measure.size import achieved_compression
from methods.shared.composition_training import InfeasibleTargetError
from tests.helpers import clustered_data, small_config

#: knob values that keep a method's training to an epoch or two on the tiny dataset; a method not
#: listed here runs with its defaults (the tiny budget already bounds it)
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "lightgnn": {"candidates": 16, "kd_triples": 500, "middle_epochs": 1, "epochs_per_run": 1},
    "legcf": {"pretrain_epochs": 1, "update_epochs": 1},
    "lerg": {"pretrain_epochs": 1, "finetune_epochs": 1, "r": 16},
    "unkd": {"sample_num": 10},
}
EMB_TARGET, EDGE_TARGET = 0.5, 0.8
#: methods whose measured edge_achieved misses the edge target by more than the flag tolerance here
#: (expected failures, strict: the test reports when one starts to pass)
KNOWN_EDGE_MISSES = {
    "lightgnn": "the 'exact' schedule solves the edge rate over its graph entries including the self-loops "
                "(edge_entries_ratio 0.801 at edge 0.8), which it prunes too; the harness measures the "
                "directed user-item entries (edge_achieved 0.843 on the tiny dataset): the cell is flagged",
}
SEED = 0


def method_names() -> list[str]:
    registry.load_all()
    return sorted(registry.available_methods())


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny problems: one thread is faster on a busy machine (and keeps CPU kernels sequential)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def target_for(cls: type[Method]) -> Target:
    """A target on each axis the method declares (the reference: the full model)."""
    if cls.name == REFERENCE or not cls.axes:
        return Target(1.0)
    return Target(EMB_TARGET if "emb" in cls.axes else 1.0, EDGE_TARGET if "edge" in cls.axes else None)


def compress(name: str, seed: int = SEED) -> tuple[MethodContext, CompressedModel]:
    """``name`` compressed as the harness does it (``bench.cell``): a context with the method's own
    random streams, the base prepared first when the method uses it, then seeded ``compress``."""
    cls = registry.get_method(name)
    method = cls(**FAST_OPTIONS.get(name, {}))
    config = small_config(epochs=2, eval_every=1, patience=100, seed=seed)
    target = target_for(cls)
    cls.check_target(target, config.n_layers)
    seed_everything(seed)
    ctx = MethodContext(data=clustered_data(), device=torch.device("cpu"), seed=seed, budget=config,
                        checkpoints=BaseCheckpoints(None), log=lambda msg: None,
                        streams=cls.random_streams)
    if cls.uses_base:
        ctx.prepare_base()
        seed_everything(seed)
    return ctx, method.compress(ctx, target)


@pytest.fixture(scope="module")
def compressed() -> dict[str, Any]:
    """One compression per method, shared by the tests below (an InfeasibleTargetError is kept)."""
    cache: dict[str, Any] = {}

    def get(name: str):
        if name not in cache:
            try:
                cache[name] = compress(name)
            except InfeasibleTargetError as err:
                cache[name] = err
        return cache[name]

    return get  # type: ignore[return-value]


def feasible(compressed, name: str) -> tuple[MethodContext, CompressedModel]:
    out = compressed(name)
    if isinstance(out, InfeasibleTargetError):
        # the documented way to refuse a target no knob setting fits; nothing else to check
        assert str(out)
        pytest.skip(f"{name} reports {target_for(registry.get_method(name))} infeasible: {out}")
    return out


def test_the_registry_lists_every_built_in_method():
    assert {"lightgcn", "random-drop", "magnitude", "unkd", "dsl", "lightgnn", "legcf", "lerg"} <= set(
        method_names())
    assert set(FAST_OPTIONS) <= set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_declaration(name):
    cls = registry.get_method(name)
    assert cls.name == name
    assert cls.description.strip(), f"{name}: empty description"
    assert set(cls.axes) <= set(AXES) and len(set(cls.axes)) == len(cls.axes)
    assert bool(cls.axes) == (name != REFERENCE)  # only the reference compresses nothing
    if cls.axes:
        assert cls.target_mapping.strip(), f"{name}: no target_mapping"
    names = [k.name for k in cls.knobs]
    assert len(set(names)) == len(names), f"{name}: repeated knob names"
    for knob in cls.knobs:
        assert knob.name.isidentifier(), f"{name}.{knob.name}"
        assert knob.description.strip(), f"{name}.{knob.name}: empty description"
        # a default is a TOML-expressible value of the knob's type (None: resolved by the method,
        # e.g. lightgnn's profile-dependent knobs) ...
        assert knob.default is None or isinstance(knob.default, bool | int | float | str), knob
        if knob.choices is not None:
            assert len(knob.choices) == len(set(knob.choices)), knob
            assert knob.default is None or knob.default in knob.choices, knob
            for choice in knob.choices:  # ... and so is every choice
                assert knob.check(choice, name) == choice
        if knob.default is not None:
            # the default passes the knob's own check unchanged (type and choices)
            checked = knob.check(knob.default, name)
            assert checked == knob.default and type(checked) is type(knob.default), knob
    assert cls().options == {k.name: k.default for k in cls.knobs}
    assert cls(**FAST_OPTIONS.get(name, {})).options.keys() == set(names)


@pytest.mark.parametrize("name", method_names())
def test_compresses_to_the_target(compressed, name):
    ctx, model = feasible(compressed, name)
    data = ctx.data
    target = target_for(registry.get_method(name))
    sizes = achieved_compression(model, data.n_users, data.n_items, len(data.train), ctx.budget.dim)
    assert abs(sizes["emb_achieved"] - target.emb) <= FLAG_TOLERANCE, (name, sizes["emb_achieved"])
    users, items = model.representations()
    assert users.shape[0] == data.n_users and items.shape[0] == data.n_items
    assert users.shape[1] == items.shape[1] >= 1
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    scores = model.score(users[:5], items)
    assert scores.shape == (5, data.n_items) and torch.isfinite(scores).all()


def edge_methods() -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_EDGE_MISSES[name]))
            if name in KNOWN_EDGE_MISSES else name
            for name in method_names() if "edge" in registry.get_method(name).axes]


@pytest.mark.parametrize("name", edge_methods())
def test_compresses_edges_to_the_target(compressed, name):
    ctx, model = feasible(compressed, name)
    data = ctx.data
    target = target_for(registry.get_method(name))
    sizes = achieved_compression(model, data.n_users, data.n_items, len(data.train), ctx.budget.dim)
    assert not math.isnan(sizes["edge_achieved"])
    assert abs(sizes["edge_achieved"] - target.edge) <= FLAG_TOLERANCE, (name, sizes["edge_achieved"])


@pytest.mark.parametrize("name", method_names())
def test_artifact_bits_round_trip(compressed, name):
    ctx, model = feasible(compressed, name)
    data = ctx.data
    sizes = achieved_compression(model, data.n_users, data.n_items, len(data.train), ctx.budget.dim)
    assert model.artifact, f"{name}: an empty artifact"
    for part in model.artifact:
        width = 1 if part.tensor.dtype == torch.bool else part.tensor.element_size() * 8
        # a part's bits are its elements times its bits per element, at most the dtype's width
        # (fewer for packed integers the method declares)
        assert 1 <= part.bits_per_element <= width, (name, part.name, part.bits_per_element, width)
        assert part.numel == math.prod(part.tensor.shape)
        assert part.bits == part.numel * part.bits_per_element
    # the per-part bits add up to the measured total (parts of kind "graph" count as graph bits)
    assert sum(p.bits for p in model.artifact if p.kind != "graph") == sizes["bits"]
    assert sum(sizes[f"bits_{k}"] for k in {p.kind for p in model.artifact} - {"graph"}) == sizes["bits"]
    assert sum(p.numel for p in model.artifact if p.param) == sizes["params"]
    assert sizes["params_fp32"] == sum(p.bits for p in model.artifact if p.param) / 32
    n_table = (data.n_users + data.n_items) * ctx.budget.dim
    assert sizes["emb_achieved"] == pytest.approx(sizes["params_fp32"] / n_table)
    # the export is the parts' tensors, and it survives a save/load round trip bit for bit
    exported = model.export()
    assert list(exported) == [p.name for p in model.artifact]
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert list(loaded) == list(exported)
    for part in model.artifact:
        tensor = loaded[part.name]
        assert tensor.dtype == part.tensor.dtype and tensor.shape == part.tensor.shape
        assert torch.equal(tensor, part.tensor.detach().cpu()), (name, part.name)
        assert tensor.numel() * part.bits_per_element == part.bits


@pytest.mark.parametrize("name", method_names())
def test_deterministic_under_a_seed(compressed, name):
    _, first = feasible(compressed, name)
    _, again = compress(name)
    for a, b in zip(first.representations(), again.representations(), strict=True):
        assert torch.equal(a, b), f"{name}: two runs with seed {SEED} differ"
