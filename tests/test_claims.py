"""Papers' claims checked against synthetic stores whose answers are known: verdicts, Holm across
claims, transfers, relations and margins, arm selection, and the report's Claims section."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.claims import Arm, Claim
from bench.report import build_report
from bench.report.claims import CLAIM_COLUMNS, evaluate_claims, registered_claims
from bench.report.stats import holm
from bench.report.tables import cells_frame, load_cells
from bench.result import CellResult
from bench.store import ResultStore

SEEDS = (0, 1, 2, 3, 4)
# the uncompressed model's recall per seed, and small per-seed wobbles
REF = {"alpha": [0.300, 0.304, 0.297, 0.302, 0.299], "beta": [0.200, 0.203, 0.198, 0.201, 0.199]}
WOBBLE = [0.0004, -0.0003, 0.0001, -0.0002, 0.0003]
NOISE = [0.03, -0.025, 0.02, -0.03, 0.01]


CONVERGED = {"training_stages": [{"stage": "base", "epochs": 5, "best_epoch": 3, "at_budget": False}]}


def cell(dataset: str, method: str, seed: int, recall: float | None, emb: float = 1.0,
         edge: float | None = None, options: dict | None = None, info: dict | None = None) -> CellResult:
    """A stored cell with test recall@20 ``recall`` (None: a failed cell), whose training stages
    converged unless ``info`` says otherwise."""
    options = options or {}
    spec = {"dataset": dataset, "method": method, "emb_target": emb, "edge_target": edge,
            "layers_target": None, "seed": seed, "options": options, "budget": {"epochs": 5},
            "device": "cpu", "run": "claims"}
    key = f"{dataset}-{method}-{json.dumps(options, sort_keys=True)}-{emb}-{edge}-{seed}"
    failed = recall is None
    return dataclasses.replace(
        CellResult.start(spec, key), status="failed" if failed else "ok",
        error="RuntimeError: boom" if failed else None,
        metrics={} if failed else {"recall@20": recall}, measurements={}, timings={"total": 1.0},
        info=CONVERGED if info is None else info,
        seconds=1.0, environment={"device": "cpu", "versions": {}, "git_sha": "abc"},
        finished_at=f"2026-11-21T10:00:{seed:02d}+00:00")


def planned_cells() -> list[CellResult]:
    """alpha and beta: the reference and ``good`` (0.5% below it) at every seed; on alpha also
    ``bad`` (20% below), ``noisy`` (the reference plus large noise), ``single`` (one seed, far above),
    two ``dsl`` variants, a ``sometimes`` variant that always failed, all at emb 0.5."""
    out = []
    for dataset, ref in REF.items():
        for s in SEEDS:
            out.append(cell(dataset, "lightgcn", s, ref[s]))
            out.append(cell(dataset, "good", s, 0.995 * ref[s] + WOBBLE[s], emb=0.5))
    ref = REF["alpha"]
    for s in SEEDS:
        out.append(cell("alpha", "bad", s, 0.8 * ref[s] + WOBBLE[s], emb=0.5))
        out.append(cell("alpha", "noisy", s, ref[s] + NOISE[s], emb=0.5))
        out.append(cell("alpha", "dsl", s, 1.05 * ref[s] + WOBBLE[s], emb=0.5,
                        options={"update_every": 50, "mode": "ema"}))
        out.append(cell("alpha", "dsl", s, 0.7 * ref[s] + WOBBLE[s], emb=0.5, options={"update_every": 10}))
        out.append(cell("alpha", "sometimes", s, None, emb=0.5))
    out.append(cell("alpha", "single", 0, 0.5, emb=0.5))
    return out


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.start_run("claims", 'name = "claims"\n', "recshrink run claims.toml", {})
        for r in planned_cells():
            store.put(r)
    return path


@pytest.fixture
def frame(store_path):
    with ResultStore(store_path, create=False) as store:
        return cells_frame(load_cells([store]))


DENSE = Arm("lightgcn")


def claim(id: str, subject: Arm, comparator: Arm = DENSE, relation: str = "at_least", margin: float = 0.02,
          datasets: tuple[str, ...] = ("alpha",), **kw) -> Claim:
    return Claim(id=id, method=subject.method, source="Paper (2024), Table 2", statement=f"{id} claim",
                 datasets=datasets, subject=subject, comparator=comparator, relation=relation,
                 margin=margin, **kw)


def by_id(rows: pd.DataFrame, claim_id: str, dataset: str = "alpha") -> pd.Series:
    (i,) = rows.index[(rows["claim"] == claim_id) & (rows["dataset"] == dataset)]
    return rows.loc[i]


def test_verdicts_holds_does_not_hold_inconclusive_not_run(frame):
    claims = [claim("good-within-2pct", Arm("good", emb=0.5)),
              claim("bad-within-2pct", Arm("bad", emb=0.5)),
              claim("noisy-above", Arm("noisy", emb=0.5), relation="above", margin=0.0),
              claim("single-above", Arm("single", emb=0.5), relation="above", margin=0.0),
              claim("good-above-random", Arm("good", emb=0.5), Arm("random-drop", emb=0.5), relation="above")]
    rows = evaluate_claims(frame, claims)
    assert list(rows.columns) == CLAIM_COLUMNS
    assert list(rows["claim"]) == [c.id for c in claims[:1]] * 2 + [c.id for c in claims[1:]]

    good = by_id(rows, "good-within-2pct")
    assert good["verdict"] == "holds" and good["reason"] == "" and good["n_seeds"] == 5
    subject = np.array([0.995 * r + w for r, w in zip(REF["alpha"], WOBBLE, strict=True)])
    assert good["subject_mean"] == pytest.approx(subject.mean())
    assert good["subject_std"] == pytest.approx(subject.std(ddof=1))
    assert good["comparator_mean"] == pytest.approx(np.mean(REF["alpha"]))
    assert good["mean_diff"] == pytest.approx((subject - 0.98 * np.array(REF["alpha"])).mean())
    assert good["seeds"] == "0;1;2;3;4" and good["subject_variant"] == "good"

    bad = by_id(rows, "bad-within-2pct")
    assert bad["verdict"] == "does not hold" and bad["mean_diff"] < 0 and bad["p_holm"] < 0.05

    noisy = by_id(rows, "noisy-above")
    assert noisy["verdict"] == "inconclusive" and noisy["reason"].startswith("not significant")
    assert noisy["p_holm"] >= 0.05

    single = by_id(rows, "single-above")
    assert single["verdict"] == "inconclusive" and single["reason"] == "too few seeds (1 paired)"
    assert single["n_seeds"] == 1 and math.isnan(single["p"]) and math.isnan(single["p_holm"])
    assert single["subject_mean"] == 0.5 and math.isnan(single["subject_std"])

    missing = by_id(rows, "good-above-random")
    assert missing["verdict"] == "not run" and math.isnan(missing["p"])
    assert missing["reason"] == "missing comparator (random-drop at emb=0.5) on alpha: no cells"
    assert missing["subject_mean"] == pytest.approx(subject.mean())  # the arm that ran is still shown


def test_not_run_names_each_missing_part(frame):
    claims = [claim("elsewhere", Arm("good", emb=0.5), datasets=("gamma",)),
              claim("failed", Arm("sometimes", emb=0.5)),
              claim("ambiguous", Arm("dsl", emb=0.5))]
    rows = evaluate_claims(frame, claims)
    elsewhere = by_id(rows, "elsewhere", "gamma")
    assert elsewhere["verdict"] == "not run" and not elsewhere["transferred"]
    assert elsewhere["reason"] == ("missing subject (good at emb=0.5) on gamma: no cells; "
                                   "comparator (lightgcn) on gamma: no cells")
    assert by_id(rows, "failed")["reason"] == (
        "missing subject (sometimes at emb=0.5) on alpha: no successful cells (5 not ok)")
    assert by_id(rows, "ambiguous")["reason"] == (
        "missing subject (dsl at emb=0.5) on alpha: matches several variants "
        "(dsl[mode=ema,update_every=50], dsl[update_every=10]): name options to pick one")


def test_holm_across_all_claim_rows(frame):
    claims = [claim("good-within-2pct", Arm("good", emb=0.5), datasets=("alpha", "beta")),
              claim("bad-within-2pct", Arm("bad", emb=0.5)),
              claim("noisy-above", Arm("noisy", emb=0.5), relation="above", margin=0.0),
              claim("single-above", Arm("single", emb=0.5), relation="above", margin=0.0)]
    rows = evaluate_claims(frame, claims)
    raw = []
    for _, r in rows.iterrows():
        if r["n_seeds"] < 2:
            raw.append(math.nan)
            continue
        ref = np.array(REF[r["dataset"]])
        subject = {"good": 0.995 * ref + WOBBLE, "bad": 0.8 * ref + WOBBLE, "noisy": ref + NOISE}[r["method"]]
        factor = 1 - r["margin"] if r["relation"] == "at_least" else 1 + r["margin"]
        raw.append(stats.ttest_rel(subject, factor * ref).pvalue)
    assert rows["p"].to_numpy() == pytest.approx(raw, nan_ok=True)
    # Holm by hand over the 4 rows with a p-value: sorted p_(i) times (m - i + 1), made monotone
    valid = sorted((p, i) for i, p in enumerate(raw) if not math.isnan(p))
    expected = [math.nan] * len(raw)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        expected[i] = running
    assert rows["p_holm"].to_numpy() == pytest.approx(expected, nan_ok=True)
    assert rows["p_holm"].to_numpy() == pytest.approx(holm(raw), nan_ok=True)
    assert (rows["p_holm"].dropna() >= rows["p"].dropna()).all()


def test_the_adjusted_p_decides(frame):
    """A row significant on its own but not after Holm across the report's claims is inconclusive."""
    within = claim("good-within-0.7pct", Arm("good", emb=0.5), margin=0.007)
    alone = evaluate_claims(frame, [within])  # alpha and beta (transferred): 2 rows
    assert list(alone["verdict"]) == ["holds", "holds"]
    assert (alone["p"] < 0.05).all() and alone["p_holm"].max() < 0.05
    crowded = evaluate_claims(frame, [dataclasses.replace(within, id=f"copy-{i}") for i in range(6)])
    assert len(crowded) == 12 and crowded["p"].tolist() == alone["p"].tolist() * 6
    assert (crowded["p_holm"] >= 0.05).all()
    assert set(crowded["verdict"]) == {"inconclusive"}
    assert crowded["reason"].str.startswith("not significant (Holm p = ").all()


