"""``summary.md``: the HTML report's per-dataset tables and notes as Markdown, for a README or an
issue. Same rows, numbers and markers as ``index.html`` (it renders :func:`dataset_table`'s
output): seed mean ± std, the best value per target in bold, ▲/▼ significantly above/below the
uncompressed model, ⁺/⁻ above/below random drop (Holm-corrected), ⚑ a seed missed its target.
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


def summary_markdown(title: str, datasets: list[dict[str, Any]], notes: list[dict[str, Any]]) -> str:
    """The whole ``summary.md``: a section per dataset, then the notes cells asked to show."""
    parts = [f"# {title}", "", LEGEND, ""]
    for d in datasets:
        parts += [f"## {d['name']}", "", table_markdown(d["table"]), ""]
    if notes:
        parts += ["## Notes", ""]
        parts += [f"- {n['dataset']}, {_escape(n['variant'])} ({n['cells']} "
                  f"cell{'s' if n['cells'] != 1 else ''}): {n['note']}" for n in notes]
        parts.append("")
    return "\n".join(parts)
