"""The report's "Claims" section and ``claims.csv``: every paper claim (:class:`bench.claims.Claim`)
checked against the report's cells, with a computed verdict.

A claim is evaluated on each dataset it names (a replication) and on every other dataset of the
report where both of its arms have results (a transfer). On one dataset, an arm
(:class:`bench.claims.Arm`) selects the successful cells of its method whose options include the
arm's options, at its embedding target (None: 1.0, no compression), its edge target (None: no edge
target) and no layers target; the report already keeps the newest cell of each identity. Several
matching variants (e.g. an arm without options and cells run with and without an option) are
resolved to the one whose options equal the arm's; if none or several do, the arm is ambiguous.

The subject and the comparator are paired by seed: ``d_s = subject_s - threshold(comparator_s)``
(:meth:`bench.claims.Claim.threshold`). The p-value is the two-sided paired t-test of the summary
(:func:`bench.report.stats.paired`), Holm-corrected (:func:`bench.report.stats.holm`) across all
claim rows of the report that have one. The verdict, at the report's :data:`~bench.report.stats.ALPHA`:

* ``holds``: mean d > 0 and the Holm-adjusted p < alpha;
* ``does not hold``: mean d < 0 and the Holm-adjusted p < alpha;
* ``inconclusive``: fewer than 2 paired seeds, no variance in d (no p-value), or adjusted p >= alpha;
* ``not run``: an arm has no usable cells on the dataset (the reason names which).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import pandas as pd

from bench.claims import Arm, Claim
from bench.report.stats import ALPHA, holm, paired
from bench.report.tables import CELL_COLUMNS

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_RUN)

#: the columns of ``claims.csv``, in order
CLAIM_COLUMNS = [
    "claim", "method", "source", "statement", "dataset", "transferred", "metric", "relation", "margin",
    "criterion", "subject", "comparator", "subject_variant", "comparator_variant", "paper_subject",
    "paper_comparator", "n_seeds", "seeds", "subject_mean", "subject_std", "comparator_mean",
    "comparator_std", "mean_diff", "p", "p_holm", "subject_cut_short", "comparator_cut_short", "verdict",
    "reason",
]


def registered_claims() -> list[Claim]:
    """Every registered method's :attr:`~bench.contract.Method.claims`, in method-name order.

    Raises ValueError when two different claims share an id."""
    from bench.registry import available_methods

    seen: dict[str, tuple[str, Claim]] = {}
    out = []
    for name, cls in available_methods().items():
        for claim in cls.claims:
            if claim.id in seen:
                if seen[claim.id][1] == claim:
                    continue
                raise ValueError(f"claim id {claim.id!r} is declared by both {seen[claim.id][0]!r} and "
                                 f"{name!r}: claim ids must be unique")
            seen[claim.id] = (name, claim)
            out.append(claim)
    return out


def criterion(claim: Claim) -> str:
    """The claim's test in words, e.g. ``recall@20: subject >= 0.98 x comparator``."""
    if claim.relation == "at_least":
        return f"{claim.metric}: subject ≥ {1 - claim.margin:g} × comparator"
    return f"{claim.metric}: subject > {1 + claim.margin:g} × comparator"


def _options(text: Any) -> dict[str, Any]:
    if isinstance(text, str) and text:
        return json.loads(text)
    return {}


def _matches_target(column: pd.Series, target: float | None, default: float | None) -> pd.Series:
    want = default if target is None else target
    if want is None:
        return column.isna()
    return column.notna() & np.isclose(column.fillna(-1.0).astype(float), want)