def test_transferred_versus_replicated(frame):
    rows = evaluate_claims(frame, [claim("good-within-2pct", Arm("good", emb=0.5), datasets=("alpha",)),
                                   claim("bad-within-2pct", Arm("bad", emb=0.5), datasets=("beta",))])
    replicated, transferred = by_id(rows, "good-within-2pct"), by_id(rows, "good-within-2pct", "beta")
    assert not replicated["transferred"] and transferred["transferred"]
    assert transferred["verdict"] == "holds"
    assert transferred["comparator_mean"] == pytest.approx(np.mean(REF["beta"]))
    # bad has cells on alpha only: its own dataset beta is not run, alpha is a transfer
    assert by_id(rows, "bad-within-2pct", "beta")["verdict"] == "not run"
    assert by_id(rows, "bad-within-2pct")["transferred"]
    assert by_id(rows, "bad-within-2pct")["verdict"] == "does not hold"
    assert len(rows) == 4


def test_at_least_with_a_margin_versus_above(frame):
    """good is 0.5% below dense: within 2% of it (at least 0.98 x), not above it, nor within 0.1%."""
    rows = evaluate_claims(frame, [
        claim("within-2pct", Arm("good", emb=0.5), relation="at_least", margin=0.02),
        claim("within-0.1pct", Arm("good", emb=0.5), relation="at_least", margin=0.001),
        claim("above", Arm("good", emb=0.5), relation="above", margin=0.0),
        claim("dense-above-by-10pct", DENSE, Arm("bad", emb=0.5), relation="above", margin=0.1),
        claim("dense-above-by-30pct", DENSE, Arm("bad", emb=0.5), relation="above", margin=0.3)])
    verdicts = dict(zip(rows["claim"] + "/" + rows["dataset"], rows["verdict"], strict=True))
    assert verdicts["within-2pct/alpha"] == "holds"
    assert verdicts["within-0.1pct/alpha"] == "does not hold"
    assert verdicts["above/alpha"] == "does not hold"
    assert verdicts["dense-above-by-10pct/alpha"] == "holds"  # 1/0.8 = 1.25 > 1.1
    assert verdicts["dense-above-by-30pct/alpha"] == "does not hold"  # 1.25 < 1.3
    above = by_id(rows, "dense-above-by-10pct")
    assert above["criterion"] == "recall@20: subject > 1.1 × comparator"
    assert above["mean_diff"] == pytest.approx(np.mean(
        np.array(REF["alpha"]) - 1.1 * (0.8 * np.array(REF["alpha"]) + WOBBLE)))


