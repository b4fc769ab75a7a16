"""Knob ranges, the typed options object and the cache keys of method stages (``bench/contract.py``,
``bench/context.py``).

A knob's range is checked when the method is constructed and when a matrix config is loaded
(``Method.resolve_options``), with an error that names the option; ``Options`` reads options as
attributes and stays a mapping equal to the plain dict; a cached stage's key follows every
result-relevant field of the :class:`TrainConfig` it trains with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from bench import registry
from bench.config import ConfigError, load_config
from bench.context import BaseCheckpoints
from bench.contract import Knob, Method, MethodError, Options
from bench.training import TrainConfig
from tests.helpers import clustered_data, method_context, small_config, tiny_config

# --- Knob ----------------------------------------------------------------------------------------


def test_a_range_is_inclusive_unless_told_otherwise():
    knob = Knob("rate", 0.5, "a rate", min=0, max=1, min_exclusive=True)
    assert knob.check(1, "m") == 1.0 and knob.check(0.25, "m") == 0.25
    with pytest.raises(MethodError, match=r"^option m\.rate must be in \(0, 1\], got 0\.0$"):
        knob.check(0, "m")
    with pytest.raises(MethodError, match=r"^option m\.rate must be in \(0, 1\], got 1\.5$"):
        knob.check(1.5, "m")
    steps = Knob("steps", 1, "steps", min=1)
    assert steps.check(7, "m") == 7
    with pytest.raises(MethodError, match=r"^option m\.steps must be >= 1, got 0$"):
        steps.check(0, "m")
    below = Knob("x", 0.0, "x", max=2, max_exclusive=True)
    with pytest.raises(MethodError, match=r"must be < 2, got 2\.0"):
        below.check(2, "m")


def test_a_sentinel_is_the_only_value_allowed_outside_the_range():
    knob = Knob("protect", -1, "entries; -1: chosen on validation", min=0, sentinels=(-1,))
    assert knob.check(-1, "m") == -1 and knob.check(0, "m") == 0 and knob.check(3, "m") == 3
    for bad in (-2, -7):
        with pytest.raises(MethodError, match=rf"^option m\.protect must be >= 0 \(or -1\), got {bad}$"):
            knob.check(bad, "m")


def test_a_knob_resolved_later_has_a_type_and_a_range_and_accepts_none():
    knob = Knob("epochs", None, "epochs (default: from the profile)", type=int, min=1)
    assert knob.check(None, "m") is None and knob.check(3, "m") == 3
    with pytest.raises(MethodError, match=r"option m\.epochs must be an integer, got 2\.5"):
        knob.check(2.5, "m")
    with pytest.raises(MethodError, match=r"option m\.epochs must be >= 1, got 0"):
        knob.check(0, "m")
    lr = Knob("lr", None, "lr", type=float, min=0)
    assert lr.check(1, "m") == 1.0 and type(lr.check(1, "m")) is float
    flag = Knob("gate", None, "gate", (True, False), type=bool)
    with pytest.raises(MethodError, match=r"option m\.gate must be true or false, got 1"):
        flag.check(1, "m")


def test_as_dict_adds_the_range_and_keeps_the_former_keys():
    plain = Knob("mode", "a", "the mode", ("a", "b"))
    assert plain.as_dict() == {"name": "mode", "default": "a", "description": "the mode",
                               "choices": ["a", "b"]}
    ranged = Knob("protect", -1, "entries", min=0, sentinels=(-1,)).as_dict()
    assert ranged == {"name": "protect", "default": -1, "description": "entries", "min": 0,
                      "min_exclusive": False, "sentinels": [-1]}
    profile = Knob("rate", None, "rate", type=float, min=0, max=1, max_exclusive=True).as_dict()
    assert profile["type"] == "float" and profile["max"] == 1 and profile["max_exclusive"] is True
    json.dumps(ranged), json.dumps(profile)


# --- every built-in method: ranges checked at construction -----------------------------------------


def _outside(knob: Knob) -> list:
    """Values just outside ``knob``'s range (and not one of its sentinels)."""
    kind = knob.type if knob.default is None else type(knob.default)
    out = []
    if knob.min is not None:
        step = 1 if kind is int else 0.5
        out.append(knob.min if knob.min_exclusive else knob.min - step)
        out.append(knob.min - 10 * step)
    if knob.max is not None:
        out.append(knob.max if knob.max_exclusive else knob.max + (1 if kind is int else 0.5))
    out = [v for v in out if v not in knob.sentinels]
    return [int(v) if kind is int else float(v) for v in out]