def _resolved(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the registered method's defaults filled in (a cell stores only the options
    its config wrote: LEGCF's full method is stored without ``ablation``, whose default is "none"),
    as JSON values; the options as given when the method is not registered or they do not resolve."""
    from bench.registry import get_method

    try:
        full = dict(get_method(method).resolve_options(options))
    except Exception:  # an unregistered plugin or an option it no longer knows: match what is stored
        full = dict(options)
    return json.loads(json.dumps(full, default=str))


def _select(per_cell: pd.DataFrame, arm: Arm, dataset: str) -> tuple[pd.DataFrame, str | None]:
    """The cells (one row per cell, any status) of ``arm`` on ``dataset`` and the problem, if any,
    that makes the arm ambiguous. Options are compared with the method's defaults filled in on both
    sides, so an arm naming a default (``ablation="none"``) selects cells that left it unset."""
    want = json.loads(json.dumps(dict(arm.options), default=str))
    sel = per_cell[(per_cell["dataset"] == dataset) & (per_cell["method"] == arm.method)
                   & _matches_target(per_cell["emb_target"], arm.emb, 1.0)
                   & _matches_target(per_cell["edge_target"], arm.edge, None)
                   & per_cell["layers_target"].isna()]
    if sel.empty:
        return sel, None
    opts = sel["options"].map(lambda text: _resolved(arm.method, _options(text)))
    sel = sel[opts.map(lambda o: all(k in o and o[k] == v for k, v in want.items()))]
    variants = sorted(sel["variant"].unique())
    if len(variants) <= 1:
        return sel, None
    full_want = _resolved(arm.method, dict(arm.options))
    exact = sel[sel["options"].map(lambda text: _resolved(arm.method, _options(text)) == full_want)]
    if exact["variant"].nunique() == 1:
        return exact, None
    return sel, f"matches several variants ({', '.join(variants)}): name options to pick one"


def _arm_values(frame: pd.DataFrame, per_cell: pd.DataFrame, arm: Arm, dataset: str,
                metric: str) -> tuple[dict[int, tuple[float, str]], str | None, str | None]:
    """Seed -> (metric value, cell key) of ``arm``'s successful cells on ``dataset``, its variant, and
    why it has no usable values (None when it has some)."""
    cells, ambiguous = _select(per_cell, arm, dataset)
    if ambiguous:
        return {}, None, ambiguous
    if cells.empty:
        return {}, None, "no cells"
    variant = cells["variant"].iloc[0]
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return {}, variant, f"no successful cells ({len(cells)} not ok)"
    rows = frame[frame["key"].isin(ok["key"]) & (frame["name"] == metric) & frame["value"].notna()]
    if rows.empty:
        return {}, variant, f"no {metric} values"
    values = zip(rows["value"].astype(float), rows["key"], strict=True)
    return dict(zip(rows["seed"].astype(int), values, strict=True)), variant, None


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def _evaluate_one(claim: Claim, dataset: str, frame: pd.DataFrame, per_cell: pd.DataFrame,
                  cut_short: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    """One row of :func:`evaluate_claims` without the Holm-adjusted p-value and the verdict."""
    row: dict[str, Any] = {
        "claim": claim.id, "method": claim.method, "source": claim.source, "statement": claim.statement,
        "dataset": dataset, "transferred": dataset not in claim.datasets, "metric": claim.metric,
        "relation": claim.relation, "margin": claim.margin, "criterion": criterion(claim),
        "subject": claim.subject.describe(), "comparator": claim.comparator.describe(),
        "paper_subject": claim.paper.get("subject", math.nan),
        "paper_comparator": claim.paper.get("comparator", math.nan),
    }
    subject_cells, row["subject_variant"], s_missing = _arm_values(frame, per_cell, claim.subject, dataset,
                                                                   claim.metric)
    comparator_cells, row["comparator_variant"], c_missing = _arm_values(frame, per_cell, claim.comparator,
                                                                         dataset, claim.metric)
    subject = {seed: value for seed, (value, _) in subject_cells.items()}
    comparator = {seed: value for seed, (value, _) in comparator_cells.items()}
    missing = [f"{name} ({arm.describe()}) on {dataset}: {why}"
               for name, arm, why in (("subject", claim.subject, s_missing),
                                      ("comparator", claim.comparator, c_missing)) if why]
    seeds = sorted(set(subject) & set(comparator))
    # the arms' figures over the paired seeds; over each arm's own seeds when none are paired
    s_vals = np.array([subject[s] for s in (seeds or sorted(subject))], dtype=float)
    c_vals = np.array([comparator[s] for s in (seeds or sorted(comparator))], dtype=float)
    row["subject_mean"], row["subject_std"] = _mean_std(s_vals)
    row["comparator_mean"], row["comparator_std"] = _mean_std(c_vals)
    row["n_seeds"], row["seeds"] = len(seeds), ";".join(str(s) for s in seeds)
    for name, cells in (("subject", subject_cells), ("comparator", comparator_cells)):
        row[f"{name}_cut_short"] = any(cells[s][1] in cut_short for s in (seeds or cells))
    row["mean_diff"], row["p"] = math.nan, math.nan
    if seeds:
        s_vals = np.array([subject[s] for s in seeds], dtype=float)
        threshold = claim.threshold(np.array([comparator[s] for s in seeds], dtype=float))
        res = paired(s_vals, threshold)
        row["mean_diff"], row["p"] = res["diff"], res["t_p"]
    row["_missing"] = missing
    return row


def verdict(mean_diff: float, p_holm: float, n_seeds: int, missing: Sequence[str],
            alpha: float = ALPHA, subject_cut: bool = False, comparator_cut: bool = False) -> tuple[str, str]:
    """The verdict and its reason from the mean paired difference ``mean_diff`` (subject minus
    threshold), the Holm-adjusted p-value, the number of paired seeds and the arms' missing parts.

    ``subject_cut`` / ``comparator_cut``: a training stage of that arm's cells stopped at its epoch
    budget while still improving, or the cells recorded no training stages at all (convergence
    unknown), so its figures may be lower bounds. A verdict such a bound could
    overturn is not one: "does not hold" with the subject cut short (trained on, it might pass), or
    "holds" with the comparator cut short (trained on, it might raise the bar), is inconclusive; the
    other two stand (a lower bound above the bar, or below a bar that could only rise)."""
    if missing:
        return NOT_RUN, "missing " + "; ".join(missing)
    if n_seeds < 2:
        return INCONCLUSIVE, f"too few seeds ({n_seeds} paired)"
    if math.isnan(p_holm):
        return INCONCLUSIVE, "no p-value: the paired differences do not vary"
    if p_holm >= alpha:
        return INCONCLUSIVE, f"not significant (Holm p = {p_holm:.3g} ≥ {alpha:g})"
    if mean_diff > 0:
        if comparator_cut:
            return INCONCLUSIVE, ("holds against a comparator whose training stopped at its epoch budget "
                                  "while improving or is not recorded (a possible lower bound): not a "
                                  "verdict")
        return HOLDS, ""
    if mean_diff < 0:
        if subject_cut:
            return INCONCLUSIVE, ("does not hold, but the subject's training stopped at its epoch budget "
                                  "while improving or is not recorded (a possible lower bound): not a "
                                  "verdict")
        return DOES_NOT_HOLD, ""
    return INCONCLUSIVE, "mean difference is zero"


def evaluate_claims(frame: pd.DataFrame, claims: Sequence[Claim] | None = None,
                    alpha: float = ALPHA, cut_short: AbstractSet[str] = frozenset()) -> pd.DataFrame:
    """One row per (claim, dataset) with the columns :data:`CLAIM_COLUMNS`.

    ``frame``: the report's per-cell long table (:func:`bench.report.tables.cells_frame`);
    ``claims``: the claims to check (default: :func:`registered_claims`). Datasets: the claim's own,
    then every other dataset of ``frame`` where both arms have successful cells with the metric
    (``transferred`` True). ``subject_mean``/``_std`` and ``comparator_mean``/``_std``: seed mean and
    sample std over the ``n_seeds`` paired ``seeds``; ``mean_diff``: the mean of subject minus the
    claim's threshold of the comparator; ``p``: the paired t-test; ``p_holm``: Holm-adjusted across
    all rows; ``verdict`` and ``reason``: see :func:`verdict`; ``cut_short``: the keys of cells with a
    training stage that stopped at its epoch budget (:func:`cut_short_keys`), which make
    ``subject_cut_short`` / ``comparator_cut_short`` true.
    """
    claims = registered_claims() if claims is None else list(claims)
    if frame.empty:
        frame = pd.DataFrame(columns=CELL_COLUMNS)
    per_cell = frame.drop_duplicates("key")
    rows = []
    for claim in claims:
        extra = [dataset for dataset in sorted(set(per_cell["dataset"]) - set(claim.datasets))
                 if all(_arm_values(frame, per_cell, arm, dataset, claim.metric)[0]
                        for arm in (claim.subject, claim.comparator))]
        rows += [_evaluate_one(claim, dataset, frame, per_cell, cut_short)
                 for dataset in [*claim.datasets, *extra]]
    if not rows:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    adjusted = holm([r["p"] for r in rows])
    for r, p_holm in zip(rows, adjusted, strict=True):
        r["p_holm"] = p_holm
        r["verdict"], r["reason"] = verdict(r["mean_diff"], p_holm, r["n_seeds"], r.pop("_missing"), alpha,
                                            r["subject_cut_short"], r["comparator_cut_short"])
    return pd.DataFrame(rows)[CLAIM_COLUMNS]


def cut_short_keys(cells: Sequence[Mapping[str, Any]]) -> set[str]:
    """Keys of the cells (as :func:`bench.report.tables.load_cells` gives them) whose quality may be a
    lower bound: a training stage stopped at its epoch budget while still improving
    (``info["training_stages"]``), or the cell recorded no training stages at all (a store written
    before cells recorded them), so whether its training converged is unknown."""
    out = set()
    for c in cells:
        stages = (c.get("info") or {}).get("training_stages")
        if stages is None or any(s.get("at_budget") for s in stages):
            out.add(c["key"])
    return out


def _fmt(value: float) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.4f}"


def _ours(r: pd.Series) -> str:
    def side(mean: float, std: float) -> str:
        text = _fmt(mean) or "–"
        return f"{text} ± {_fmt(std)}" if _fmt(std) else text

    if pd.isna(r["subject_mean"]) and pd.isna(r["comparator_mean"]):
        return ""
    return (f"{side(r['subject_mean'], r['subject_std'])} vs "
            f"{side(r['comparator_mean'], r['comparator_std'])} (n = {int(r['n_seeds'])})")


def claims_table(rows: pd.DataFrame, datasets: Iterable[str] | None = None) -> dict[str, Any]:
    """Header and rows (text per column) of the report's Claims table, from :func:`evaluate_claims`:
    the claim rows that were checked (``rows``; the paper's figures on the claim's own datasets only)
    and, apart and short, those not run here (``not_run``: claim, dataset, what is missing), so a
    report on other data is not a wall of empty rows. ``datasets``: the datasets the results hold
    (None: every claim's dataset counts as held); a claim not run on a dataset outside them is only
    counted, per dataset, in ``elsewhere`` (dataset, claims, methods) and the sentence
    ``elsewhere_text``, since every one of its arms is missing there. ``declared``: whether any claim
    was given."""
    header = ["claim", "method", "source", "statement", "dataset", "paper", "ours", "p (Holm)", "verdict"]
    out: list[dict[str, Any]] = []
    held = None if datasets is None else set(datasets)
    not_run: list[dict[str, Any]] = []
    elsewhere: dict[str, dict[str, Any]] = {}
    for _, r in rows.iterrows():
        if r["verdict"] != "not run":
            continue
        if held is None or r["dataset"] in held:
            not_run.append({"claim": r["claim"], "dataset": r["dataset"], "reason": r["reason"]})
            continue
        entry = elsewhere.setdefault(r["dataset"], {"dataset": r["dataset"], "claims": [], "methods": []})
        entry["claims"].append(r["claim"])
        if r["method"] not in entry["methods"]:
            entry["methods"].append(r["method"])
    for _, r in rows.iterrows():
        if r["verdict"] == "not run":
            continue
        # the paper's figures are for its own datasets: a transfer shows none
        paper = "" if r["transferred"] else " vs ".join(
            _fmt(r[f"paper_{side}"]) or "–" for side in ("subject", "comparator"))
        out.append({"verdict": r["verdict"], "cells": [
            r["claim"], r["method"], r["source"],
            f"{r['statement']} ({r['subject']} vs {r['comparator']}; {r['criterion']})",
            f"{r['dataset']} (transferred)" if r["transferred"] else r["dataset"],
            "" if paper == "– vs –" else paper, _ours(r),
            "" if pd.isna(r["p_holm"]) else f"{r['p_holm']:.3g}",
            f"{r['verdict']}: {r['reason']}" if r["reason"] else r["verdict"],
        ]})
    away = [elsewhere[d] for d in sorted(elsewhere)]
    return {"header": header, "rows": out, "not_run": not_run, "elsewhere": away,
            "elsewhere_text": _elsewhere_text(away), "declared": not rows.empty}


def _elsewhere_text(elsewhere: list[dict[str, Any]]) -> str:
    """One sentence counting the claims made on datasets the results do not hold, per dataset with
    the methods that declare them ("" when there are none)."""
    if not elsewhere:
        return ""
    total = sum(len(e["claims"]) for e in elsewhere)
    per = "; ".join(f"{e['dataset']} {len(e['claims'])} ({', '.join(e['methods'])})" for e in elsewhere)
    return (f"Not run, on datasets these results do not hold ({total} claim{'s' if total != 1 else ''}; "
            f"every row is in claims.csv): {per}.")


__all__ = ["CLAIM_COLUMNS", "VERDICTS", "claims_table", "criterion", "cut_short_keys", "evaluate_claims",
           "registered_claims", "verdict"]