def test_arm_options_are_a_subset_match(frame):
    rows = evaluate_claims(frame, [
        claim("dsl-50", Arm("dsl", {"update_every": 50}, emb=0.5)),
        claim("dsl-10", Arm("dsl", {"update_every": 10}, emb=0.5)),
        claim("dsl-50-ema", Arm("dsl", {"mode": "ema", "update_every": 50}, emb=0.5)),
        claim("dsl-20", Arm("dsl", {"update_every": 20}, emb=0.5))])
    dsl50 = by_id(rows, "dsl-50")
    assert dsl50["subject_variant"] == "dsl[mode=ema,update_every=50]" and dsl50["verdict"] == "holds"
    assert dsl50["subject_mean"] == pytest.approx(np.mean(1.05 * np.array(REF["alpha"]) + WOBBLE))
    assert by_id(rows, "dsl-50-ema")["subject_variant"] == "dsl[mode=ema,update_every=50]"
    assert by_id(rows, "dsl-10")["subject_variant"] == "dsl[update_every=10]"
    assert by_id(rows, "dsl-10")["verdict"] == "does not hold"
    assert by_id(rows, "dsl-20")["verdict"] == "not run"
    assert "subject (dsl[update_every=20] at emb=0.5) on alpha: no cells" in by_id(rows, "dsl-20")["reason"]


