"""The grid-cost benchmark: one-cell configs that reproduce their grid's cells, units of cells that
share cached stages, the paired comparison, and one real run on the tiny dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bench.config import load_config
from bench.perf import grid_cost
from tests.helpers import tiny_config

REPO = Path(__file__).parents[1]


def test_each_one_cell_config_expands_to_exactly_its_grid_cell(tmp_path):
    cells = grid_cost.grid_cells(grid_cost.DEFAULT_CONFIGS, "yelp-lightgnn", 0)
    # yelp-lightgnn: lightgnn x 3; yelp-methods: dense + 5 methods... ; legcf-lerg at d = 128
    assert len(cells) == 29 and len({c.ident for c in cells}) == 29
    for cell in cells:
        path = tmp_path / "c.toml"
        path.write_text(grid_cost.cell_toml(cell, "one"))
        (spec,) = load_config(path).cells("cpu", {}, "v")
        assert (spec.dataset, spec.method, spec.seed) == (cell.dataset, cell.method, 0)
        assert (spec.emb_target, spec.edge_target, spec.layers_target) == (cell.emb, cell.edge, cell.layers)
        assert (spec.options, spec.budget, spec.measure) == (cell.options, cell.budget, cell.measure)


def test_cells_sharing_cached_stages_form_one_unit_in_planned_order():
    cells = grid_cost.grid_cells(grid_cost.DEFAULT_CONFIGS, "yelp-lightgnn", 0)
    units = grid_cost.units(cells, first=("legcf", "lerg"))
    assert sorted(c.ident for u in units for c in u) == sorted(c.ident for c in cells)
    shared = [u for u in units if len(u) > 1]
    # d = 32 (lightgnn, the dense base, magnitude, unkd) and d = 128 (the dense base, magnitude)
    assert [sorted({c.method for c in u}) for u in shared] == [
        ["lightgcn", "lightgnn", "magnitude", "unkd"], ["lightgcn", "magnitude"]]
    for unit in shared:
        assert len({c.budget["dim"] for c in unit}) == 1
        dense = [i for i, c in enumerate(unit) if c.method == "lightgcn"]
        magnitude = [i for i, c in enumerate(unit) if c.method == "magnitude"]
        assert dense and max(dense) < min(magnitude)
    assert units[0][0].method == "legcf"  # the kinds asked for first
    assert grid_cost.units(cells)[0] == shared[0]  # else the largest unit


def row(cell: str, cpu: float, recall: str) -> dict:
    return {**dict.fromkeys(grid_cost.FIELDS, ""), "label": "x", "config": "g", "cell": cell,
            "status": "ok", "cpu_s": cpu, "recall@20": recall, "ndcg@20": "0.1", "git_sha": "abc",
            "metrics": json.dumps({"recall@20": float(recall), "ndcg@20": 0.1})}


def write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=grid_cost.FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def test_compare_pairs_cells_sums_cpu_and_checks_metrics(tmp_path):
    before = write(tmp_path / "grid-before.csv", [row("a", 300, "0.5"), row("b", 100, "0.25"),
                                                  row("c", 50, "0.1")])
    after = write(tmp_path / "grid-after.csv", [row("a", 100, "0.5"), row("b", 100, "0.2500001")])
    assert grid_cost.compare(before, after, tmp_path) == 0
    got = {r["cell"]: r for r in csv.DictReader(open(tmp_path / "grid.csv"))}
    assert got["g:a"]["ratio"] == "3.0" and got["g:a"]["metrics_identical"] == "True"
    assert got["g:b"]["metrics_identical"] == "False" and got["g:c"]["cpu_s_after"] == ""
    md = (tmp_path / "grid.md").read_text()
    assert "Paired cells: 2; CPU before 0.11 h, after 0.06 h (before/after 2.00)" in md
    assert "identical in 1 of 2" in md and "Not yet measured on both sides (1): g:c" in md


def test_a_tiny_grid_runs_cell_by_cell_and_resumes(tiny_root, tmp_path):
    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn", "random-drop"]\n'
                                    "emb_targets = [0.5]\nseeds = [0]\n")
    args = ["run", "--run", f"now={REPO}", "--configs", str(config), "--dataset", "tiny",
            "--work", str(tmp_path / "work"), "--data-dir", str(tiny_root), "--out", str(tmp_path / "out")]
    assert grid_cost.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "grid-now.csv")))
    assert [r["cell"] for r in sorted(rows, key=lambda r: r["cell"])] == [
        "tiny/lightgcn[emb=1]/seed0", "tiny/random-drop[emb=0.5]/seed0"]
    for r in rows:
        metrics = json.loads(r["metrics"])
        assert r["status"] == "ok" and float(r["cpu_s"]) > 0 and r["git_sha"]
        assert metrics and all(0 <= v <= 1 for k, v in metrics.items() if "@" in k)
    assert grid_cost.main(args) == 0  # everything measured: nothing runs again
    assert len(list(csv.DictReader(open(tmp_path / "out" / "grid-now.csv")))) == 2
