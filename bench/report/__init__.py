"""Reports built from result stores alone: ``cells.csv``, ``summary.csv``, ``claims.csv``, ``index.html``
(and LaTeX).

``recshrink report RESULTS... -o DIR`` builds a report from one or several stores (merged; see
:func:`bench.report.tables.load_cells`), without rerunning anything; ``recshrink run`` builds one
for its own cells when it ends. Modules: :mod:`~bench.report.tables` (the two CSVs),
:mod:`~bench.report.stats` (paired tests, Holm), :mod:`~bench.report.claims` (the papers' claims
checked), :mod:`~bench.report.plots` (seaborn figures),
:mod:`~bench.report.html` (the page), :mod:`~bench.report.latex`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.claims import Claim
from bench.data.dataset import COLD_PAIR_WARN_SHARE
from bench.files import write_atomically
from bench.measure.latency import BUSY_NOTE_START, busy_note
from bench.registry import available_methods
from bench.report.claims import claims_table, cut_short_keys, evaluate_claims
from bench.report.stats import add_to_summary, comparisons
from bench.report.tables import cells_frame, load_cells, summary_frame
from bench.store import ResultStore


def _method_info(names: Iterable[str]) -> list[dict[str, Any]]:
    known = available_methods()
    out = []
    for name in sorted(set(names)):
        cls = known.get(name)
        if cls is None:
            out.append({"name": name, "axes": [], "description": "(not registered in this installation)",
                        "target_mapping": "", "simplifications": []})
        else:
            info = cls.info()
            out.append({k: info[k] for k in ("name", "axes", "description", "target_mapping",
                                             "simplifications")})
    return out


def _environments(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counter: Counter = Counter()
    for c in cells:
        e = c["environment"]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(e.get("versions", {}).items()) if v)
        row = (f"{e.get('device', '')} ({e.get('device_name', '')})", e.get("torch_threads", ""),
               e.get("git_sha") or "", e.get("code_version") or "", versions, e.get("platform", ""))
        counter[row] += 1
    return [{"n": n, "device": r[0], "threads": r[1], "git_sha": r[2], "code_version": r[3],
             "versions": r[4], "platform": r[5]} for r, n in counter.most_common()]


def _problems(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from bench.report.tables import variant_label

    out = []
    for c in cells:
        if c["status"] == "ok" and not c["flagged"]:
            continue
        target = f"{c['emb_target']:g}"
        if c["edge_target"] is not None:
            target += f" / edge {c['edge_target']:g}"
        variant = variant_label(c["method"], c["spec"].get("options", {}))
        out.append({"dataset": c["dataset"], "variant": variant,
                    "target": target, "seed": c["seed"], "status": c["status"],
                    "reason": c["error"] if c["status"] != "ok" else f"flagged: {c['flag_reason']}"})
    return out


BUDGET_NOTE = ("stage {stage} was still improving when the epoch budget ran out (its best validation "
               "epoch was the last allowed): at this budget the result is a lower bound")


UNCONVERGED_REFERENCE_NOTE = (
    "the dense reference (lightgcn) was still improving when its epoch budget ran out: every "
    "figure relative to dense on this dataset compares against an unconverged model, and a method "
    "that trains longer from the base checkpoint can pass it without being better")


SHARED_TRAINING_START = "training time measured while other work ran on the machine"


def shared_training_note(stages: dict[str, list[int]]) -> str:
    """The note for cells with training epochs that ran beside other work: per stage name, the
    epochs whose 1-minute load exceeded the training's own threads and all its epochs, summed over
    the cells (``stages``: name -> [shared, epochs])."""
    parts = ", ".join(f"{name} {shared:,} of {epochs:,}" for name, (shared, epochs) in stages.items())
    return (f"{SHARED_TRAINING_START} (epochs whose 1-minute load exceeded the training's own threads, "
            f"summed over these cells: {parts}): their training seconds are not an idle machine's")


UNRECORDED_NOTE = (
    "these cells recorded no training stages (their store predates the record): whether their "
    "training converged is unknown, so a claim verdict that a lower bound could overturn is not given")


COLD_PAIRS_NOTE = (
    "{share:.1%} of the {split} pairs ({cold} of {pairs}: {cold_user} with a user, {cold_item} with an "
    "item that never occurs in train) can be ranked only by chance: they cap every method's recall "
    "alike; frameworks that drop them report higher figures on the same files (the dataset's split "
    "option drop_cold = true does so here)")


SHARED_MACHINE_NOTE = (
    "{n} cells ran at once on one machine (one worker process each): their time, latency and "
    "memory figures were measured while other cells ran and are not those of an idle machine")


MIXED_MEMORY_NOTE = (
    "scoring memory was measured in {n} ways across these cells ({methods}): tensor allocations "
    "(counted on CPU, the allocator's on GPU) and the resident-set increment are not comparable; "
    "rerun the older cells to compare their memory")

# what each way of measuring a phase's need counts: CUDA's allocator and the CPU count agree
NEED_KINDS = {"cuda_max_memory_allocated": "tensor allocations",
              "cpu_tensor_allocations": "tensor allocations", "cpu_rss_increment": "resident set"}


def _scoring_need_method(info: dict[str, Any]) -> str:
    """How a cell measured its scoring need: ``mem_scoring_method``, or for cells that predate that
    record, what their ``peak_mem_method`` implies (the resident-set increment on CPU)."""
    if "mem_scoring_method" in info:
        return str(info["mem_scoring_method"])
    peak = info.get("peak_mem_method")
    if peak is None:
        return "not recorded"
    return "cuda_max_memory_allocated" if peak == "cuda_max_memory_allocated" else "cpu_rss_increment"


def _memory_methods(cells: list[dict[str, Any]]) -> dict[str, Counter]:
    """Per dataset, how many successful cells measured their scoring need by each method."""
    found: dict[str, Counter] = {}
    for c in cells:
        if c["status"] == "ok" and (c.get("measurements") or {}).get("mem_scoring_bytes") is not None:
            found.setdefault(c["dataset"], Counter())[_scoring_need_method(c.get("info") or {})] += 1
    return found


def _notes(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, the notes its cells ask the report to show (``settings["report_note"]``, a
    string or a list of them, e.g. "not comparable to the paper") and the training stages the epoch
    budget cut short (``info["training_stages"]``, or no record of them), with how many cells carry
    each; one note for its cells whose latency was timed on a busy machine
    (``info["latency"]["machine_load"]``) and one for those with training epochs run beside other
    work (the stages' ``shared_epochs``), each aggregated over the cells; a cut stage of the dense
    reference, cells run several at once on one machine, an evaluation split with many cold pairs
    (``info["cold_pairs"]``) and scoring memory measured by more than one method add a note for the
    whole dataset (variant ``all``)."""
    from bench.report.tables import REFERENCE, variant_label

    counter: Counter = Counter()
    busy: dict[tuple[str, str], list[dict[str, Any]]] = {}
    shared: dict[tuple[str, str], tuple[list[int], dict[str, list[int]]]] = {}  # [cells], stage totals
    for c in cells:
        if c["status"] != "ok":
            continue
        variant = variant_label(c["method"], c["spec"].get("options", {}))
        info = c.get("info") or {}
        load = (info.get("latency") or {}).get("machine_load")
        stages = info.get("training_stages")
        own = [s for s in stages or [] if s.get("shared_epochs")]
        # the timing notes are built below from these records, one per variant; older stores also
        # kept them as per-cell text, which is then left out
        made_here = ((BUSY_NOTE_START,) if load else ()) + (
            (SHARED_TRAINING_START,) if stages and all("shared_epochs" in s for s in stages) else ())
        notes = (c.get("settings") or {}).get("report_note") or []
        for note in [notes] if isinstance(notes, str) else notes:
            if not note.startswith(made_here):
                counter[(c["dataset"], variant, note)] += 1
        if load and load.get("busy"):
            busy.setdefault((c["dataset"], variant), []).append(load)
        if own:
            n_cells, totals = shared.setdefault((c["dataset"], variant), ([0], {}))
            n_cells[0] += 1
            for stage in own:
                acc = totals.setdefault(stage["stage"], [0, 0])
                acc[0] += stage["shared_epochs"]
                acc[1] += stage["epochs"]
        if stages is None:
            counter[(c["dataset"], variant, UNRECORDED_NOTE)] += 1
        # a stage name counts once per cell: LightGNN's pruning runs are all stage "lightgnn-run"
        cut = list(dict.fromkeys(s["stage"] for s in stages or [] if s.get("at_budget")))
        for stage in cut:
            counter[(c["dataset"], variant, BUDGET_NOTE.format(stage=stage))] += 1
        if cut and c["method"] == REFERENCE:
            counter[(c["dataset"], "all", UNCONVERGED_REFERENCE_NOTE)] += 1
        for split, cold in ((c.get("info") or {}).get("cold_pairs") or {}).items():
            if cold["share"] > COLD_PAIR_WARN_SHARE:
                counter[(c["dataset"], "all", COLD_PAIRS_NOTE.format(split=split, **cold))] += 1
        concurrent = (c.get("environment") or {}).get("concurrent_cells")
        if concurrent is not None and concurrent > 1:
            counter[(c["dataset"], "all", SHARED_MACHINE_NOTE.format(n=concurrent))] += 1
    for (dataset, variant), loads in busy.items():
        counter[(dataset, variant, busy_note(loads))] += len(loads)
    for (dataset, variant), ([n_cells], totals) in shared.items():
        counter[(dataset, variant, shared_training_note(totals))] += n_cells
    for dataset, methods in _memory_methods(cells).items():
        if len({NEED_KINDS.get(m, m) for m in methods}) > 1:
            listed = ", ".join(f"{m}: {k}" for m, k in sorted(methods.items()))
            counter[(dataset, "all", MIXED_MEMORY_NOTE.format(n=len(methods), methods=listed))] += sum(
                methods.values())
    return [{"dataset": d, "variant": v, "note": n, "cells": k} for (d, v, n), k in sorted(counter.items())]