def test_the_paper_figures_are_carried(frame):
    rows = evaluate_claims(frame, [claim("good-within-2pct", Arm("good", emb=0.5),
                                         paper={"subject": 0.0712, "comparator": 0.0730}),
                                   claim("no-figures", Arm("good", emb=0.5))])
    assert by_id(rows, "good-within-2pct")[["paper_subject", "paper_comparator"]].tolist() == [0.0712, 0.0730]
    assert by_id(rows, "no-figures")[["paper_subject", "paper_comparator"]].isna().all()


def test_registered_claims_are_gathered_and_ids_unique(monkeypatch):
    import bench.registry

    a = claim("x-one", Arm("good", emb=0.5))

    class First:
        claims = (a,)

    class Second:
        claims = (claim("x-one", Arm("bad", emb=0.5)),)

    class Third:
        claims = (a, claim("x-two", Arm("bad", emb=0.5)))

    monkeypatch.setattr(bench.registry, "available_methods", lambda: {"first": First, "third": Third})
    assert [c.id for c in registered_claims()] == ["x-one", "x-two"]
    monkeypatch.setattr(bench.registry, "available_methods", lambda: {"first": First, "second": Second})
    with pytest.raises(ValueError, match="'x-one' is declared by both 'first' and 'second'"):
        registered_claims()


def test_the_report_has_a_claims_section_and_claims_csv(store_path, tmp_path):
    claims = [claim("good-within-2pct", Arm("good", emb=0.5), paper={"subject": 0.0712, "comparator": 0.073}),
              claim("good-above-random", Arm("good", emb=0.5), Arm("random-drop", emb=0.5), relation="above"),
              # made on datasets the store does not hold: counted per dataset, not listed one by one
              claim("far-a", Arm("ghost", emb=0.5), datasets=("gamma", "delta")),
              claim("far-b", Arm("phantom", emb=0.5), datasets=("gamma",))]
    paths = build_report([store_path], tmp_path / "rep", figures=False, claims=claims)
    got = pd.read_csv(paths["claims"])
    assert list(got.columns) == CLAIM_COLUMNS
    assert got[["claim", "dataset", "transferred", "verdict"]].values.tolist() == [
        ["good-within-2pct", "alpha", False, "holds"], ["good-within-2pct", "beta", True, "holds"],
        ["good-above-random", "alpha", False, "not run"], ["far-a", "gamma", False, "not run"],
        ["far-a", "delta", False, "not run"], ["far-b", "gamma", False, "not run"]]
    elsewhere = ("Not run, on datasets these results do not hold (3 claims; every row is in claims.csv): "
                 "delta 1 (ghost); gamma 2 (ghost, phantom).")
    page = paths["html"].read_text()
    section = page[page.index('<section id="claims">'):page.index('<section id="problems">')]
    # the two checked rows in the table (and its header); the claim not run here listed apart
    assert section.count("<tr") == 3 and "good-within-2pct" in section and "beta (transferred)" in section
    assert "0.0712 vs 0.0730" in section and "(n = 5)" in section
    assert ("<summary>Not run here (1)</summary>" in section and "<code>good-above-random</code> on alpha: "
            "missing comparator (random-drop at emb=0.5) on alpha: no cells" in section)
    assert elsewhere in section and "far-a" not in section
    md = paths["markdown"].read_text()
    assert "## Claims" in md and "Not run here (1):" in md
    assert elsewhere in md and "far-" not in md
    assert ("- `good-above-random` on alpha: missing comparator (random-drop at emb=0.5) on alpha: no cells"
            in md)
    lines = [line for line in md.splitlines() if line.startswith("| good-")]
    assert len(lines) == 2 and lines[1].split(" | ")[4] == "beta (transferred)"
    assert lines[0].split(" | ")[5] == "0.0712 vs 0.0730" and lines[1].split(" | ")[5] == ""
    assert lines[0].endswith("| holds |")


