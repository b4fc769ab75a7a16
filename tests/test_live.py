"""Live progress: a cell in training keeps its stage, epoch and validation in a file that
`recshrink status` reads from another shell; the file goes when the cell ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from bench import live
from bench.cli import main
from bench.device import seed_everything
from bench.resume import EpochCheckpoint
from bench.runner import run_matrix
from bench.status import describe, folder_status
from bench.store import LOCK_FILE
from bench.training import build_lightgcn, fit_bpr
from tests.helpers import clustered_data, small_config
from tests.test_runner import QUIET, matrix


class Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def _every_epoch(monkeypatch):
    monkeypatch.setattr(live, "MIN_INTERVAL_SECONDS", 0.0)


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _fit(config, on_epoch=None, resume=None):
    seed_everything(config.seed)
    model = build_lightgcn(clustered_data(), config, torch.device("cpu"))
    return fit_bpr(model, clustered_data(), config, progress=False, on_epoch=on_epoch, resume=resume)


def test_each_epoch_is_in_the_cells_file_and_the_file_goes_at_the_end(tmp_path):
    config = small_config(epochs=6, eval_every=2, seed=3)
    path = tmp_path / "live" / "k1.json"
    seen = []
    with live.watching(tmp_path / "live", "k1", "tiny/lightgcn/seed3"), live.stage("outer"), \
            live.stage("the stage"):
        assert live.current_title() == "tiny/lightgcn/seed3 the stage"
        result = _fit(config, on_epoch=lambda row: seen.append((row, _read(path))))
    assert not path.exists() and live.current_title() is None
    assert [d["epoch"] for _, d in seen] == [1, 2, 3, 4, 5, 6]
    best, best_epoch, last = None, 0, None
    for row, d in seen:
        assert d["key"] == "k1" and d["label"] == "tiny/lightgcn/seed3" and d["stage"] == "the stage"
        assert d["pid"] == os.getpid() and d["epochs"] == 6 and d["valid_metric"] == "recall@10"
        assert d["checkpoint_epoch"] is None  # no epoch checkpoint in this run
        assert d["last_epoch_seconds"] == pytest.approx(row["seconds"])
        if "valid_recall@10" in row:
            last = row["valid_recall@10"]
            if best is None or last > best:
                best, best_epoch = last, row["epoch"]
        assert (d["last_valid"], d["best_valid"], d["best_epoch"]) == (last, best, best_epoch)
    assert (best, best_epoch) == (result.best_valid, result.best_epoch)
    assert seen[-1][1]["seconds"] >= sum(result.epoch_seconds)


def test_outside_a_watched_cell_training_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(small_config(epochs=2))
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_says_where_it_resumed_and_its_checkpoint(tmp_path, monkeypatch):
    config = small_config(epochs=6, eval_every=2, seed=3)
    path = tmp_path / "live" / "k.json"

    def kill_at_4(row):
        if row["epoch"] == 4:
            raise Killed

    with live.watching(tmp_path / "live", "k", "cell"), pytest.raises(Killed):
        _fit(config, on_epoch=kill_at_4, resume=EpochCheckpoint(tmp_path / "ck", "fit", every_seconds=0))
    before = []
    original = live.report

    def spy(progress):
        before.append(progress)
        original(progress)

    monkeypatch.setattr(live, "report", spy)
    # the first report, before any epoch of the new process, is the restored epoch
    with live.watching(tmp_path / "live", "k", "cell"):
        _fit(config, on_epoch=lambda row: before.append(_read(path)),
             resume=EpochCheckpoint(tmp_path / "ck", "fit", every_seconds=0))
    first = before[0]
    assert (first.epoch, first.resumed_from, first.checkpoint_epoch) == (4, 4, 4)
    assert first.best_epoch in (2, 4) and first.last_valid is not None and first.seconds > 0
    after = [d for d in before if isinstance(d, dict)]
    assert [d["epoch"] for d in after] == [5, 6] and [d["checkpoint_epoch"] for d in after] == [5, 6]
    assert all(d["resumed_from"] == 4 for d in after)


def test_an_unwritable_live_folder_does_not_stop_training(tmp_path):
    blocker = tmp_path / "live"
    blocker.write_text("a file where the folder should be")
    with live.watching(blocker, "k", "cell"):
        result = _fit(small_config(epochs=2))
    assert result.epochs == 2 and blocker.read_text().startswith("a file")


def _live_file(out, key="k" * 32, **overrides):
    body = {"key": key, "label": "gowalla/dsl[emb=0.5]/seed0", "pid": os.getpid(),
            "host": socket.gethostname(),
            "cell_started": time.time() - 7200, "updated": time.time() - 30, "stage": "dsl-sparse",
            "epoch": 120, "epochs": 600, "valid_metric": "recall@20", "last_valid": 0.1702,
            "best_valid": 0.1711, "best_epoch": 110, "validations_since_best": 2, "patience": 60,
            "seconds": 7100.0, "last_epoch_seconds": 64.2, "checkpoint_epoch": 118, "resumed_from": 40}
    body.update(overrides)
    (out / live.LIVE_DIR).mkdir(parents=True, exist_ok=True)
    (out / live.LIVE_DIR / f"{key}.json").write_text(json.dumps(body))
    return body


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_read_live_tells_a_stopped_cell_and_skips_a_damaged_file(tmp_path):
    _live_file(tmp_path, key="a" * 32, cell_started=1.0)
    _live_file(tmp_path, key="b" * 32, pid=_dead_pid(), cell_started=2.0)
    _live_file(tmp_path, key="c" * 32, host="another-host", pid=1, cell_started=3.0)
    (tmp_path / live.LIVE_DIR / ("d" * 32 + ".json")).write_text('{"key": "d", "pid"')  # cut short
    cells = live.read_live(tmp_path)
    assert [(c["key"][0], c["alive"]) for c in cells] == [("a", True), ("b", False), ("c", True)]


def test_status_describes_the_store_the_run_and_each_cell_in_training(tiny_root, tmp_path):
    out = tmp_path / "out"
    run_matrix(matrix(tiny_root, methods='["lightgcn"]', targets="[0.5]", seeds="[0, 1]"), out, **QUIET)
    assert list((out / live.LIVE_DIR).glob("*.json")) == []  # every cell removed its file
    _live_file(out)
    holder = f"PID {os.getpid()} on {socket.gethostname()}, started 2026-11-29T04:37:45+00:00"
    (out / LOCK_FILE).write_text(holder + "\n")
    status = folder_status(out)
    assert status.statuses == {"ok": 2} and status.latest_run["name"] == "m"
    text = describe(status, now=status.live[0]["updated"] + 30)
    assert f"a run is writing here (PID {os.getpid()} on" in text
    assert "store: 2 ok" in text and "latest run: m, started" in text and "(finished)" in text
    assert ("gowalla/dsl[emb=0.5]/seed0: training, stage 'dsl-sparse', epoch 120/600 (resumed from epoch 40)"
            in text)
    assert ("valid recall@20 0.1702; best 0.1711 at epoch 110 (2/60 validations since); stage time 2.0 h; "
            "at most 7.9 h to the epoch budget; last epoch 64.2 s; checkpoint at epoch 118; "
            "updated 30 s ago") in text


def test_status_of_a_killed_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_FILE).write_text(f"PID {pid} on {socket.gethostname()}, started 2026-11-29T04:37:45+00:00\n")
    _live_file(out, pid=pid, checkpoint_epoch=0)
    tally = {"name": "m", "cells": 3, "already_done": 0, "to_run": 3, "finished": 1, "ok": 1, "failed": 0,
             "cell_seconds": 60.0, "pid": pid, "host": socket.gethostname(), "updated": time.time()}
    (out / live.LIVE_DIR / live.RUN_FILE).write_text(json.dumps(tally))
    status = folder_status(out)
    assert len(status.live) == 1 and status.run_progress["finished"] == 1  # run.json is not a cell
    text = describe(status)
    assert (f"  the run of process {pid} (now gone): 3 of its 3 cells to run (0 already stored), 1 finished "
            "(1 ok, 0 failed)\n") in text
    assert text.startswith(f"{out}: no run is writing here")
    assert "store: no cells yet" in text
    assert f"STOPPED (process {pid} is gone)" in text and "no checkpoint saved yet" in text


def test_status_command(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _live_file(out)
    assert main(["status", str(out), "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["running"] is False and found["cells"] == {}
    assert found["live"][0]["epoch"] == 120 and found["live"][0]["alive"] is True
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "missing is not a folder (give the --out folder of a run)" in capsys.readouterr().err


def test_a_run_clears_files_a_killed_run_left(tiny_root, tmp_path):
    out = tmp_path / "out"
    stale = _live_file(out, pid=_dead_pid())
    run_matrix(matrix(tiny_root, methods='["lightgcn"]', targets="[0.5]", seeds="[0]"), out, **QUIET)
    assert not (out / live.LIVE_DIR / f"{stale['key']}.json").exists()


class _Recording:
    """An executor that records the cells it is given and runs them in this process."""

    def __init__(self, in_process: bool) -> None:
        self.in_process, self.name, self.concurrent_cells = in_process, "recording", 1
        self.specs = []

    def run(self, specs):
        from bench.cell import run_cell

        for spec in specs:
            self.specs.append(spec)
            yield run_cell(spec)

    def close(self):
        pass


@pytest.mark.parametrize(("in_process", "progress", "bars"),
                         [(True, True, True), (True, False, False), (False, True, False)])
def test_epoch_bars_only_for_cells_in_the_runs_process(tiny_root, tmp_path, in_process, progress, bars):
    executor = _Recording(in_process)
    out = tmp_path / "out"
    config = matrix(tiny_root, methods='["lightgcn"]', targets="[0.5]", seeds="[0]")
    run_matrix(config, out, executor=executor, **{**QUIET, "progress": progress})
    (spec,) = executor.specs
    assert spec.progress is bars and spec.live_dir == str(out.resolve() / live.LIVE_DIR)


def test_the_run_keeps_its_own_tally_while_it_runs_and_removes_it_at_the_end(tiny_root, tmp_path):
    out = tmp_path / "out"
    seen = []
    config = matrix(tiny_root, methods='["lightgcn"]', targets="[0.5]", seeds="[0, 1]")
    run_matrix(config, out, on_result=lambda r: seen.append(live.read_run(out)), **QUIET)
    assert [(r["finished"], r["ok"], r["failed"], r["to_run"], r["cells"], r["alive"]) for r in seen] == [
        (1, 1, 0, 2, 2, True), (2, 2, 0, 2, 2, True)]
    assert seen[0]["name"] == "m" and seen[0]["cell_seconds"] > 0
    assert live.read_run(out) is None  # ended
    # a rerun has nothing left to run
    run_matrix(config, out, on_result=lambda r: seen.append(r), **QUIET)
    assert len(seen) == 2 and live.read_run(out) is None


def test_status_tells_the_runs_tally_and_a_rough_time_for_the_rest():
    from bench.status import describe_run_progress

    run = {"name": "m", "cells": 12, "already_done": 2, "to_run": 10, "finished": 4, "ok": 3, "failed": 1,
           "cell_seconds": 1200.0, "pid": 1, "alive": True}
    assert describe_run_progress(run) == (
        "  this run: 10 of its 12 cells to run (2 already stored), 4 finished (3 ok, 1 failed); the other 6 "
        "take about 30 min at the mean so far")
    gone = describe_run_progress({**run, "alive": False, "pid": 77})
    assert gone == ("  the run of process 77 (now gone): 10 of its 12 cells to run (2 already stored), "
                    "4 finished (3 ok, 1 failed)")
