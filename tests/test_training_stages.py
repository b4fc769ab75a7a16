"""Training stages cut short by the epoch budget: recorded per cell and noted in the report."""

from __future__ import annotations

import pytest

import bench.context as context_module
import bench.training as training_module
from bench.backbone.lightgcn import LightGCN
from bench.cell import training_stages
from bench.context import TrainingCost, stage_meta
from bench.report import BUDGET_NOTE, _notes
from bench.training import TrainResult, build_lightgcn, shared_epochs
from tests.helpers import method_context, run_single_cell


def fake_fit(best_epoch: int, epochs: int):
    """A stand-in for the BPR loop that reports the given epochs without training."""

    def fit_bpr(model, data, config, **kwargs):
        return TrainResult(model=model, config=config, epochs=epochs, best_epoch=best_epoch, best_valid=0.5,
                           valid={"recall@10": 0.5}, test={"recall@10": 0.4}, epoch_seconds=[0.1] * epochs)

    return fit_bpr


def small_model(ctx) -> LightGCN:
    return build_lightgcn(ctx.data, ctx.budget, ctx.device)


@pytest.mark.parametrize(("best", "ran", "budget", "at_budget"), [
    (6, 6, 6, True),    # best at the last allowed epoch: still improving
    (4, 6, 6, False),   # improved earlier, then ran out of epochs without improving
    (2, 4, 6, False),   # early stopping ended it
])
def test_fit_stage_records_the_stage_and_whether_the_budget_cut_it(monkeypatch, best, ran, budget, at_budget):
    monkeypatch.setattr(context_module, "fit_bpr", fake_fit(best, ran))
    ctx = method_context(epochs=budget)
    ctx.fit_stage(small_model(ctx))
    (stage,) = training_stages(None, ctx.stages)
    assert stage == {"stage": "training", "epochs": ran, "best_epoch": best, "budget_epochs": budget,
                     "cached": False, "shared_epochs": None, "at_budget": at_budget}


def test_a_cached_stage_is_recorded_once_when_built_and_from_its_meta_when_reused(monkeypatch):
    monkeypatch.setattr(context_module, "fit_bpr", fake_fit(8, 8))
    ctx = method_context(epochs=8)
    config = ctx.train_config(epochs=8)

    def build():
        model = small_model(ctx)
        cost, result = ctx.fit_stage(model, config)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, stage_meta(cost, result)

    _, meta, hit = ctx.stage("pretrain", config, {"x": 1}, build)
    assert not hit and meta["budget_epochs"] == 8
    _, _, hit = ctx.stage("pretrain", config, {"x": 1}, build)
    assert hit
    assert [(s["stage"], s["cached"], s["best_epoch"], s["budget_epochs"]) for s in ctx.stages] == [
        ("pretrain", False, 8, 8), ("pretrain", True, 8, 8)]
    assert all(s["at_budget"] for s in training_stages(None, ctx.stages))


def test_the_base_comes_first_and_an_unknown_budget_is_never_at_budget():
    base = {"best_epoch": 5, "training": TrainingCost(1.0, 5, 0.0), "budget_epochs": 5}
    rows = training_stages(base, [{"stage": "s", "epochs": 3, "best_epoch": 3, "budget_epochs": None,
                                   "cached": False}])
    assert [(r["stage"], r["at_budget"]) for r in rows] == [("base", True), ("s", False)]


def test_the_report_notes_cells_whose_stage_ran_out_of_budget():
    def cell(seed, at_budget):
        stages = [{"stage": "legcf-pretrain", "at_budget": at_budget}, {"stage": "fit2", "at_budget": False}]
        return {"status": "ok", "dataset": "d", "method": "legcf", "seed": seed, "spec": {"options": {}},
                "settings": {}, "info": {"training_stages": stages}}

    notes = _notes([cell(0, True), cell(1, True), cell(2, False)])
    assert notes == [{"dataset": "d", "variant": "legcf", "note": BUDGET_NOTE.format(stage="legcf-pretrain"),
                      "cells": 2}]


def test_report_notes_may_be_a_string_or_a_list_and_are_counted_one_by_one():
    def cell(seed, note):
        return {"status": "ok", "dataset": "d", "method": "legcf", "seed": seed, "spec": {"options": {}},
                "settings": {"report_note": note}, "info": {"training_stages": []}}

    notes = _notes([cell(0, ["a", "b"]), cell(1, "a"), cell(2, None), cell(3, ["b; with a semicolon"])])
    assert [(n["note"], n["cells"]) for n in notes] == [("a", 2), ("b", 1), ("b; with a semicolon", 1)]


