"""The matrix runner: results store, resume after an interruption, failures, executors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.cli import main
from bench.config import load_config
from bench.measure.memory import release_free_memory, set_allocator
from bench.runner import run_matrix
from bench.store import ResultStore
from tests.helpers import tiny_config

QUIET = {"progress": False, "log": lambda m: None, "report": False}


def matrix(tiny_root, methods='["lightgcn", "toy-truncate"]', targets="[0.5, 0.25]", seeds="[0, 1]",
           name="m"):
    return load_config(tiny_config(tiny_root, f'datasets = ["tiny"]\nmethods = {methods}\n'
                                              f"emb_targets = {targets}\nseeds = {seeds}\n", name=name))


def stored(out):
    with ResultStore(out / "results.sqlite") as store:
        return {c["key"]: c for c in store.cells()}


def test_results_store_rows_and_cells_csv(tiny_root, toy_plugin, tmp_path):
    cfg = matrix(tiny_root)
    out = tmp_path / "out"
    summary = run_matrix(cfg, out, **{**QUIET, "report": True})
    assert (summary.total, summary.ran, summary.ok) == (6, 6, 6)
    cells = stored(out)
    assert len(cells) == 6
    for c in cells.values():
        assert c["status"] == "ok" and c["error"] is None
        env = c["environment"]
        assert env["git_sha"] is None or len(env["git_sha"]) >= 40
        assert env["versions"]["torch"] and env["device"] == "cpu" and env["code_version"]
        m = c["measurements"]
        for name in ("flops", "params", "bits", "emb_achieved", "edge_achieved", "train_seconds",
                     "peak_mem_training_bytes", "peak_mem_propagation_bytes", "peak_mem_scoring_bytes",
                     "latency_propagation_p50_ms", "latency_scoring_b1_p50_ms",
                     "latency_scoring_b4_p95_ms"):
            assert name in m, name
        on_cpu = c["environment"]["device"] == "cpu"
        for phase in ("propagation", "scoring"):  # what the phase needed: its tensor allocations on CPU
            assert c["info"][f"mem_{phase}_method"] == ("cpu_tensor_allocations" if on_cpu
                                                        else "cuda_max_memory_allocated")
            assert 0 <= m[f"mem_{phase}_bytes"] <= m[f"peak_mem_{phase}_bytes"]
        assert m["mem_scoring_bytes"] >= 40 * 8 * 4  # a chunk of scores at least (the toy keeps its rows)
        assert ("mem_training_bytes" in m) is ("mem_training_method" in c["info"])
        if c["method"] == "lightgcn":  # no training in the call: the base's own peak, no increment here
            assert "mem_training_bytes" not in m and "mem_baseline_training_bytes" not in m
        assert c["info"]["mem_released_free_memory"] is (on_cpu and release_free_memory())
        # training ran under fixed allocator thresholds
        fixed = on_cpu and set_allocator("training")
        assert c["info"].get("allocator") == ("glibc, fixed thresholds" if fixed else
                                              "default" if on_cpu else None)
        assert 0 <= c["metrics"]["recall@10"] <= 1 and "valid_ndcg@5" in c["metrics"]
    ref = next(c for c in cells.values() if c["method"] == "lightgcn" and c["seed"] == 0)
    # the training stages it used: the shared base, trained under the tiny budget's 3 epochs
    (stage,) = ref["info"]["training_stages"]
    assert (stage["stage"], stage["budget_epochs"], stage["cached"]) == ("base", 3, True)
    assert 1 <= stage["best_epoch"] <= stage["epochs"] <= 3
    assert ref["measurements"]["stages_at_budget"] == int(stage["best_epoch"] == 3)
    # the reference's FLOPs are LightGCN's analytic count: L * nnz * d + U * I * d
    data_nnz = 2 * ref["measurements"]["edges"]
    assert ref["measurements"]["flops"] == 2 * data_nnz * 8 + 60 * 40 * 8
    frame = pd.read_csv(out / "cells.csv")
    assert set(frame["key"]) == set(cells)
    row = frame[(frame["key"] == ref["key"]) & (frame["name"] == "recall@10")]
    assert row["value"].item() == pytest.approx(ref["metrics"]["recall@10"], abs=0)
    assert list(frame.columns) == ["run", "key", "dataset", "method", "variant", "emb_target", "edge_target",
                                   "layers_target", "seed", "status", "flagged", "flag_reason", "error",
                                   "emb_achieved", "edge_achieved", "options", "budget", "device",
                                   "base_checkpoint", "dataset_checksum", "code_version", "finished_at",
                                   "name", "value"]
    # the long table in SQL holds the same numbers
    con = sqlite3.connect(out / "results.sqlite")
    (v,) = con.execute("SELECT value FROM cell_values WHERE key=? AND name='recall@10'",
                       (ref["key"],)).fetchone()
    assert v == ref["metrics"]["recall@10"]
    assert (out / "index.html").read_text().count("<table") >= 1


def test_rerun_skips_finished_cells(tiny_root, toy_plugin, tmp_path):
    cfg = matrix(tiny_root)
    run_matrix(cfg, tmp_path / "out", **QUIET)
    ran = []
    summary = run_matrix(cfg, tmp_path / "out", on_result=ran.append, **QUIET)
    assert ran == [] and summary.already_done == 6


def test_interrupted_matrix_resumes_with_exactly_the_missing_cells(tiny_root, toy_plugin, tmp_path):
    cfg = matrix(tiny_root)
    out = tmp_path / "out"
    first: list[str] = []

    def stop_after_two(result):
        first.append(result.key)
        if len(first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_matrix(cfg, out, on_result=stop_after_two, **QUIET)
    assert set(stored(out)) == set(first)
    with ResultStore(out / "results.sqlite") as store:
        assert store.runs()[-1]["outcome"] == "interrupted"
    second: list[str] = []
    summary = run_matrix(cfg, out, on_result=lambda r: second.append(r.key), **QUIET)
    all_keys = set(summary.keys)
    assert set(second) == all_keys - set(first) and len(second) == 4
    assert set(stored(out)) == all_keys


def test_failures_are_stored_and_the_matrix_goes_on(tiny_root, toy_plugin, tmp_path):
    cfg = matrix(tiny_root, methods='["lightgcn", "toy-raise", "toy-nan", "toy-oom", "toy-truncate"]',
                 targets="[0.5]", seeds="[0]")
    out = tmp_path / "out"
    summary = run_matrix(cfg, out, **QUIET)
    assert (summary.ran, summary.ok, summary.failed) == (5, 2, 3)
    by_method = {c["method"]: c for c in stored(out).values()}
    assert by_method["toy-raise"]["status"] == "failed"
    assert by_method["toy-raise"]["error"] == "RuntimeError: toy failure on purpose"
    assert "Traceback" in by_method["toy-raise"]["traceback"]
    assert by_method["toy-nan"]["status"] == "failed"
    assert by_method["toy-nan"]["error"].startswith("diverged: tiny: loss became nan at epoch 1")
    assert by_method["toy-oom"]["error"] == "out of memory: MemoryError: cannot allocate 40 GiB"
    assert by_method["toy-truncate"]["status"] == by_method["lightgcn"]["status"] == "ok"

    # failed cells are not retried unless asked, and then only they run
    ran: list[str] = []
    run_matrix(cfg, out, on_result=lambda r: ran.append(r.method), **QUIET)
    assert ran == []
    run_matrix(cfg, out, retry_failed=True, on_result=lambda r: ran.append(r.method), **QUIET)
    assert sorted(ran) == ["toy-nan", "toy-oom", "toy-raise"]
    assert len(stored(out)) == 5


def test_missed_target_is_flagged_not_hidden(tiny_root, toy_plugin, tmp_path):
    cfg = load_config(tiny_config(tiny_root, 'datasets = ["tiny"]\nseeds = [0]\nemb_targets = [0.5]\n'
                                             "[methods.toy-truncate]\nslack = 0.25\n"))
    summary = run_matrix(cfg, tmp_path / "out", **QUIET)
    assert summary.flagged == 1
    (cell,) = stored(tmp_path / "out").values()
    assert cell["status"] == "ok" and cell["flagged"]
    assert cell["flag_reason"] == "emb achieved 0.7500 vs target 0.5"


def test_same_seed_gives_the_same_numbers(tiny_root, toy_plugin, tmp_path):
    cfg = matrix(tiny_root, seeds="[3]")
    run_matrix(cfg, tmp_path / "a", **QUIET)
    run_matrix(cfg, tmp_path / "b", checkpoint_dir=tmp_path / "fresh-checkpoints", **QUIET)
    a, b = stored(tmp_path / "a"), stored(tmp_path / "b")
    assert set(a) == set(b)
    for key in a:
        assert a[key]["metrics"] == b[key]["metrics"]
        assert a[key]["base_checkpoint"] == b[key]["base_checkpoint"]


def _metrics(out):
    return {k: (c["status"], c["metrics"]) for k, c in stored(out).items()}


def run_single_threaded(cfg, out, checkpoint_dir):
    """The sequential run with one torch thread, as every worker below uses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_matrix(cfg, out, checkpoint_dir=checkpoint_dir, **QUIET)
    finally:
        torch.set_num_threads(threads)