def test_a_report_without_claims_says_so(store_path, tmp_path):
    paths = build_report([store_path], tmp_path / "rep", figures=False, claims=())
    page = paths["html"].read_text()
    assert "No registered method declares claims." in page
    assert "No registered method declares claims." in paths["markdown"].read_text()
    assert list(pd.read_csv(paths["claims"]).columns) == CLAIM_COLUMNS
    # an empty store: claims are not run, nothing crashes
    with ResultStore(tmp_path / "empty.sqlite") as empty:
        paths = build_report([empty], tmp_path / "rep-empty", figures=False,
                             claims=[claim("good-within-2pct", Arm("good", emb=0.5))])
    (row,) = pd.read_csv(paths["claims"]).to_dict("records")
    assert row["verdict"] == "not run" and row["reason"].startswith("missing subject (good at emb=0.5)")


def test_an_arm_naming_a_default_selects_cells_that_left_it_unset(tmp_path):
    """A store keeps a cell's options as its config wrote them: LEGCF's full method without
    ``ablation``. The arm ``ablation="none"`` (the default) selects it, not the ablation's cells; an
    arm naming no option matches both variants and says it is ambiguous."""
    ref = REF["alpha"]
    cells = [cell("alpha", "lightgcn", s, ref[s]) for s in SEEDS]
    cells += [cell("alpha", "legcf", s, 0.9 * ref[s] + WOBBLE[s], emb=0.05, options={"c": 500})
              for s in SEEDS]
    cells += [cell("alpha", "legcf", s, 0.6 * ref[s] + WOBBLE[s], emb=0.05,
                   options={"c": 500, "ablation": "no-update"}) for s in SEEDS]
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        for r in cells:
            store.put(r)
    with ResultStore(path, create=False) as store:
        frame = cells_frame(load_cells([store]))
    full = Arm("legcf", {"ablation": "none"}, emb=0.05)
    ablated = Arm("legcf", {"ablation": "no-update"}, emb=0.05)
    rows = evaluate_claims(frame, [
        claim("legcf-above-no-update", full, ablated, relation="above", margin=0.0),
        claim("legcf-bare", Arm("legcf", emb=0.05), relation="above", margin=0.0)])
    row = by_id(rows, "legcf-above-no-update")
    assert row["subject_variant"] == "legcf[c=500]"
    assert row["comparator_variant"] == "legcf[ablation=no-update,c=500]"
    assert row["verdict"] == "holds"
    bare = by_id(rows, "legcf-bare")
    assert bare["verdict"] == "not run" and "matches several variants" in bare["reason"]


def test_a_verdict_a_lower_bound_could_overturn_is_inconclusive(frame):
    """A training stage stopped at its epoch budget gives a lower bound: "does not hold" with the
    subject cut short, and "holds" with the comparator cut short, are not verdicts; the other two
    combinations stand."""
    alpha = frame[frame["dataset"] == "alpha"]
    bad = set(alpha.loc[alpha["method"] == "bad", "key"])
    dense = set(alpha.loc[alpha["method"] == "lightgcn", "key"])
    claims = [claim("good-within-2pct", Arm("good", emb=0.5)), claim("bad-within-2pct", Arm("bad", emb=0.5))]
    plain = evaluate_claims(frame, claims)
    assert by_id(plain, "bad-within-2pct")["verdict"] == "does not hold"
    subject_cut = evaluate_claims(frame, claims, cut_short=bad)
    row = by_id(subject_cut, "bad-within-2pct")
    assert row["subject_cut_short"] and not row["comparator_cut_short"]
    assert row["verdict"] == "inconclusive"
    assert "subject's training stopped at its epoch budget" in row["reason"]
    assert by_id(subject_cut, "good-within-2pct")["verdict"] == "holds"
    comparator_cut = evaluate_claims(frame, claims, cut_short=dense)
    assert by_id(comparator_cut, "good-within-2pct")["verdict"] == "inconclusive"
    # below a bar that could only rise: stands
    assert by_id(comparator_cut, "bad-within-2pct")["verdict"] == "does not hold"


