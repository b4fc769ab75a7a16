"""Paired significance tests across seeds, Holm-corrected.

For every dataset, accuracy metric and reference (the uncompressed ``lightgcn`` of the same seed,
and ``random-drop`` at the same targets and seed), each (variant, target) is compared with the
reference on the seeds both have:

* the paired t-test (``scipy.stats.ttest_rel``) when at least 2 pairs exist;
* the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) as well when at least
  :data:`WILCOXON_MIN_SEEDS` pairs exist.

The p-values of one family (dataset, metric, reference, test) are corrected with Holm's step-down
method. A comparison is **significant** when its Holm-corrected p-value is below
:data:`ALPHA`; its direction is the sign of the mean paired difference. Identical values on every
seed (no variance) give no p-value.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.tables import IDENTITY, REFERENCE

ALPHA = 0.05
WILCOXON_MIN_SEEDS = 6
RANDOM_DROP = "random-drop"
REFERENCES = (REFERENCE, RANDOM_DROP)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count in the family)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The paired tests of ``a`` against ``b`` (same seeds, same order): ``n`` pairs, ``diff`` the mean
    of ``a - b``, ``t_p`` the two-sided paired t-test's p-value (at least 2 pairs with some variance
    in the differences, else NaN), ``w_p`` the Wilcoxon signed-rank test's (at least
    :data:`WILCOXON_MIN_SEEDS` pairs, not all equal, else NaN)."""
    d = a - b
    res = {"n": float(len(d)), "diff": float(d.mean()) if len(d) else math.nan,
           "t_p": math.nan, "w_p": math.nan}
    if len(d) >= 2 and np.std(d) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res["t_p"] = float(stats.ttest_rel(a, b).pvalue)
    if len(d) >= WILCOXON_MIN_SEEDS and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["w_p"] = float(stats.wilcoxon(a, b).pvalue)
    return res


def comparisons(cells: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per (dataset, variant, target, metric, reference) with both tests and Holm p-values.

    ``cells`` is the long table of :mod:`bench.report.tables`; only successful cells are used.
    Columns: the identity, ``metric``, ``reference``, ``n_pairs``, ``mean_diff`` (variant minus
    reference), ``t_p``, ``t_p_holm``, ``w_p``, ``w_p_holm``, ``significant`` and ``direction``
    (+1 better, -1 worse, 0 not significant).
    """
    ok = cells[(cells["status"] == "ok") & cells["name"].isin(metrics)]
    rows = []
    for (_dataset, metric), grp in ok.groupby(["dataset", "name"]):
        for ref in REFERENCES:
            ref_cells = grp[grp["method"] == ref]
            if ref_cells.empty:
                continue
            for ident, cand in grp[grp["method"] != ref].groupby(IDENTITY, dropna=False):
                if cand["method"].iloc[0] == REFERENCE:
                    continue
                if ref == REFERENCE:
                    r = ref_cells
                else:  # random drop at the same targets
                    r = ref_cells[(ref_cells["emb_target"] == ident[2])
                                  & (ref_cells["edge_target"].fillna(-1) == (
                                      -1 if pd.isna(ident[3]) else ident[3]))]
                joined = cand[["seed", "value"]].merge(
                    r[["seed", "value"]].drop_duplicates("seed"), on="seed", suffixes=("", "_ref"))
                joined = joined.dropna()
                if joined.empty:
                    continue
                res = paired(joined["value"].to_numpy(), joined["value_ref"].to_numpy())
                rows.append({**dict(zip(IDENTITY, ident, strict=True)), "metric": metric, "reference": ref,
                             "n_pairs": int(res["n"]), "mean_diff": res["diff"], "t_p": res["t_p"],
                             "w_p": res["w_p"]})
    cols = [*IDENTITY, "metric", "reference", "n_pairs", "mean_diff", "t_p", "t_p_holm", "w_p", "w_p_holm",
            "significant", "direction"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    out["t_p_holm"] = math.nan
    out["w_p_holm"] = math.nan
    for _, fam in out.groupby(["dataset", "metric", "reference"]).groups.items():
        idx = list(fam)
        out.loc[idx, "t_p_holm"] = holm(out.loc[idx, "t_p"].tolist())
        out.loc[idx, "w_p_holm"] = holm(out.loc[idx, "w_p"].tolist())
    # the Wilcoxon test decides when it exists (>= 6 seeds), the t-test otherwise
    decisive = out["w_p_holm"].where(out["w_p_holm"].notna(), out["t_p_holm"])
    out["significant"] = decisive < ALPHA
    out["direction"] = np.where(out["significant"], np.sign(out["mean_diff"]), 0).astype(int)
    return out[cols]


def add_to_summary(summary: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    """Columns ``<metric>_p_<reference>`` (t-test, Holm) and ``<metric>_sig_<reference>`` (-1/0/+1)."""
    if comp.empty:
        return summary
    fill = {"edge_target": -1.0, "layers_target": -1.0}
    comp = comp.fillna(fill)
    wide_p = comp.pivot_table(index=IDENTITY, columns=["metric", "reference"], values="t_p_holm",
                              dropna=False)
    wide_s = comp.pivot_table(index=IDENTITY, columns=["metric", "reference"], values="direction",
                              dropna=False)
    wide_p.columns = [f"{m}_p_{r}" for m, r in wide_p.columns]
    wide_s.columns = [f"{m}_sig_{r}" for m, r in wide_s.columns]
    merged = summary.fillna(fill).merge(wide_p.reset_index(), on=IDENTITY, how="left").merge(
        wide_s.reset_index(), on=IDENTITY, how="left")
    for c in ("edge_target", "layers_target"):
        merged[c] = merged[c].replace(-1.0, np.nan)
    return merged