def test_dask_local_cluster_gives_the_sequential_metrics(tiny_root, toy_plugin, tmp_path):
    pytest.importorskip("dask.distributed")
    from bench.executors import DaskExecutor

    cfg = matrix(tiny_root)
    run_single_threaded(cfg, tmp_path / "seq", tmp_path / "ck-seq")
    executor = DaskExecutor(n_workers=2, threads=1)
    summary = run_matrix(cfg, tmp_path / "dask", executor=executor, checkpoint_dir=tmp_path / "ck-dask",
                         **QUIET)
    assert summary.ok == 6
    assert _metrics(tmp_path / "dask") == _metrics(tmp_path / "seq")


def test_worker_processes_give_the_sequential_metrics(tiny_root, toy_plugin, tmp_path):
    from bench.executors import ProcessExecutor

    cfg = matrix(tiny_root, seeds="[0]")
    run_single_threaded(cfg, tmp_path / "seq", tmp_path / "ck-seq")
    summary = run_matrix(cfg, tmp_path / "proc", executor=ProcessExecutor(2, threads=1),
                         checkpoint_dir=tmp_path / "ck-proc", **QUIET)
    assert summary.ok == 3
    assert _metrics(tmp_path / "proc") == _metrics(tmp_path / "seq")
    # each result says how many cells shared the machine while it ran
    assert {c["environment"]["concurrent_cells"] for c in stored(tmp_path / "proc").values()} == {2}
    assert {c["environment"]["concurrent_cells"] for c in stored(tmp_path / "seq").values()} == {1}