def test_cells_that_recorded_no_training_stages_count_as_possible_lower_bounds(tmp_path):
    """A store from before cells recorded their training stages: convergence unknown. The report
    treats such cells like ones cut short by the budget and says so in its notes."""
    from bench.report.claims import cut_short_keys

    cells = [cell("alpha", "lightgcn", s, REF["alpha"][s], info={}) for s in SEEDS]
    cells += [cell("alpha", "bad", s, 0.8 * REF["alpha"][s] + WOBBLE[s], emb=0.5, info={}) for s in SEEDS]
    cells += [cell("alpha", "good", s, 0.995 * REF["alpha"][s] + WOBBLE[s], emb=0.5) for s in SEEDS]
    path = tmp_path / "old.sqlite"
    with ResultStore(path) as store:
        for r in cells:
            store.put(r)
    with ResultStore(path, create=False) as store:
        loaded = load_cells([store])
    assert cut_short_keys(loaded) == {c.key for c in cells if c.method != "good"}
    claims = [claim("good-within-2pct", Arm("good", emb=0.5)), claim("bad-within-2pct", Arm("bad", emb=0.5))]
    paths = build_report([path], tmp_path / "rep", figures=False, claims=claims)
    got = pd.read_csv(paths["claims"]).set_index("claim")
    # "holds" against an unrecorded comparator is not a verdict; "does not hold" with an unrecorded
    # subject is not one either
    assert got.loc["good-within-2pct", "verdict"] == "inconclusive"
    assert "or is not recorded" in got.loc["good-within-2pct", "reason"]
    assert got.loc["bad-within-2pct", "verdict"] == "inconclusive"
    md = paths["markdown"].read_text()
    notes = [line for line in md.splitlines() if "recorded no training stages" in line]
    assert len(notes) == 2 and not any("good" in line for line in notes)


def shaped(r: CellResult, dim: int, run: str) -> CellResult:
    """``r`` trained at model width ``dim`` by the run ``run`` (another key: another cell)."""
    spec = {**r.spec, "budget": {**r.spec["budget"], "dim": dim}, "run": run}
    return dataclasses.replace(r, key=f"{r.key}-d{dim}", run=run, spec=spec)


def test_a_report_never_pairs_or_replaces_models_of_another_shape(tmp_path):
    """A dense cell of another width in a second store would replace the first store's dense cell of
    the same seed (the newer of an identity is reported) and become the claims' comparator: the
    report refuses to mix shapes within a dataset, naming them, and ``runs`` picks one."""
    from bench.report.tables import MixedShapesError

    narrow = [shaped(cell("alpha", "lightgcn", s, REF["alpha"][s]), 64, "narrow") for s in SEEDS]
    narrow += [shaped(cell("alpha", "good", s, 0.995 * REF["alpha"][s] + WOBBLE[s], emb=0.5), 64, "narrow")
               for s in SEEDS]
    # the wide model is far better, finished later, and would make "good" fail its claim
    wide = [dataclasses.replace(shaped(cell("alpha", "lightgcn", s, 2 * REF["alpha"][s]), 128, "wide"),
                                finished_at=f"2026-11-22T10:00:{s:02d}+00:00") for s in SEEDS]
    paths = []
    for name, cells in (("narrow", narrow), ("wide", wide)):
        paths.append(tmp_path / f"{name}.sqlite")
        with ResultStore(paths[-1]) as store:
            for r in cells:
                store.put(r)
    claims = [claim("good-within-2pct", Arm("good", emb=0.5))]
    with pytest.raises(MixedShapesError, match=r"the cells of alpha train models of 2 shapes \(dim 64, "
                       r"n_layers 2 \(10 cells\); dim 128, n_layers 2 \(5 cells\)\)"):
        build_report(paths, tmp_path / "mixed", figures=False, claims=claims)
    got = build_report(paths, tmp_path / "narrow", figures=False, claims=claims, runs=["narrow"])
    row = pd.read_csv(got["claims"]).set_index("claim").loc["good-within-2pct"]
    assert row["verdict"] == "holds" and row["comparator_mean"] == pytest.approx(np.mean(REF["alpha"]))
    with pytest.raises(ValueError, match="no cells of run 'nope' in these stores; their runs: narrow, wide"):
        build_report(paths, tmp_path / "none", figures=False, claims=claims, runs=["nope"])