def test_an_unconverged_dense_reference_is_noted_for_every_comparison_on_its_dataset():
    from bench.report import UNCONVERGED_REFERENCE_NOTE

    def cell(dataset, method, at_budget):
        return {"status": "ok", "dataset": dataset, "method": method, "seed": 0, "spec": {"options": {}},
                "settings": {}, "info": {"training_stages": [{"stage": "base", "at_budget": at_budget}]}}

    notes = _notes([cell("a", "lightgcn", True), cell("a", "magnitude", True), cell("b", "lightgcn", False),
                    cell("b", "magnitude", False)])
    general = [n for n in notes if n["note"] == UNCONVERGED_REFERENCE_NOTE]
    assert general == [{"dataset": "a", "variant": "all", "note": UNCONVERGED_REFERENCE_NOTE, "cells": 1}]
    assert {n["dataset"] for n in notes} == {"a"}  # nothing to say about the converged dataset b


def test_a_cell_reports_its_own_and_its_total_training_cost(tiny_root, tmp_path):
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore
    from tests.helpers import tiny_config

    body = 'datasets = ["tiny"]\nseeds = [0]\nmethods = ["lightgcn", "magnitude"]\nemb_targets = [0.5]\n'
    summary = run_matrix(load_config(tiny_config(tiny_root, body)), tmp_path / "out", progress=False,
                         log=lambda m: None, report=False)
    assert summary.ok == 2
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        ref, mag = sorted((c for c in store.cells()), key=lambda c: c["method"] != "lightgcn")
    ref, mag = ref["measurements"], mag["measurements"]
    # the reference is the base itself: its total is its own cost, counted once
    assert ref["train_seconds_total"] == ref["train_seconds"] == ref["base_train_seconds"]
    assert ref["train_epochs_total"] == ref["train_epochs"]
    # a method fine-tuned from the base also pays for the base
    assert mag["train_seconds_total"] == pytest.approx(mag["train_seconds"] + mag["base_train_seconds"])
    assert mag["train_epochs_total"] == mag["train_epochs"] + ref["train_epochs"]


def test_cells_without_a_record_of_their_training_are_noted():
    from bench.report import UNRECORDED_NOTE

    def cell(seed, info):
        return {"status": "ok", "dataset": "d", "method": "unkd", "seed": seed, "spec": {"options": {}},
                "settings": {}, "info": info}

    notes = _notes([cell(0, {}), cell(1, {"other": 1}), cell(2, {"training_stages": []})])
    assert notes == [{"dataset": "d", "variant": "unkd", "note": UNRECORDED_NOTE, "cells": 2}]


def test_cells_that_shared_the_machine_are_noted_for_their_dataset():
    from bench.report import SHARED_MACHINE_NOTE

    def cell(dataset, concurrent):
        return {"status": "ok", "dataset": dataset, "method": "magnitude", "seed": 0, "spec": {"options": {}},
                "settings": {}, "info": {"training_stages": []},
                "environment": {"concurrent_cells": concurrent}}

    notes = _notes([cell("a", 2), cell("a", 2), cell("b", 1), cell("c", None)])
    assert notes == [{"dataset": "a", "variant": "all", "note": SHARED_MACHINE_NOTE.format(n=2), "cells": 2}]


def test_scoring_memory_measured_in_two_ways_is_noted_for_its_dataset():
    from bench.report import MIXED_MEMORY_NOTE

    def cell(dataset, info):
        return {"status": "ok", "dataset": dataset, "method": "magnitude", "seed": 0, "spec": {"options": {}},
                "settings": {}, "info": {"training_stages": [], **info},
                "measurements": {"mem_scoring_bytes": 1.0}}

    counted = {"mem_scoring_method": "cpu_tensor_allocations", "peak_mem_method": "cpu_peak_rss_vmhwm"}
    cuda = {"peak_mem_method": "cuda_max_memory_allocated"}  # older: no mem_scoring_method
    old_cpu = {"peak_mem_method": "cpu_peak_rss_vmhwm"}
    notes = _notes([cell("a", counted), cell("a", old_cpu), cell("a", old_cpu),
                    cell("b", counted), cell("b", cuda)])  # the CPU count and CUDA's agree: no note
    methods = "cpu_rss_increment: 2, cpu_tensor_allocations: 1"
    assert notes == [{"dataset": "a", "variant": "all", "cells": 3,
                      "note": MIXED_MEMORY_NOTE.format(n=2, methods=methods)}]


def test_a_models_notes_are_stored_where_the_report_reads_them():
    import torch

    from bench.cell import report_notes
    from bench.contract import CompressedModel, MethodError

    def model(notes, settings):
        return CompressedModel(module=torch.nn.Linear(1, 1), artifact=[], graph=None, n_layers=0,
                               settings=settings, notes=notes)

    assert report_notes(model(["a"], {})) == ["a"]
    assert report_notes(model([], {})) is None
    # a plugin that still passes notes in its settings keeps them, after the typed ones
    assert report_notes(model(["a"], {"report_note": "b"})) == ["a", "b"]
    assert report_notes(model([], {"report_note": ["b", "c"]})) == ["b", "c"]
    with pytest.raises(MethodError, match="notes must be a list of non-empty strings"):
        model("a", {})
    with pytest.raises(MethodError, match="notes must be a list of non-empty strings"):
        model([""], {})