def build_report(stores: Sequence[ResultStore | str | Path], out: str | Path,
                 keys: Iterable[str] | None = None, latex: bool = False, title: str | None = None,
                 figures: bool = True, claims: Sequence[Claim] | None = None,
                 runs: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``cells.csv``, ``summary.csv``, ``claims.csv``, ``index.html``, ``summary.md`` (and
    ``summary-<dataset>.tex``) to ``out``. ``claims``: the claims to check (default: every registered
    method's, :func:`bench.report.claims.registered_claims`); ``runs``: only these runs' cells."""
    from bench.report.html import dataset_table, headline_metrics, render
    from bench.report.markdown import summary_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = [s if isinstance(s, ResultStore) else ResultStore(_existing(s), create=False) for s in stores]
    try:
        cells = load_cells(opened, keys, runs)
        runs = [r for s in opened for r in s.runs()]
        sources = [str(s.path) for s in opened]
    finally:
        for s, given in zip(opened, stores, strict=True):
            if not isinstance(given, ResultStore):
                s.close()
    if keys is not None:
        names = {c["run"] for c in cells}
        runs = [r for r in runs if r["name"] in names]
    frame = cells_frame(cells)
    paths = {"cells": out / "cells.csv", "summary": out / "summary.csv", "html": out / "index.html"}
    write_atomically(paths["cells"], lambda tmp: frame.to_csv(tmp, index=False))
    names = sorted(frame["name"].dropna().unique()) if not frame.empty else []
    metrics = headline_metrics(names)
    all_metrics = [n for n in names if n.split("@")[0] in ("recall", "ndcg", "precision", "hit", "mrr")]
    summary = summary_frame(frame) if not frame.empty else pd.DataFrame()
    if not frame.empty:
        summary = add_to_summary(summary, comparisons(frame, all_metrics))
    write_atomically(paths["summary"], lambda tmp: summary.to_csv(tmp, index=False))
    claim_rows = evaluate_claims(frame, claims, cut_short=cut_short_keys(cells))
    paths["claims"] = out / "claims.csv"
    write_atomically(paths["claims"], lambda tmp: claim_rows.to_csv(tmp, index=False))
    held = sorted(frame["dataset"].unique()) if not frame.empty else []
    claim_table = claims_table(claim_rows, held)

    datasets = []
    for dataset in held:
        sub = summary[summary["dataset"] == dataset]
        figs = []
        if figures:
            from bench.report.plots import figures_for_dataset

            ok = frame[(frame["status"] == "ok") & frame["name"].notna()]
            figs = figures_for_dataset(ok.assign(method=ok["variant"]), dataset, metrics=tuple(metrics))
        datasets.append({"name": dataset, "table": dataset_table(sub, metrics), "figures": figs})
    per_cell = {c["key"]: c for c in cells}
    counts = {"cells": len(per_cell), "ok": sum(c["status"] == "ok" for c in cells),
              "failed": sum(c["status"] == "failed" for c in cells),
              "flagged": sum(bool(c["flagged"]) for c in cells)}
    run_names = sorted({c["run"] for c in cells})
    title = title or f"recshrink report: {', '.join(run_names) or 'no cells'}"
    notes = _notes(cells)
    page = render(title, sources, datasets, _problems(cells), _method_info(c["method"] for c in cells),
                  _environments(cells), [{**r, "config": r["config"]} for r in runs], counts, notes,
                  claim_table)
    write_atomically(paths["html"], lambda tmp: tmp.write_text(page, encoding="utf-8"))
    paths["markdown"] = out / "summary.md"
    markdown = summary_markdown(title, datasets, notes, claim_table)
    write_atomically(paths["markdown"], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    if latex and not summary.empty:
        from bench.report.latex import summary_latex

        for dataset in sorted(summary["dataset"].unique()):
            p = out / f"summary-{dataset}.tex"
            tex = summary_latex(summary[summary["dataset"] == dataset], metrics, dataset)
            write_atomically(p, lambda tmp, tex=tex: tmp.write_text(tex, encoding="utf-8"))
            paths[f"latex-{dataset}"] = p
    return paths


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "results.sqlite"
    if not p.is_file():
        raise FileNotFoundError(f"no results store at {p}")
    return p


def write_run_outputs(store: ResultStore, out: Path, keys: Iterable[str] | None, config: Any = None) -> None:
    """The report of one run's cells (called by the runner at the end, also after an interruption)."""
    title = f"recshrink: {config.name}" if config is not None else None
    build_report([store], out, keys=keys, title=title)


__all__ = ["build_report", "cells_frame", "load_cells", "summary_frame", "write_run_outputs"]
