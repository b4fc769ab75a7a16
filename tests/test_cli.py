"""The command line: stable JSON keys, training on a small dataset, clear errors."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from tests.helpers import clustered_data


def test_datasets_json_has_the_stable_keys(tiny_root, capsys):
    assert main(["datasets", "tiny", "--json", "--data-dir", str(tiny_root)]) == 0
    stats = json.loads(capsys.readouterr().out)
    data = clustered_data()
    assert stats["name"] == "tiny"
    assert (stats["n_users"], stats["n_items"]) == (60, 40)
    assert (stats["n_train"], stats["n_valid"], stats["n_test"]) == (
        len(data.train), len(data.valid), len(data.test))


def test_datasets_listing_shows_builtins_and_user_files(tiny_root, capsys):
    assert main(["datasets", "--json", "--data-dir", str(tiny_root)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"ml-100k", "yelp-lightgnn", "citeulike", "gowalla", "tiny"} <= set(rows)
    assert rows["tiny"]["available"] == "present"
    assert rows["yelp-lightgnn"]["available"] == "missing"  # not in this data root
    assert main(["datasets", "--data-dir", str(tiny_root)]) == 0
    assert "point --data-dir (or $RECSHRINK_DATA) at the folder" in capsys.readouterr().out


def test_train_json_has_the_stable_keys(tiny_root, capsys):
    code = main(["train", "--dataset", "tiny", "--data-dir", str(tiny_root), "--epochs", "3",
                 "--dim", "8", "--batch-size", "64", "--lr", "0.05", "--ks", "5,10",
                 "--valid-metric", "recall@10", "--seed", "1", "--device", "cpu", "--json",
                 "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for m in ("recall", "ndcg", "precision", "hit", "mrr"):
        for k in (5, 10):
            assert 0.0 <= out[f"{m}@{k}"] <= 1.0
    assert out["epochs"] == 3 and 1 <= out["best_epoch"] <= 3
    assert out["train_seconds_per_epoch"] > 0
    assert out["config"]["dim"] == 8 and out["seed"] == 1
    assert out["environment"]["versions"]["torch"]
    assert len(out["dataset_fingerprint"]) == 64


def test_train_json_has_the_per_epoch_history(tiny_root, capsys):
    assert main(["train", "--dataset", "tiny", "--data-dir", str(tiny_root), "--epochs", "4",
                 "--eval-every", "2", "--dim", "8", "--batch-size", "64", "--lr", "0.05", "--ks", "10",
                 "--valid-metric", "recall@10", "--seed", "1", "--device", "cpu", "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    history = out["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 and row["seconds"] > 0 for row in history)
    checked = {row["epoch"]: row["valid_recall@10"] for row in history if "valid_recall@10" in row}
    assert sorted(checked) == [2, 4]
    # the kept model is the best validation row of the history
    assert out["valid_recall@10"] == max(checked.values()) == checked[out["best_epoch"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--dataset", "tiny", "--method", "dsl"], "trains the lightgcn backbone only"),
        (["train", "--dataset", "tiny", "--lr", "0"], "lr=0.0"),
        (["train", "--dataset", "tiny", "--ks", "a,b"], "--ks must be"),
        (["datasets", "yelp-lightgnn"], "is not available"),
    ],
)
def test_errors_are_reported_without_traceback(tiny_root, capsys, args, message):
    assert main([*args, "--data-dir", str(tiny_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recshrink: error:") and message in err
    assert err.count("\n") == 1, err  # one line, as the README says


def test_methods_lists_knobs_as_the_toml_keys_they_are(capsys):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "--update_ratio" not in out
    assert "options, set in a matrix config's [methods.dsl] table" in out
    # each knob line is valid TOML up to its comment, and parses to the knob's default
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("update_ratio = "))
    assert tomllib.loads(line.strip().split("  ")[0]) == {"update_ratio": 0.5}
    protect = next(ln for ln in out.splitlines() if ln.strip().startswith("protect = "))
    assert "(>= 0, or -1)" in protect
