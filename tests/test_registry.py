"""The method registry: built-ins, the contract's checks, and a third-party plugin via entry points."""

from __future__ import annotations

import json

import pytest
import torch

from bench import registry
from bench.cli import main
from bench.config import load_config
from bench.contract import Knob, Method, MethodError, Target, UnknownOptionError
from bench.registry import UnknownMethodError, get_method, register_method
from bench.runner import run_matrix
from tests.helpers import tiny_config


@pytest.fixture
def clean_registry(monkeypatch):
    registry.load_all()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))


def test_builtin_reference_is_registered():
    cls = get_method("lightgcn")
    assert cls.name == "lightgcn"
    assert cls.axes == () and cls.uses_base
    info = {r["name"]: r for r in registry.describe_methods()}["lightgcn"]
    assert info["source"] == "methods.reference.LightGCNReference"
    assert set(info) >= {"name", "axes", "description", "knobs"}


def test_register_and_resolve_options(clean_registry):
    @register_method("toy-local")
    class Toy(Method):
        axes = ("emb", "edge")
        description = "a toy"
        knobs = (Knob("rate", 0.5, "a rate"), Knob("mode", "a", "a mode", choices=("a", "b")),
                 Knob("steps", 10, "steps"), Knob("flag", False, "a flag"))

    assert get_method("toy-local") is Toy and Toy.name == "toy-local"
    assert Toy(rate=1).options == {"rate": 1.0, "mode": "a", "steps": 10, "flag": False}
    with pytest.raises(UnknownOptionError, match=r"unknown option\(s\) for method 'toy-local': rte"):
        Toy(rte=0.1)
    with pytest.raises(MethodError, match=r"toy-local.mode must be one of \['a', 'b'\]"):
        Toy(mode="c")
    with pytest.raises(MethodError, match=r"toy-local.steps must be an integer"):
        Toy(steps=1.5)
    with pytest.raises(MethodError, match=r"toy-local.flag must be true or false"):
        Toy(flag=1)
    with pytest.raises(MethodError, match=r"toy-local.rate must be a finite number"):
        Toy(rate="x")
    Toy.check_target(Target(0.5, 0.5), base_layers=2)
    with pytest.raises(MethodError, match="cannot compress layers"):
        Toy.check_target(Target(0.5, None, 1), base_layers=2)
    Toy.check_target(Target(0.5, None, 2), base_layers=2)  # the budget's depth is not compression


def test_registration_errors(clean_registry):
    class NoDescription(Method):
        axes = ("emb",)

    with pytest.raises(MethodError, match="needs a one-line description"):
        register_method("nodesc")(NoDescription)

    class BadAxis(Method):
        axes = ("rows",)
        description = "x"

    with pytest.raises(MethodError, match=r"unknown axes \['rows'\]"):
        register_method("badaxis")(BadAxis)
    with pytest.raises(MethodError, match="invalid method name"):
        register_method("Bad Name")(BadAxis)

    class Other(Method):
        description = "x"

    with pytest.raises(MethodError, match="already registered"):
        register_method("lightgcn")(Other)


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(UnknownMethodError, match=r"unknown method 'nope'; available: .*lightgcn"):
        get_method("nope")


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_target_range(bad):
    with pytest.raises(MethodError, match="emb target must be a number in"):
        Target(bad)


def test_plugin_is_discovered_through_its_entry_point(toy_plugin, capsys):
    methods = registry.available_methods()
    assert {"toy-truncate", "toy-raise", "toy-nan", "toy-oom"} <= set(methods)
    assert registry.method_source("toy-truncate").startswith(
        "entry point toy-truncate = recshrink_toyplugin:TruncateBase (recshrink-toyplugin 0.1)")
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    toy = rows["toy-truncate"]
    assert toy["axes"] == ["emb"]
    assert toy["knobs"] == [{
        "name": "slack", "default": 0.0,
        "description": "extra fraction of dimensions kept, to miss the target on purpose"}]
    assert main(["methods"]) == 0
    assert "toy-truncate: keeps the first dims" in capsys.readouterr().out