def test_a_config_with_workers_runs_its_cells_in_that_many_processes(tiny_root, toy_plugin, tmp_path,
                                                                    monkeypatch):
    import bench.runner
    from bench.cli import main
    from bench.executors import ProcessExecutor, SequentialExecutor

    seen = []

    def fake_run_matrix(config, out, executor, **kwargs):
        seen.append(executor)
        return bench.runner.RunSummary(out_dir=tmp_path, total=0, already_done=0, skipped_failed=0)

    monkeypatch.setattr(bench.runner, "run_matrix", fake_run_matrix)
    body = 'datasets = ["tiny"]\nmethods = ["lightgcn"]\nemb_targets = [0.5]\nseeds = [0]\n'
    two = tiny_config(tiny_root, "workers = 2\n" + body, name="two")
    one = tiny_config(tiny_root, body, name="one")
    assert main(["run", str(two), "--no-progress"]) == 0
    assert main(["run", str(two), "--workers", "1", "--no-progress"]) == 0  # the command line wins
    assert main(["run", str(one), "--no-progress"]) == 0
    assert isinstance(seen[0], ProcessExecutor) and seen[0].workers == 2
    assert isinstance(seen[1], ProcessExecutor) and seen[1].workers == 1
    assert isinstance(seen[2], SequentialExecutor)


