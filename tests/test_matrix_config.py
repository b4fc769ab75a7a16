"""Matrix configs: expansion into cells, and bad configs failing before any training, naming the key."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.config import ConfigError, load_config
from tests.helpers import tiny_config

BASE = 'datasets = ["tiny"]\nseeds = [0, 1]\n'


def test_quick_matrix_is_every_method_at_three_targets():
    from bench.registry import available_methods

    cfg = load_config(None)
    assert cfg.name == "quick" and cfg.datasets == ["ml-100k"]
    assert [m.name for m in cfg.methods] == list(available_methods())
    assert [t.emb for t in cfg.targets] == [0.5, 0.2, 0.1]
    assert cfg.seeds == [0]


def test_cells_cross_targets_and_seeds_and_run_the_reference_once(tiny_root, toy_plugin):
    cfg = load_config(tiny_config(tiny_root, BASE + 'methods = ["lightgcn", "toy-truncate"]\n'
                                                    "emb_targets = [0.5, 0.25]\n"))
    cells = cfg.cells("cpu", {"tiny": "abc"}, "v1")
    got = sorted((c.method, c.emb_target, c.seed) for c in cells)
    assert got == [("lightgcn", 1.0, 0), ("lightgcn", 1.0, 1),
                   ("toy-truncate", 0.25, 0), ("toy-truncate", 0.25, 1),
                   ("toy-truncate", 0.5, 0), ("toy-truncate", 0.5, 1)]
    assert len({c.key for c in cells}) == 6
    # the key covers the dataset checksum and the code version, not where files live
    c = cells[0]
    import dataclasses

    assert dataclasses.replace(c, data_dir="/elsewhere", run="x").key == c.key
    assert dataclasses.replace(c, dataset_checksum="other").key != c.key
    assert dataclasses.replace(c, code_version="v2").key != c.key


def test_method_tables_give_options_budget_and_targets(tiny_root, toy_plugin):
    cfg = load_config(tiny_config(tiny_root, BASE + "emb_targets = [0.5]\n"
                                  "[methods.lightgcn]\n"
                                  "[methods.toy-truncate]\nslack = 0.25\ntargets = [[0.25], {emb = 0.75}]\n"
                                  "[methods.toy-truncate.budget]\nepochs = 5\n"))
    cells = [c for c in cfg.cells("cpu", {}, "v") if c.method == "toy-truncate"]
    assert sorted({c.emb_target for c in cells}) == [0.25, 0.75]
    assert all(c.options == {"slack": 0.25} and c.budget["epochs"] == 5 for c in cells)


def test_edge_targets_cross_emb_targets(tiny_root):
    from bench.contract import Target

    cfg = load_config(tiny_config(tiny_root, BASE + 'methods = ["lightgcn"]\n'
                                                    "emb_targets = [0.5, 0.2]\nedge_targets = [1.0, 0.5]\n"))
    assert cfg.targets == [Target(0.5, 1.0), Target(0.5, 0.5), Target(0.2, 1.0), Target(0.2, 0.5)]


@pytest.mark.parametrize("body, message", [
    ('methods = ["nope"]\nemb_targets = [0.5]\n', r"methods.nope: unknown method 'nope'; available:"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\ndatasets = ["nodata"]\n',
     "datasets: unknown dataset 'nodata'"),
    ('methods = ["lightgcn"]\nemb_targets = [0.0]\n',
     r"emb_targets: emb target must be a number in \(0, 1\]"),
    ('methods = ["lightgcn"]\nemb_targets = [1.5]\n',
     r"emb_targets: emb target must be a number in \(0, 1\]"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\nedge_targets = [0]\n', "edge_targets: edge target"),
    ('methods = ["lightgcn"]\ntargets = [[0.5, 2]]\n', r"targets\[0\]: edge target"),
    ('methods = ["lightgcn"]\ntargets = [{emb = 0.5, edges = 1}]\n', r"targets\[0\]: unknown target key"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\ntargets = [0.5]\n', "either targets or emb_targets"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\nepochs = 3\n', "epochs: unknown key"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\n[methods2]\n', "methods2: unknown key"),
    ('methods = ["lightgcn"]\n', "emb_targets: missing"),
    ('emb_targets = [0.5]\n', "methods: missing"),
    ('methods = ["lightgcn", "lightgcn"]\nemb_targets = [0.5]\n', "listed twice"),
    ('methods = ["toy-truncate"]\nemb_targets = [0.5]\nedge_targets = [0.5]\n',
     "targets: method 'toy-truncate' cannot compress edge"),
    ('emb_targets = [0.5]\n[methods.toy-truncate]\nslak = 1\n',
     r"methods.toy-truncate: unknown option\(s\) for method 'toy-truncate': slak \(known: slack\)"),
    ('emb_targets = [0.5]\n[methods.toy-truncate]\nslack = "big"\n',
     "toy-truncate.slack must be a finite number"),
    ('emb_targets = [0.5]\n[methods.toy-truncate]\ntargets = [[0.5, 0.5]]\n',
     "methods.toy-truncate: method 'toy-truncate' cannot compress edge"),
    ('emb_targets = [0.5]\n[methods.toy-truncate.budget]\nepoch = 3\n',
     "methods.toy-truncate.budget.epoch: unknown budget option"),
    ('emb_targets = [0.5]\n[methods.toy-truncate.budget]\ndim = 32\n',
     "methods.toy-truncate.budget.dim: a method cannot change the model's shape"),
    ('emb_targets = [0.5]\n[methods.toy-truncate.budget]\nepochs = 3\nn_layers = 1\n',
     "methods.toy-truncate.budget.n_layers: a method cannot change the model's shape"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\nworkers = 0\n', "workers: must be an integer >= 1, got 0"),
    ('methods = ["lightgcn"]\nemb_targets = [0.5]\nworkers = "2"\n', "workers: must be an integer >= 1"),
])
def test_bad_configs_name_the_key(tiny_root, toy_plugin, body, message):
    body = body if "datasets" in body else 'datasets = ["tiny"]\n' + body
    body = body if "seeds" in body else "seeds = [0]\n" + body
    path = tiny_config(tiny_root, body)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("budget, message", [
    ("[budget]\nepochs = 0\n", "budget: invalid training option"),
    ("[budget]\nseed = 3\n", r"budget.seed: unknown budget option \(seeds and device are top-level keys\)"),
    ('[budget]\nlr = "fast"\n', "budget: "),
    ("[measure]\nlatency_repeats = 0\n", r"measure.latency_repeats: must be an integer >= 1"),
    ("[measure]\nlatency_batches = [0]\n", "measure.latency_batches: must be a list of positive integers"),
    ("[measure]\ntimer = 1\n", "measure.timer: unknown option"),
])
def test_bad_budget_and_measure_tables(tmp_path, tiny_root, budget, message):
    path = tmp_path / "c.toml"
    path.write_text(f'name = "c"\ndata_dir = "{tiny_root}"\n' + BASE
                    + 'methods = ["lightgcn"]\nemb_targets = [0.5]\n' + budget)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_a_bad_config_before_training(tiny_root, tmp_path, capsys):
    path = tiny_config(tiny_root, BASE + 'methods = ["lightgcn"]\nemb_targets = [2]\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recshrink: error: ") and "emb_targets" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