def ranged_knobs() -> list[tuple[str, str]]:
    registry.load_all()
    return [(name, k.name) for name in sorted(registry.available_methods())
            for k in registry.get_method(name).knobs if k.min is not None or k.max is not None]


def test_the_ranges_the_methods_used_to_check_themselves_are_declared():
    declared = set(ranged_knobs())
    assert {("legcf", "update_every"), ("legcf", "chunk"), ("legcf", "w_star"), ("lerg", "t"),
            ("lerg", "retention"), ("lightgnn", "epochs_per_run"), ("lightgnn", "closure_sample"),
            ("lightgnn", "middle_lr"), ("dsl", "update_ratio"), ("dsl", "eta_min"), ("unkd", "mu"),
            ("unkd", "max_candidates"), ("magnitude", "protect")} <= declared


@pytest.mark.parametrize(("method", "knob_name"), ranged_knobs())
def test_a_value_outside_a_knob_range_fails_at_construction_naming_the_option(method, knob_name):
    cls = registry.get_method(method)
    knob = next(k for k in cls.knobs if k.name == knob_name)
    bad_values = _outside(knob)
    assert bad_values
    for bad in bad_values:
        pattern = rf"^option {method}\.{knob_name} must be {knob.range_text()}"
        with pytest.raises(MethodError, match=pattern.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            cls(**{knob_name: bad})
        with pytest.raises(MethodError, match=rf"option {method}\.{knob_name} must be"):
            cls.resolve_options({knob_name: bad})
    if knob.default is not None:  # the default lies in the range
        assert knob.in_range(knob.default) or knob.default in knob.sentinels


@pytest.mark.parametrize(("method", "options", "message"), [
    ("dsl", {"update_ratio": -3}, r"option dsl\.update_ratio must be in \[0, 1\], got -3"),
    ("legcf", {"update_every": 0}, r"option legcf\.update_every must be >= 1, got 0"),
    ("magnitude", {"protect": -7}, r"option magnitude\.protect must be >= 0 \(or -1\), got -7"),
    ("lightgnn", {"middle_epochs": 0}, r"option lightgnn\.middle_epochs must be >= 1, got 0"),
    ("lightgnn", {"teacher_layers": 1.5}, r"option lightgnn\.teacher_layers must be an integer"),
    ("lerg", {"retention": 1.2}, r"option lerg\.retention must be in \[0, 1\], got 1\.2"),
    ("unkd", {"mu": 0}, r"option unkd\.mu must be > 0, got 0\.0"),
])
def test_the_reported_cases_fail_when_the_method_is_constructed(method, options, message):
    with pytest.raises(MethodError, match=message):
        registry.get_method(method)(**options)


def test_magnitude_protect_minus_one_is_the_documented_sentinel():
    cls = registry.get_method("magnitude")
    assert cls(protect=-1).options.protect == -1 and cls(protect=0).options.protect == 0


def test_cross_knob_rules_stay_with_the_method():
    """``w_star = 1`` is in the knob's range, but only valid with ``t = 1``: the method checks it."""
    legcf = registry.get_method("legcf")
    ctx = method_context(0)
    with pytest.raises(MethodError, match=r"legcf\.w_star must lie in \(0, 1\) \(1 only with t = 1\)"):
        legcf(w_star=1.0, t=2).resolved(ctx, _target(0.5))
    assert legcf(w_star=1.0, t=1, c=8).resolved(ctx, _target(0.5)).w_star == 1.0


def _target(emb: float):
    from bench.contract import Target

    return Target(emb)


def test_the_lightgnn_profiles_satisfy_the_knobs_they_fill():
    from methods.lightgnn import PROFILES, LightGNN

    knobs = {k.name: k for k in LightGNN.knobs}
    for profile in PROFILES.values():
        for name, value in profile.items():
            assert knobs[name].check(value, "lightgnn") == value


#: the forms of the "range" cell of a knob table in docs/methods/*.md -> (min, min_exclusive, max)
DOC_RANGES = [
    (r"^(?:integer|number) ≥ (-?[\d.]+)", lambda m: (float(m[1]), False, None)),
    (r"^number > (-?[\d.]+)$", lambda m: (float(m[1]), True, None)),
    (r"^`([\d.]+)\.\.([\d.]+)`$", lambda m: (float(m[1]), False, float(m[2]))),
    (r"^`\(([\d.]+), ([\d.]+)\]`$", lambda m: (float(m[1]), True, float(m[2]))),
    # the upper end is allowed with t = 1 only (a rule of the method): (0, 1] for the knob
    (r"^`\(([\d.]+), ([\d.]+)\)`; 1 only with t = 1$", lambda m: (float(m[1]), True, float(m[2]))),
]


def _doc_range(cells: list[str]) -> tuple[float, bool, float | None] | None:
    for cell in cells:
        for pattern, parse in DOC_RANGES:
            found = re.match(pattern, cell)
            if found:
                return parse(found)
    return None


@pytest.mark.parametrize("name", ["dsl", "legcf", "lerg", "lightgnn", "unkd"])
def test_the_ranges_in_the_method_docs_are_the_knobs(name):
    """Every knob with a range has it in its docs page's knob table, and a range documented there
    is the knob's."""
    page = Path(__file__).resolve().parents[1] / "docs" / "methods" / f"{name}.md"
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:-1]]
            for line in page.read_text().splitlines() if line.startswith("| `")}
    cls = registry.get_method(name)
    for knob in cls.knobs:
        documented = _doc_range(rows[knob.name])
        declared = None if knob.min is None and knob.max is None else (
            float(knob.min), knob.min_exclusive, None if knob.max is None else float(knob.max))
        assert documented == declared, f"{name}.{knob.name}: docs {rows[knob.name]}, knob {knob.as_dict()}"
        assert not knob.max_exclusive


