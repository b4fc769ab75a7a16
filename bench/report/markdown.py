"""``summary.md``: the HTML report's per-dataset tables and notes as Markdown, for a README or an
issue. Same rows, numbers and markers as ``index.html`` (it renders :func:`dataset_table`'s
output): seed mean ± std, the best value per target in bold, ▲/▼ significantly above/below the
uncompressed model, ⁺/⁻ above/below random drop (Holm-corrected), ⚑ a seed missed its target; then
the papers' claims checked (:mod:`bench.report.claims`).
"""

from __future__ import annotations

from typing import Any

LEGEND = ("Seed mean ± sample std. Bold: best per target. ▲/▼: significantly above/below the "
          "uncompressed model, ⁺/⁻: above/below random drop (paired tests, Holm-corrected). "
          "⚑: a seed missed its target by more than 2 points.")


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: dict[str, Any]) -> str:
    """One :func:`bench.report.html.dataset_table` as a Markdown table."""
    lines = ["| " + " | ".join(_escape(h) for h in table["header"]) + " |",
             "|" + "---|" * len(table["header"])]
    for row in table["rows"]:
        cells = []
        for c in row["cells"]:
            text = _escape(c["text"])
            if text and c["bold"]:
                text = f"**{text}**"
            cells.append(text + c["mark"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLAIMS_LEGEND = ("Paper: the paper's figures (subject vs comparator). Ours: seed mean ± sample std over the "
                 "n paired seeds. p: paired t-test of subject − threshold(comparator), Holm-corrected "
                 "across all claim rows. holds / does not hold: mean difference above / below 0 at "
                 "p < {alpha}; inconclusive: fewer than 2 seeds or p ≥ {alpha}; not run: an arm has no "
                 "cells. Transferred: a dataset the paper did not make the claim on. An arm whose training "
                 "stopped at its epoch budget while improving is a lower bound: a verdict it could overturn "
                 "(does not hold with the subject cut short, holds with the comparator cut short) is "
                 "inconclusive.")


def claims_markdown(table: dict[str, Any] | None) -> list[str]:
    """The ``## Claims`` section: :func:`bench.report.claims.claims_table` as a Markdown table, or a
    line saying that no claim is declared."""
    from bench.report.stats import ALPHA

    parts = ["## Claims", ""]
    if not table or not table.get("declared", bool(table.get("rows"))):
        return [*parts, "No registered method declares claims.", ""]
    header = table["header"]
    if table["rows"]:
        parts += ["| " + " | ".join(_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(_escape(str(c)) for c in row["cells"]) + " |" for row in table["rows"]]
        parts += ["", CLAIMS_LEGEND.format(alpha=ALPHA)]
    else:
        parts.append("No declared claim has cells for both of its arms in these results.")
    not_run = table.get("not_run") or []
    if not_run:
        parts += ["", f"Not run here ({len(not_run)}):", ""]
        parts += [f"- `{r['claim']}` on {r['dataset']}: {_escape(str(r['reason']))}" for r in not_run]
    if table.get("elsewhere_text"):
        parts += ["", _escape(table["elsewhere_text"])]
    return [*parts, ""]



def summary_markdown(title: str, datasets: list[dict[str, Any]], notes: list[dict[str, Any]],
                     claims: dict[str, Any] | None = None) -> str:
    """The whole ``summary.md``: a section per dataset, the claims checked (``claims``:
    :func:`bench.report.claims.claims_table`), then the notes cells asked to show."""
    parts = [f"# {title}", "", LEGEND, ""]
    for d in datasets:
        parts += [f"## {d['name']}", "", table_markdown(d["table"]), ""]
    parts += claims_markdown(claims)
    if notes:
        parts += ["## Notes", ""]
        parts += [f"- {n['dataset']}, {_escape(n['variant'])} ({n['cells']} "
                  f"cell{'s' if n['cells'] != 1 else ''}): {n['note']}" for n in notes]
        parts.append("")
    return "\n".join(parts)