def test_killed_run_loses_no_finished_cell_and_leaves_no_partial_row(tiny_root, toy_plugin, tmp_path):
    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn", "toy-truncate"]\n'
                                    "emb_targets = [0.5, 0.25]\nseeds = [0, 1, 2]\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    finished = 0
    deadline = time.time() + 120
    for line in proc.stderr:  # one log line per finished cell
        if "/seed" in line and ": ok" in line:
            finished += 1
            if finished == 2:
                proc.send_signal(signal.SIGKILL)
                break
        assert time.time() < deadline
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = con.execute("SELECT key, status FROM cells").fetchall()
    assert len(rows) >= 2 and all(s == "ok" for _, s in rows)
    # every stored cell has all its values (no partial row)
    for key, _ in rows:
        (n,) = con.execute("SELECT COUNT(*) FROM cell_values WHERE key=?", (key,)).fetchone()
        assert n > 50
    con.close()
    done = {k for k, _ in rows}
    ran: list[str] = []
    summary = run_matrix(load_config(config), out, on_result=lambda r: ran.append(r.key), **QUIET)
    assert summary.total == 9 and set(ran) == set(summary.keys) - done


def test_cli_run_prints_a_json_summary(tiny_root, toy_plugin, tmp_path, capsys):
    import json

    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn"]\n'
                                    "emb_targets = [0.5]\nseeds = [0]\n")
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["total"] == 1 and out["ok"] == 1 and 0 <= out["overhead_share"] < 1
    assert "tiny/lightgcn[emb=1]/seed0: ok" in captured.err


def test_rerun_from_other_code_says_which_cells_run_again(tiny_root, tmp_path, monkeypatch):
    import bench.runner as runner

    body = 'datasets = ["tiny"]\nmethods = ["lightgcn"]\nseeds = [0, 1]\nemb_targets = [1.0]\n'
    cfg = load_config(tiny_config(tiny_root, body))
    monkeypatch.setattr(runner, "code_version", lambda: "0.1.0+aaaaaaaaaaaa")
    first: list[str] = []
    run_matrix(cfg, tmp_path / "out", **{**QUIET, "log": first.append})
    assert not any("NOTE" in line for line in first)
    monkeypatch.setattr(runner, "code_version", lambda: "0.1.0+bbbbbbbbbbbb")
    lines: list[str] = []
    summary = run_matrix(cfg, tmp_path / "out", **{**QUIET, "log": lines.append})
    assert (summary.already_done, summary.ran) == (0, 2)  # recomputed, not resumed
    (note,) = [line for line in lines if "NOTE" in line]
    assert "2 of these cells" in note and "0.1.0+aaaaaaaaaaaa" in note and "0.1.0+bbbbbbbbbbbb now" in note
    lines.clear()
    run_matrix(cfg, tmp_path / "out", **{**QUIET, "log": lines.append})  # same code again: resumes
    assert not any("NOTE" in line for line in lines)


def test_rerun_under_another_budget_warns_that_the_report_will_replace_cells(tiny_root, tmp_path):
    body = 'datasets = ["tiny"]\nmethods = ["lightgcn"]\nseeds = [0]\nemb_targets = [1.0]\n'
    cfg = load_config(tiny_config(tiny_root, body))
    lines: list[str] = []
    run_matrix(cfg, tmp_path / "out", **{**QUIET, "log": lines.append})
    assert not any("WARNING" in line for line in lines)
    cfg.budget = {**cfg.budget, "epochs": 2}
    run_matrix(cfg, tmp_path / "out", **{**QUIET, "log": lines.append})
    warning = [line for line in lines if "WARNING" in line]
    assert len(warning) == 1 and "1 of these cells" in warning[0] and "another --out" in warning[0]
    other: list[str] = []
    run_matrix(cfg, tmp_path / "other", **{**QUIET, "log": other.append})
    assert not any("WARNING" in line for line in other)
