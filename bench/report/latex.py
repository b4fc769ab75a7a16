"""``--latex``: a dataset's summary table as a LaTeX ``tabular`` (booktabs), means ± std across seeds."""

from __future__ import annotations

import math

import pandas as pd

from bench.report.html import COST_COLUMNS, _markers, _target_label
from bench.report.tables import REFERENCE

_ESCAPE = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
           "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
_MARKS = {"▲": r"$^\blacktriangle$", "▼": r"$^\blacktriangledown$", "⁺": r"$^{+}$", "⁻": r"$^{-}$"}


def escape(text: str) -> str:
    return "".join(_ESCAPE.get(ch, ch) for ch in text)


def summary_latex(summary: pd.DataFrame, metrics: list[str], dataset: str) -> str:
    """Rows: method and target; columns: the headline metrics, achieved ratio, FLOPs, bits."""
    costs = [c for c in COST_COLUMNS[:5] if f"{c[0]}_mean" in summary.columns]
    head = ["Method", "Target", *[escape(m) for m in metrics], *[escape(c[1]) for c in costs]]
    lines = [r"\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", r"\toprule", " & ".join(head) + r" \\",
             r"\midrule"]
    for _, r in summary.iterrows():
        cells = [escape(r["variant"]), "--" if r["method"] == REFERENCE else escape(_target_label(r))]
        for m in metrics:
            mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
            if mean is None or pd.isna(mean):
                cells.append("")
                continue
            text = f"{mean:.4f}" + ("" if std is None or pd.isna(std) else rf" $\pm$ {std:.4f}")
            mark, _ = _markers(r, m)
            cells.append(text + "".join(_MARKS.get(ch, "") for ch in mark))
        for name, _, _, _ in costs:
            v = r[f"{name}_mean"]
            cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              f"% {escape(dataset)}: mean $\\pm$ std across seeds; markers: Holm-corrected paired tests"]
    return "\n".join(lines) + "\n"