def test_magnitude_protect_is_documented_as_the_sentinel_or_a_count():
    page = Path(__file__).resolve().parents[1] / "docs" / "methods" / "magnitude.md"
    assert "| `protect` | `-1` | `-1`, or an integer in `0..floor(d x emb)` |" in page.read_text()
    knob = next(k for k in registry.get_method("magnitude").knobs if k.name == "protect")
    assert (knob.min, knob.max, knob.sentinels) == (0, None, (-1,))


@pytest.mark.parametrize(("body", "message"), [
    ('[methods.dsl]\nupdate_ratio = -3\n', r"methods\.dsl: option dsl\.update_ratio must be in \[0, 1\]"),
    ('[methods.legcf]\nupdate_every = 0\n', r"methods\.legcf: option legcf\.update_every must be >= 1"),
    ('[methods.magnitude]\nprotect = -7\n', r"methods\.magnitude: option magnitude\.protect must be >= 0"),
])
def test_a_config_with_a_value_out_of_range_fails_when_it_is_loaded(tiny_root, body, message):
    path = tiny_config(tiny_root, 'datasets = ["tiny"]\nseeds = [0]\nemb_targets = [0.5]\n' + body)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# --- Options -------------------------------------------------------------------------------------


class Toy(Method):
    name = "toy-options"
    knobs = (Knob("rate", 0.5, "a rate", min=0, max=1), Knob("steps", 10, "steps", min=1),
             Knob("mode", "a", "mode", ("a", "b")))


def test_options_read_as_attributes_and_as_a_mapping():
    o = Toy(rate=1, steps=3).options
    assert isinstance(o, Options)
    assert (o.rate, o.steps, o.mode) == (1.0, 3, "a")
    assert o["rate"] == 1.0 and o.get("missing") is None and "steps" in o
    assert o == {"rate": 1.0, "steps": 3, "mode": "a"} and list(o) == ["rate", "steps", "mode"]
    assert o.as_dict() == dict(o) and type(o.as_dict()) is dict
    assert json.dumps(o.as_dict()) == json.dumps({"rate": 1.0, "steps": 3, "mode": "a"})
    with pytest.raises(AttributeError, match="toy-options has no option 'rat'"):
        _ = o.rat


def test_options_are_read_only_and_replace_and_extend_copy():
    o = Toy().options
    with pytest.raises(AttributeError, match="read-only"):
        o.rate = 0.1
    with pytest.raises(TypeError):
        o["rate"] = 0.1  # type: ignore[index]
    changed = o.replace(steps=4)
    assert changed.steps == 4 and o.steps == 10 and list(changed) == list(o)
    with pytest.raises(KeyError, match="no option"):
        o.replace(stepz=4)
    more = changed.extend(c=12)
    assert list(more) == ["rate", "steps", "mode", "c"] and more.c == 12 and "c" not in changed
    with pytest.raises(KeyError, match="already exist"):
        o.extend(rate=0.2)


def test_every_method_gets_an_options_object_equal_to_its_defaults():
    registry.load_all()
    for name in registry.available_methods():
        cls = registry.get_method(name)
        options = cls().options
        assert isinstance(options, Options)
        assert options == {k.name: k.default for k in cls.knobs}
        for knob in cls.knobs:
            assert getattr(options, knob.name) == knob.default


# --- stage keys ------------------------------------------------------------------------------------

