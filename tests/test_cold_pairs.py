"""Validation and test pairs whose user or item never occurs in train: counted, warned, optionally dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data.catalog import CatalogError
from bench.data.dataset import InteractionData
from bench.data.loading import load_dataset

TRAIN = "0 0\n0 1\n1 1\n1 2\n2 0\n2 2\n"
# valid: (0,2) warm, (3,0) cold user; test: (1,0) warm, (0,3) cold item, (3,3) cold both, (2,1) warm
VALID = "0 2\n3 0\n"
TEST = "1 0\n0 3\n3 3\n2 1\n"


def write_dataset(root: Path, split: str = 'split = { protocol = "given" }') -> Path:
    folder = root / "cold"
    folder.mkdir(parents=True)
    for name, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (folder / f"{name}.txt").write_text(text)
    (root / "cold.toml").write_text(
        f'{split}\n[[source]]\nkind = "local"\nformat = "edgelist"\ndir = "cold"\n'
        'files = { train = "train.txt", valid = "valid.txt", test = "test.txt" }\n')
    return root


def brute_force(data: InteractionData, split: str) -> dict[str, int]:
    users, items = set(data.train[:, 0].tolist()), set(data.train[:, 1].tolist())
    pairs = [tuple(p) for p in getattr(data, split).tolist()]
    return {"cold_user": sum(u not in users for u, _ in pairs),
            "cold_item": sum(i not in items for _, i in pairs),
            "cold": sum(u not in users or i not in items for u, i in pairs)}


def test_cold_pairs_are_counted_per_split(tmp_path):
    data = load_dataset("cold", write_dataset(tmp_path), use_cache=False)
    cold = data.stats()["cold_pairs"]
    assert cold["valid"] == {"pairs": 2, "share": 0.5, **brute_force(data, "valid")}
    assert cold["test"] == {"pairs": 4, "share": 0.5, **brute_force(data, "test")}
    assert (cold["test"]["cold_user"], cold["test"]["cold_item"], cold["test"]["cold"]) == (1, 2, 2)


def test_random_splits_match_the_brute_force_count():
    rng = np.random.default_rng(0)
    pairs = np.unique(rng.integers(0, [50, 80], size=(600, 2)), axis=0)
    rng.shuffle(pairs)
    data = InteractionData("r", 50, 80, pairs[:300], pairs[300:400], pairs[400:])
    for split in ("valid", "test"):
        counts = data.cold_pairs()[split]
        assert {k: counts[k] for k in ("cold_user", "cold_item", "cold")} == brute_force(data, split)
        assert counts["cold"] > 0  # the check is not vacuous


def test_drop_cold_keeps_only_warm_pairs_and_counts_what_it_dropped(tmp_path):
    kept = load_dataset("cold", write_dataset(tmp_path / "a"), use_cache=False)
    dropping = write_dataset(tmp_path / "b", 'split = { protocol = "given", drop_cold = true }')
    dropped = load_dataset("cold", dropping, use_cache=False)
    assert dropped.valid.tolist() == [[0, 2]]
    assert dropped.test.tolist() == [[1, 0], [2, 1]]
    assert np.array_equal(dropped.train, kept.train)
    assert dropped.stats()["cold_pairs_dropped"] == {"valid": 1, "test": 2}
    assert dropped.cold_pairs()["test"]["cold"] == 0
    assert "cold_pairs_dropped" not in kept.stats()  # off by default: the published splits stay


def test_drop_cold_must_be_a_boolean(tmp_path):
    root = write_dataset(tmp_path, 'split = { protocol = "given", drop_cold = "true" }')
    with pytest.raises(CatalogError, match=r"cold\.toml.*split\.drop_cold.*true or false"):
        load_dataset("cold", root, use_cache=False)


def test_datasets_warns_when_a_split_has_many_cold_pairs(tmp_path, capsys):
    root = write_dataset(tmp_path)
    assert main(["datasets", "cold", "--json", "--data-dir", str(root)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cold_pairs"]["test"]["cold"] == 2
    assert "50.0% of the test pairs (2 of 4)" in captured.err and "drop_cold = true" in captured.err


def _cell_with_cold(share: float, seed: int):
    import dataclasses

    from tests.helpers import result

    cold = {"pairs": 1000, "cold_user": 10, "cold_item": int(share * 1000) - 10, "cold": int(share * 1000),
            "share": share}
    cell = result("lightgcn", 1.0, seed)
    return dataclasses.replace(cell, info={"cold_pairs": {"valid": {**cold, "share": 0.0, "cold": 0},
                                                          "test": cold}})


@pytest.mark.parametrize("share, noted", [(0.05, True), (0.01, False)])
def test_the_report_notes_a_split_with_many_cold_pairs(tmp_path, share, noted):
    from bench.report import build_report
    from bench.store import ResultStore

    with ResultStore(tmp_path / "results.sqlite") as store:
        for seed in (0, 1):
            store.put(_cell_with_cold(share, seed))
    build_report([tmp_path / "results.sqlite"], tmp_path / "rep", figures=False)
    markdown = (tmp_path / "rep" / "summary.md").read_text()
    html = (tmp_path / "rep" / "index.html").read_text()
    sentence = f"{share:.1%} of the test pairs ({int(share * 1000)} of 1000"
    assert (sentence in markdown) is noted and (sentence in html) is noted
    assert "of the valid pairs" not in markdown


def test_a_cell_records_its_datasets_cold_pairs(tmp_path, tiny_root, toy_plugin):
    from tests.helpers import run_single_cell

    cell = run_single_cell(tiny_root, tmp_path / "o", 'datasets = ["tiny"]\nmethods = ["lightgcn"]\n'
                                                      "emb_targets = [0.5]\nseeds = [0]\n")
    assert cell["info"]["cold_pairs"] == load_dataset("tiny", tiny_root).cold_pairs()
