"""Reports from a fixed, generated results store: both CSVs checked exactly, statistics, merging."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.report import build_report
from bench.report.stats import holm
from bench.store import ResultStore
from tests.helpers import FAILED, FLAGGED, MEASURES, PLAN, SEEDS, cells_plan, result, value


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.start_run("gen", 'name = "gen"\n', "recshrink run gen.toml", {})
        for m, t, s in cells_plan():
            store.put(result(m, t, s))
    return path


def expected_cells() -> pd.DataFrame:
    rows = []
    order = sorted(cells_plan(), key=lambda c: (c[0], -c[1], c[2]))
    for m, t, s in order:
        r = result(m, t, s)
        base = {"run": "gen", "key": r.key, "dataset": "toyset", "method": m, "variant": m,
                "emb_target": t, "edge_target": math.nan, "layers_target": math.nan, "seed": s,
                "status": r.status, "flagged": r.flagged, "flag_reason": r.flag_reason,
                "error": r.error, "emb_achieved": r.measurements.get("emb_achieved", math.nan),
                "edge_achieved": math.nan, "options": "{}", "budget": '{"epochs": 5}', "device": "cpu",
                "base_checkpoint": r.base_checkpoint, "dataset_checksum": "c0ffee",
                "code_version": "0.1.0+abc", "finished_at": r.finished_at}
        if r.status == "failed":
            rows.append({**base, "name": math.nan, "value": math.nan})
            continue
        for name in ("ndcg@20", "recall@20", *MEASURES):
            rows.append({**base, "name": name, "value": value(m, t, s, name)})
    frame = pd.DataFrame(rows)
    frame["edge_achieved"] = frame["edge_achieved"].astype(float)
    return frame


def test_cells_csv_exactly(store_path, tmp_path):
    paths = build_report([store_path], tmp_path / "rep", figures=False)
    expected = expected_cells()
    # the dtypes come back with a plain read_csv; exact values need the round-trip float parser
    # (pandas < 3 parses with "high" precision by default, which may be one ulp off)
    assert pd.read_csv(paths["cells"]).dtypes.to_dict() == expected.dtypes.to_dict()
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    got = pd.read_csv(paths["cells"], **exact)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_summary_csv_exactly(store_path, tmp_path):
    paths = build_report([store_path], tmp_path / "rep", figures=False)
    got = pd.read_csv(paths["summary"])
    names = ["bits", "emb_achieved", "flops", "ndcg@20", "recall@20"]
    rows = []
    # sorted by target (loosest first), then method: the methods compared at one target sit together
    for t, m in sorted(((t, m) for m, ts in PLAN.items() for t in ts), key=lambda tm: (-tm[0], tm[1])):
        seeds = [s for s in SEEDS if (m, t, s) != FAILED]
        row = {"dataset": "toyset", "variant": m, "emb_target": t, "edge_target": math.nan,
               "layers_target": math.nan, "method": m, "n_seeds": len(seeds),
               "n_failed": len(SEEDS) - len(seeds),
               "n_flagged": int(any((m, t, s) == FLAGGED for s in seeds))}
        for n in names:
            v = np.array([value(m, t, s, n) for s in seeds])
            ref = np.array([value("lightgcn", 1.0, s, n) for s in seeds])
            row[f"{n}_mean"] = v.mean()
            row[f"{n}_std"] = v.std(ddof=1)
            row[f"{n}_rel"] = (v / ref - 1).mean()
        rows.append(row)
    expected = pd.DataFrame(rows)
    base_cols = list(expected.columns)
    assert list(got.columns[: len(base_cols)]) == base_cols
    pd.testing.assert_frame_equal(got[base_cols], expected, check_exact=False, rtol=1e-12, atol=1e-15)

    # statistics: paired t-tests on the common seeds, Holm within (dataset, metric, reference)
    stat_cols = [c for c in got.columns if c not in base_cols]
    assert stat_cols == ["ndcg@20_p_lightgcn", "ndcg@20_p_random-drop", "recall@20_p_lightgcn",
                         "recall@20_p_random-drop", "ndcg@20_sig_lightgcn", "ndcg@20_sig_random-drop",
                         "recall@20_sig_lightgcn", "recall@20_sig_random-drop"]
    family = [(m, t) for m in ("random-drop", "toy-a") for t in PLAN[m]]
    raw = []
    for m, t in family:
        seeds = [s for s in SEEDS if (m, t, s) != FAILED]
        a = [value(m, t, s, "recall@20") for s in seeds]
        b = [value("lightgcn", 1.0, s, "recall@20") for s in seeds]
        raw.append(stats.ttest_rel(a, b).pvalue)
    adjusted = holm(raw)
    for (m, t), p in zip(family, adjusted, strict=True):
        row = got[(got["variant"] == m) & (got["emb_target"] == t)]
        assert row["recall@20_p_lightgcn"].item() == pytest.approx(p, rel=1e-12)
    # toy-a against random drop: only toy-a rows have a random-drop p-value
    assert got.loc[got["method"] != "toy-a", "recall@20_p_random-drop"].isna().all()
    assert got.loc[got["method"] == "toy-a", "recall@20_p_random-drop"].notna().all()


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_html_report_has_the_sections(store_path, tmp_path):
    # claims=(): the table count must not depend on which methods declare claims
    paths = build_report([store_path], tmp_path / "rep", latex=True, claims=())
    page = paths["html"].read_text()
    assert page.count("<table") == 4  # the toyset summary, problems, methods, environment
    assert "RuntimeError: boom" in page and "flagged: emb achieved 0.5500 vs target 0.5" in page
    assert "recshrink run gen.toml" in page and '<pre>name = &#34;gen&#34;' in page
    assert page.count("data:image/png;base64,") >= 6
    assert "http://" not in page and "https://" not in page  # self-contained
    tex = (tmp_path / "rep" / "summary-toyset.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and r"random-drop & 0.5" in tex


def test_markdown_summary_has_the_html_rows_and_numbers(store_path, tmp_path):
    paths = build_report([store_path], tmp_path / "rep", figures=False)
    lines = paths["markdown"].read_text().splitlines()
    assert lines[0] == "# recshrink report: gen" and "## toyset" in lines
    header = next(line for line in lines if line.startswith("| method |"))
    assert header.startswith("| method | target | seeds | recall@20 | ndcg@20 |")

    def row(prefix):
        (line,) = [line for line in lines if line.startswith(prefix)]
        return line

    recalls = [value("random-drop", 0.5, s, "recall@20") for s in SEEDS]
    flagged = row("| random-drop | 0.5⚑ | 3 |")  # seed 1 missed its target
    assert f"{np.mean(recalls):.4f} ± {np.std(recalls, ddof=1):.4f}" in flagged
    failed = row("| toy-a | 0.2 | 2 (+1 failed) |")  # seed 2 failed: the mean is over seeds 0 and 1
    recalls = [value("toy-a", 0.2, s, "recall@20") for s in (0, 1)]
    assert f"{np.mean(recalls):.4f} ± {np.std(recalls, ddof=1):.4f}" in failed
    # bold marks the best per target (the uncompressed model competes, so no recall is bold here;
    # the fewest bits are), and the significance markers follow the number as in the HTML table
    toy = row("| toy-a | 0.5 |")
    assert f"| {np.mean([value('toy-a', 0.5, s, 'recall@20') for s in SEEDS]):.4f} ± " in toy
    assert "| **1.6e+04** |" in toy and "▼⁺" in toy
    assert "## Notes" not in lines  # no cell asked for one


def test_reports_merge_several_stores(tmp_path):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with ResultStore(a) as sa, ResultStore(b) as sb:
        for i, (m, t, s) in enumerate(cells_plan()):
            (sa if i % 2 else sb).put(result(m, t, s))
        sb.put(result("lightgcn", 1.0, 0))  # the same cell in both stores counts once
    code = main(["report", str(a), str(tmp_path), "-o", str(tmp_path / "rep")])
    assert code == 2  # tmp_path holds no results.sqlite: a clear error
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "rep")]) == 0
    got = pd.read_csv(tmp_path / "rep" / "cells.csv")
    assert got["key"].nunique() == len(cells_plan())
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert len(summary) == 5 and summary["n_seeds"].sum() == len(cells_plan()) - 1
    assert json.loads(got["budget"].iloc[0]) == {"epochs": 5}


def test_a_note_counts_cells_not_the_stages_that_share_a_name(tmp_path):
    import dataclasses

    from bench.report import build_report
    from bench.store import ResultStore
    from tests.helpers import result

    run = {"stage": "lightgnn-run", "epochs": 5, "best_epoch": 5, "budget_epochs": 5, "at_budget": True}
    runs = [run] * 4
    with ResultStore(tmp_path / "results.sqlite") as store:
        for seed in range(3):
            store.put(dataclasses.replace(result("toy-a", 0.5, seed), info={"training_stages": runs}))
    build_report([tmp_path / "results.sqlite"], tmp_path / "rep", figures=False)
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "toy-a (3 cells): stage lightgnn-run was still improving" in text