#: a different value of each TrainConfig field that can change what a stage learns
CHANGED = {"dim": 16, "n_layers": 3, "lr": 0.01, "lr_schedule": "cosine", "lr_min": 1e-4, "lr_period": 5,
           "reg": 1e-3, "reg_form": "norm", "batch_size": 32, "epochs": 7, "patience": 3, "eval_every": 3,
           "valid_metric": "ndcg@10", "ks": (5, 10, 20), "init": "normal", "backend": "coo", "seed": 9}
#: fields that change where or how fast a stage trains, not what it learns
NOT_RESULT = {"device": "cuda", "eval_memory_bytes": 2**20}


def test_the_fields_listed_cover_the_train_config():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(CHANGED) | set(NOT_RESULT) == names


@pytest.mark.parametrize("field_name", sorted(CHANGED))
def test_a_result_field_of_the_stage_config_changes_the_key(field_name):
    data = clustered_data()
    config = small_config()
    other = dataclasses.replace(config, **{field_name: CHANGED[field_name]})
    assert getattr(other, field_name) != getattr(config, field_name)
    key = BaseCheckpoints.stage_key(data, "s", config, {"x": 1})
    assert BaseCheckpoints.stage_key(data, "s", other, {"x": 1}) != key


@pytest.mark.parametrize("field_name", sorted(NOT_RESULT))
def test_a_field_that_does_not_change_the_result_keeps_the_key(field_name):
    data = clustered_data()
    config = small_config()
    other = dataclasses.replace(config, **{field_name: NOT_RESULT[field_name]})
    assert BaseCheckpoints.stage_key(data, "s", other, {"x": 1}) == \
        BaseCheckpoints.stage_key(data, "s", config, {"x": 1})


def test_the_name_fields_and_dataset_change_the_key():
    data, config = clustered_data(), small_config()
    key = BaseCheckpoints.stage_key(data, "s", config, {"x": 1})
    assert BaseCheckpoints.stage_key(data, "t", config, {"x": 1}) != key
    assert BaseCheckpoints.stage_key(data, "s", config, {"x": 2}) != key
    assert BaseCheckpoints.stage_key(clustered_data(seed=1), "s", config, {"x": 1}) != key
    assert BaseCheckpoints.stage_key(data, "s", config, Options({"x": 1})) == key


def test_a_context_stage_is_rebuilt_for_another_config_or_seed_and_reused_otherwise():
    ctx = method_context(0)
    built: list[int] = []

    def build():
        built.append(1)
        return {"w": torch.zeros(2)}, {"n": len(built)}

    config = ctx.train_config(epochs=3)
    ctx.stage("s", config, {"x": 1}, build)
    _, _, hit = ctx.stage("s", ctx.train_config(epochs=3, eval_memory_bytes=2**20), {"x": 1}, build)
    assert hit and len(built) == 1
    _, _, hit = ctx.stage("s", ctx.train_config(epochs=4), {"x": 1}, build)
    assert not hit and len(built) == 2
    other_seed = dataclasses.replace(ctx, seed=1)  # same checkpoints, another cell seed
    _, _, hit = other_seed.stage("s", config, {"x": 1}, build)
    assert not hit and len(built) == 3


@pytest.mark.parametrize("name", ["legcf", "lerg"])
def test_a_compositional_stage_key_follows_its_train_config(name, monkeypatch):
    """LEGCF's and LERG's pretraining stages are keyed by the TrainConfig they train with: a budget
    field the methods used to leave out of their hand-listed fields (``lr_schedule``) now splits
    the cache, and a non-result field (``eval_memory_bytes``) does not."""
    cls = registry.get_method(name)
    method = cls(pretrain_epochs=1, **({"update_epochs": 1} if name == "legcf" else {"finetune_epochs": 1}))
    seen: list[tuple[TrainConfig, dict]] = []

    def stage(self, stage_name, config, fields, build):
        seen.append((config, dict(fields)))
        raise _Stop

    from bench.context import MethodContext

    monkeypatch.setattr(MethodContext, "stage", stage)
    keys = []
    for budget in ({}, {"eval_memory_bytes": 2**20}, {"lr_schedule": "cosine"}):
        ctx = method_context(0, **budget)
        with pytest.raises(_Stop):
            method.compress(ctx, _target(0.5))
        config, fields = seen[-1]
        assert config.epochs == 1 and not math.isnan(config.lr)
        assert "pretrain_epochs" not in fields and "batch_size" not in fields and "dim" not in fields
        keys.append(BaseCheckpoints.stage_key(ctx.data, name, config, {**fields, "seed": ctx.seed}))
    assert keys[0] == keys[1] != keys[2]


class _Stop(Exception):
    pass