def test_plugin_runs_through_the_matrix(toy_plugin, tiny_root, tmp_path):
    cfg = load_config(tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn", "toy-truncate"]\n'
                                             "emb_targets = [0.5, 0.25]\nseeds = [0]\n"))
    summary = run_matrix(cfg, tmp_path / "out", progress=False, log=lambda m: None)
    assert (summary.total, summary.ok, summary.failed) == (3, 3, 0)
    from bench.store import ResultStore

    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        cells = {(c["method"], c["emb_target"]): c for c in store.cells()}
    ref = cells[("lightgcn", 1.0)]
    half = cells[("toy-truncate", 0.5)]
    # the plugin's own settings, nothing else (the harness's timing notes are the report's to make)
    assert half["settings"] == {"dims": 4}
    assert half["measurements"]["emb_achieved"] == 0.5
    assert cells[("toy-truncate", 0.25)]["measurements"]["params"] == 2 * (60 + 40)
    # the plugin starts from the very base checkpoint the reference is
    assert half["base_checkpoint"] == ref["base_checkpoint"] is not None
    assert not half["flagged"]
    assert torch.__version__  # environment recorded
    assert half["environment"]["versions"]["torch"]



def test_random_streams_are_declared_by_the_methods(clean_registry):
    import numpy as np

    from tests.helpers import method_context

    assert registry.random_streams() == {"edge_mask": 1, "emb_mask": 2, "kd_pairs": 3, "dsl": 4,
                                         "lightgnn": 5, "legcf": 6, "lerg": 7}
    assert get_method("dsl").random_streams == {"emb_mask": 2, "dsl": 4}

    class Clash(Method):
        description = "x"
        random_streams = {"dsl": 9}  # noqa: RUF012

    with pytest.raises(MethodError, match="stream 'dsl' has id 9, but method 'dsl' declares it with id 4"):
        register_method("clash")(Clash)

    class SameId(Method):
        description = "x"
        random_streams = {"mine": 4}  # noqa: RUF012

    with pytest.raises(MethodError, match=r"random stream id 4 \('mine'\) is already stream 'dsl'"):
        register_method("same-id")(SameId)

    ctx = method_context(seed=3)  # no method: every declared stream
    assert ctx.rng("emb_mask").integers(2**30) == np.random.default_rng([3, 2]).integers(2**30)
    ctx.streams = get_method("random-drop").random_streams  # what a cell gives its method
    assert ctx.rng("edge_mask", 5).integers(2**30) == np.random.default_rng([3, 1, 5]).integers(2**30)
    with pytest.raises(KeyError, match="unknown random stream 'dsl'"):
        ctx.rng("dsl")


def test_no_method_at_all_says_to_install_the_package(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_SOURCES", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [])
    with pytest.raises(registry.NoMethodsError, match=r"pip install -e \."):
        registry.available_methods()


def test_builtins_come_from_recshrinks_own_entry_points():
    from importlib import metadata

    eps = {ep.name: ep for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)
           if ep.dist is not None and ep.dist.name == "recshrink"}
    assert set(eps) == {"lightgcn", "random-drop", "magnitude", "unkd", "dsl", "lightgnn", "legcf", "lerg"}
    for name, ep in eps.items():
        assert ep.load() is get_method(name)


def test_an_entry_point_may_name_a_module_that_registers_by_import(clean_registry, monkeypatch):
    from importlib import metadata

    real = metadata.entry_points
    extra = metadata.EntryPoint("by-import", "tests.plugin_by_import", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [*real(group=group), extra])
    registry.load_all(reload_plugins=True)
    assert get_method("toy-by-import").description == "registered by importing its module"
    assert registry.method_source("toy-by-import") == "tests.plugin_by_import.ByImport"
    assert "lightgcn" in registry.available_methods()