def test_shared_epochs_counts_epochs_that_ended_beside_other_work():
    rows = [{"load_1m": x} for x in (0.9, 1.7, 1.8, 3.2)]
    assert shared_epochs(rows, threads=1) == 2  # above 1 + 0.75
    assert shared_epochs(rows, threads=2) == 1
    assert shared_epochs([{"epoch": 0}, *rows], threads=1) == 2  # an epoch without a reading: not counted
    assert shared_epochs([{"epoch": 1}], threads=1) is None and shared_epochs([], threads=1) is None


def test_a_training_records_each_epochs_load_and_the_stage_its_shared_epochs(monkeypatch):
    loads = iter([0.5, 3.0, 3.0, 0.5, 0.5, 3.0])
    monkeypatch.setattr(training_module, "machine_load", lambda: {"load_1m": next(loads), "cpus": 2})
    ctx = method_context(epochs=6, patience=100)
    _, result = ctx.fit_stage(small_model(ctx), stage="s")
    assert [row["load_1m"] for row in result.history] == [0.5, 3.0, 3.0, 0.5, 0.5, 3.0]
    assert result.shared_epochs == 3 and ctx.stages[-1]["shared_epochs"] == 3
    assert stage_meta(TrainingCost(), result)["shared_epochs"] == 3


def test_a_cell_trained_beside_other_work_says_so(tiny_root, tmp_path, monkeypatch):
    body = 'datasets = ["tiny"]\nmethods = ["lightgcn"]\nemb_targets = [1.0]\nseeds = [0]\n'
    monkeypatch.setenv("RECSHRINK_CACHE", str(tmp_path / "cache"))  # base models trained here, not reused
    monkeypatch.setattr(training_module, "machine_load", lambda: {"load_1m": 0.2, "cpus": 2})
    quiet = run_single_cell(tiny_root, tmp_path / "quiet", body)
    assert quiet["measurements"]["train_shared_epochs"] == 0
    assert "other work" not in " ".join(n["note"] for n in _notes([quiet]))
    monkeypatch.setattr(training_module, "machine_load", lambda: {"load_1m": 9.0, "cpus": 2})
    busy = run_single_cell(tiny_root, tmp_path / "busy", body.replace("seeds = [0]", "seeds = [1]"))
    epochs = busy["measurements"]["train_epochs"]
    assert busy["measurements"]["train_shared_epochs"] == epochs
    (stage,) = busy["info"]["training_stages"]
    assert (stage["stage"], stage["shared_epochs"]) == ("base", epochs)
    assert "other work" not in " ".join(busy["settings"].get("report_note") or [])  # the report's to say
    assert {"dataset": "tiny", "variant": "lightgcn", "cells": 1, "note": (
        f"training time measured while other work ran on the machine (epochs whose 1-minute load exceeded "
        f"the training's own threads, summed over these cells: base {epochs} of {epochs}): their training "
        "seconds are not an idle machine's")} in _notes([busy])


def test_the_timing_notes_are_one_per_variant_over_its_cells():
    """Busy-machine latency and shared training epochs: one note per variant, the loads as a range and
    the epochs summed per stage; an older store's per-cell text of the same note is left out when the
    cell has the record the report builds it from, and kept when it has not."""
    def cell(seed, load, shared, note=None):
        stages = [{"stage": "base", "epochs": 100, "shared_epochs": shared[0], "at_budget": False},
                  {"stage": "fit", "epochs": 10, "shared_epochs": shared[1], "at_budget": False}]
        machine = {"cpus": 2, "load_1m_max": load, "busy": load > 2}
        return {"status": "ok", "dataset": "d", "method": "m", "seed": seed, "spec": {"options": {}},
                "settings": {"report_note": note} if note else {},
                "info": {"training_stages": stages, "latency": {"machine_load": machine}}}

    old_text = "latency measured on a busy machine (1-minute load 2.6 on 2 CPUs): its latency figures ..."
    notes = _notes([cell(0, 2.04, (100, 0), [old_text, "own note"]), cell(1, 2.6, (40, 10)),
                    cell(2, 1.5, (0, 0))])
    assert [(n["note"], n["cells"]) for n in notes] == [
        ("latency measured on a busy machine (1-minute load 2.0-2.6 on 2 CPUs): its latency figures are not "
         "those of an idle machine", 2),
        ("own note", 1),
        ("training time measured while other work ran on the machine (epochs whose 1-minute load exceeded "
         "the training's own threads, summed over these cells: base 140 of 200, fit 10 of 10): their "
         "training seconds are not an idle machine's", 2)]
    # a cell without the record keeps its text
    bare = cell(3, 2.6, (0, 0), [old_text])
    del bare["info"]["latency"]
    assert [(n["note"], n["cells"]) for n in _notes([bare])] == [(old_text, 1)]
