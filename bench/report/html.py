"""The self-contained ``index.html``: tables, embedded seaborn figures, statistics, provenance.

One file, no network: CSS inline, figures as base64 PNG data URIs, no scripts. Per dataset a
summary table (seed mean ± std; the best value per target in bold; markers for significant
differences from the uncompressed model and from random drop; flagged cells marked), then the
figures; then the papers' claims checked against the cells (computed verdicts); then failed and
flagged cells with their errors, the methods (with any simplification they name), the environment,
and each run's exact configuration and command.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import pandas as pd
from jinja2 import Environment

from bench.report.stats import ALPHA, RANDOM_DROP, WILCOXON_MIN_SEEDS
from bench.report.tables import REFERENCE

# (summary name, column title, better: "max" or "min", format)
COST_COLUMNS = [
    ("emb_achieved", "emb kept", None, "{:.3f}"),
    ("edge_achieved", "edges kept", None, "{:.3f}"),
    ("params", "params", "min", "{:,.0f}"),
    ("bits", "bits", "min", "{:.3g}"),
    ("flops", "inference MACs", "min", "{:.3g}"),
    # what scoring needs above its start; the process's peak only for stores from before that figure
    ("mem_scoring_bytes", "scoring mem (MiB)", "min", "mib"),
    ("peak_mem_scoring_bytes", "peak mem scoring (MiB)", "min", "mib"),
    ("latency_scoring_b64_p50_ms", "latency b64 p50 (ms)", "min", "{:.3g}"),
    ("latency_propagation_p50_ms", "propagation p50 (ms)", "min", "{:.3g}"),
    ("train_seconds", "train s (own)", "min", "{:.1f}"),
    ("train_seconds_total", "train s (total)", "min", "{:.1f}"),
]


def shown_cost_columns(summary: pd.DataFrame) -> list[tuple[str, str, str | None, str]]:
    """The :data:`COST_COLUMNS` that ``summary`` has, the peak scoring memory only where the phase's
    own need is missing (stores from before it was recorded)."""
    present = [c for c in COST_COLUMNS if f"{c[0]}_mean" in summary.columns]
    if any(c[0] == "mem_scoring_bytes" for c in present):
        present = [c for c in present if c[0] != "peak_mem_scoring_bytes"]
    return present


def headline_metrics(names: list[str]) -> list[str]:
    """recall@20 and ndcg@20, or the largest cut-off present for each."""
    out = []
    for metric in ("recall", "ndcg"):
        ks = sorted(int(n.split("@")[1]) for n in names if n.startswith(f"{metric}@"))
        if ks:
            out.append(f"{metric}@{20 if 20 in ks else ks[-1]}")
    return out


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if fmt == "mib":
        return f"{value / 2**20:,.1f}"
    return fmt.format(value)


def _target_label(row: pd.Series) -> str:
    t = f"{row['emb_target']:g}"
    if not pd.isna(row.get("edge_target")):
        t += f" / edge {row['edge_target']:g}"
    if not pd.isna(row.get("layers_target")):
        t += f" / L={int(row['layers_target'])}"
    return t


def _markers(row: pd.Series, metric: str) -> tuple[str, str]:
    """Significance markers and their tooltip for one metric of one summary row."""
    marks, tips = [], []
    sig = row.get(f"{metric}_sig_{REFERENCE}")
    if sig is not None and not pd.isna(sig) and sig != 0:
        marks.append("▲" if sig > 0 else "▼")
        tips.append(f"{'above' if sig > 0 else 'below'} uncompressed LightGCN "
                    f"(Holm p={row.get(f'{metric}_p_{REFERENCE}', float('nan')):.3g})")
    sig = row.get(f"{metric}_sig_{RANDOM_DROP}")
    if sig is not None and not pd.isna(sig) and sig != 0:
        marks.append("⁺" if sig > 0 else "⁻")
        tips.append(f"{'above' if sig > 0 else 'below'} random drop "
                    f"(Holm p={row.get(f'{metric}_p_{RANDOM_DROP}', float('nan')):.3g})")
    return "".join(marks), "; ".join(tips)


def dataset_table(summary: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """Header and rows (cells with text, bold, marker, tooltip) of one dataset's summary table."""
    costs = shown_cost_columns(summary)
    header = ["method", "target", "seeds"] + metrics + [c[1] for c in costs]
    # best value per target group: the reference row competes in every group
    groups = summary.assign(_t=summary.apply(_target_label, axis=1))
    best: dict[tuple[str, str], float] = {}
    ref_rows = groups[groups["method"] == REFERENCE]
    for t, grp in groups[groups["method"] != REFERENCE].groupby("_t"):
        pool = pd.concat([grp, ref_rows])
        for m in metrics:
            col = pool.get(f"{m}_mean")
            if col is not None and col.notna().any():
                best[(t, m)] = col.max()
        for name, _, better, _ in costs:
            col = pool[f"{name}_mean"]
            if better and col.notna().any():
                best[(t, name)] = col.min() if better == "min" else col.max()
    rows = []
    for _, r in groups.iterrows():
        t = r["_t"]
        flagged = r["n_flagged"] > 0
        cells = [{"text": r["variant"], "bold": False, "mark": "", "tip": ""},
                 {"text": "uncompressed" if r["method"] == REFERENCE else t, "bold": False,
                  "mark": "⚑" if flagged else "",
                  "tip": f"{int(r['n_flagged'])} seed(s) missed the target by > 2 points" if flagged else ""},
                 {"text": f"{int(r['n_seeds'])}"
                  + (f" (+{int(r['n_failed'])} failed)" if r["n_failed"] else ""),
                  "bold": False, "mark": "", "tip": ""}]
        for m in metrics:
            mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
            text = "" if mean is None or pd.isna(mean) else f"{mean:.4f}"
            if text and std is not None and not pd.isna(std):
                text += f" ± {std:.4f}"
            mark, tip = _markers(r, m)
            is_best = r["method"] != REFERENCE and (t, m) in best and mean == best[(t, m)]
            cells.append({"text": text, "bold": bool(is_best), "mark": mark, "tip": tip})
        for name, _, better, fmt in costs:
            mean = r[f"{name}_mean"]
            is_best = (bool(better) and r["method"] != REFERENCE and (t, name) in best
                       and mean == best[(t, name)])
            cells.append({"text": _fmt(mean, fmt), "bold": is_best, "mark": "", "tip": ""})
        rows.append({"cells": cells, "reference": r["method"] == REFERENCE, "flagged": flagged})
    return {"header": header, "rows": rows}




def render(title: str, sources: list[str], datasets: list[dict[str, Any]], problems: list[dict[str, Any]],
           methods: list[dict[str, Any]], environments: list[dict[str, Any]], runs: list[dict[str, Any]],
           counts: dict[str, int], notes: list[dict[str, Any]] | None = None,
           claims: dict[str, Any] | None = None) -> str:
    """The page; ``claims``: :func:`bench.report.claims.claims_table` (None or no rows: the section says
    that no claim is declared)."""
    env = Environment(autoescape=True, trim_blocks=False, lstrip_blocks=False)
    tmpl = env.from_string(resources.files("bench.report").joinpath("template.html").read_text("utf-8"))
    return tmpl.render(
        title=title, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sources=sources, datasets=datasets, problems=problems, methods=methods,
        environments=environments, runs=runs, notes=notes or [], alpha=ALPHA,
        claims=claims or {"header": [], "rows": [], "not_run": [], "declared": False},
        wilcoxon_min=WILCOXON_MIN_SEEDS,
        n_cells=counts["cells"], n_ok=counts["ok"], n_failed=counts["failed"], n_flagged=counts["flagged"],
    )
