"""Report figures: accuracy and cost against the compression ratio, and accuracy against cost.

Every figure is drawn with seaborn/matplotlib on a private :class:`matplotlib.figure.Figure`
rendered by the Agg canvas: pyplot is never used, so no global figure is opened (nothing to
close, nothing shown) and the caller's backend is left alone. Each figure comes back as a
:class:`Figure` holding a base64 PNG, ready to embed in a self-contained HTML page.

Input is the tidy long frame of ``cells.csv`` restricted to successful cells: one row per
(cell, name) with the columns ``dataset``, ``method``, ``emb_target``, ``edge_target``,
``layers_target``, ``seed``, ``flagged``, ``name`` and ``value``. The uncompressed reference
method (:data:`REFERENCE`) is drawn as a dashed horizontal line at its seed-mean in the
ratio figures, and as an ordinary point in the accuracy-cost figures. Colours and markers are
fixed per method from the sorted list of every method in the frame, so a method looks the same
in every figure of a report built from the same frame.

If a method was run at more than one (edge target, layers target) combination on a dataset, each
combination is its own series, labelled ``method (edge 0.5, layers 2)``, in the method's colour.
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullFormatter, NullLocator

from bench.contract import REFERENCE

__all__ = [
    "ACCURACY",
    "COSTS",
    "REFERENCE",
    "Figure",
    "accuracy_vs_cost",
    "accuracy_vs_ratio",
    "cost_vs_ratio",
    "figures_for_dataset",
    "method_style",
    "pareto_front",
]

ACCURACY: tuple[str, ...] = ("recall@20", "ndcg@20")
COSTS: dict[str, str] = {
    "flops": "inference multiply-adds",
    "bits": "stored bits",
    "mem_scoring_bytes": "scoring memory above its start (MiB)",
    "peak_mem_scoring_bytes": "peak memory, scoring (MiB)",
    "latency_scoring_b64_p50_ms": "scoring latency, 64 users, p50 (ms)",
}
REFERENCE_LABEL = f"{REFERENCE} (uncompressed)"

FIGSIZE = (6.4, 4.0)
DPI = 100
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SERIES_KEYS = ["series", "method", "emb_target", "seed"]


@dataclass
class Figure:
    """One rendered figure of the report."""

    key: str  # stable id, e.g. "ml-100k-recall@20-vs-emb"
    title: str
    caption: str  # what is plotted, the spread shown, units
    png_base64: str  # base64 of the PNG bytes, no "data:" prefix

    def png_bytes(self) -> bytes:
        return base64.b64decode(self.png_base64)

    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header."""
        head = base64.b64decode(self.png_base64[:32])
        if len(head) < 24 or not head.startswith(_PNG_SIGNATURE):
            raise ValueError(f"figure {self.key!r} does not hold a PNG")
        width, height = struct.unpack(">II", head[16:24])
        return width, height

    def img_tag(self) -> str:
        """An ``<img>`` element embedding the PNG as a data URI; the alt text is the escaped title."""
        width, height = self.size()
        return (f'<img alt="{html.escape(self.title, quote=True)}" '
                f'src="data:image/png;base64,{self.png_base64}" width="{width}" height="{height}" '
                f'style="max-width:100%;height:auto">')


# --- Pareto front ---------------------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points among ``(cost, accuracy)`` pairs.

    Lower cost and higher accuracy are better. A point is dominated when another point has cost
    ``<=`` and accuracy ``>=`` with at least one strict; identical points therefore do not
    dominate each other and are all on the front. Points with a NaN or infinite coordinate are
    never on the front and dominate nothing.
    """
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    valid = np.isfinite(arr).all(axis=1)
    cost, acc = arr[:, 0], arr[:, 1]
    front = []
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        no_worse = (cost <= cost[i]) & (acc >= acc[i])
        better = (cost < cost[i]) | (acc > acc[i])
        if not (others & no_worse & better).any():
            front.append(int(i))
    return front


# --- styling --------------------------------------------------------------------------------------

def method_style(cells: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``method -> (hex colour, marker)`` from the sorted list of every method in ``cells``.

    The "colorblind" palette for up to 10 methods, "husl" beyond.
    """
    methods = sorted({str(m) for m in cells["method"].dropna().unique()})
    n = len(methods)
    colours = sns.color_palette("colorblind" if n <= 10 else "husl", max(n, 1)).as_hex()
    return {m: (colours[i], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}


@dataclass(frozen=True)
class _Series:
    label: str
    method: str
    colour: str
    marker: str


@contextmanager
def _style() -> Iterator[None]:
    rc = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "xtick.labelsize": 8, "ytick.labelsize": 8}
    with sns.axes_style("whitegrid"), mpl.rc_context(rc):
        yield


def _new_axes() -> tuple[MplFigure, Axes]:
    fig = MplFigure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _render(fig: MplFigure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: float) -> str:
    return f"{x:g}"


# --- data preparation -----------------------------------------------------------------------------

def _truthy(value: object) -> bool:
    """``flagged`` as read back from anywhere: bools, 0/1, "True"/"false", missing (False)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() in {"true", "1", "1.0", "yes"}


def _dataset_frame(cells: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, dict[str, _Series], str]:
    """The dataset's rows with numeric values and a ``series`` column, the series styles and the
    reference method's colour."""
    styles = method_style(cells)
    df = cells.loc[cells["dataset"] == dataset].copy()
    df["method"] = df["method"].astype(str)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["emb_target"] = pd.to_numeric(df["emb_target"], errors="coerce").astype(float)
    df["flagged"] = df["flagged"].map(_truthy) if "flagged" in df else False
    for col in ("edge_target", "layers_target"):
        if col not in df:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    # NaN-safe keys for the (edge, layers) combination of each cell
    edge = df["edge_target"].fillna(-1.0)
    layers = df["layers_target"].fillna(-1.0)
    combos = pd.DataFrame({"method": df["method"], "edge": edge, "layers": layers}).drop_duplicates()
    several = set(combos["method"][combos["method"].duplicated()])
    labels = []
    for method, e, la in zip(df["method"], edge, layers, strict=True):
        parts = [f"edge {_fmt(e)}" if e >= 0 else "", f"layers {_fmt(la)}" if la >= 0 else ""]
        parts = [p for p in parts if p]
        labels.append(f"{method} ({', '.join(parts)})" if method in several and parts else method)
    df["series"] = labels
    series: dict[str, _Series] = {}
    for method in sorted(df["method"].unique()):
        colour, marker = styles[method]
        names = sorted(set(df.loc[df["method"] == method, "series"]))
        for j, name in enumerate(names):
            # variants of one method share its colour and differ by marker
            mk = marker if j == 0 else _MARKERS[(_MARKERS.index(marker) + 3 * j) % len(_MARKERS)]
            series[name] = _Series(name, method, colour, mk)
    return df, series, styles.get(REFERENCE, ("0.3", "*"))[0]


def _values(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Cell-level finite values of one name (one row per cell)."""
    sub = df.loc[(df["name"] == name) & np.isfinite(df["value"])]
    return sub.groupby(_SERIES_KEYS, dropna=False, sort=True).agg(
        value=("value", "mean"), flagged=("flagged", "any")).reset_index()


def _compressed(values: pd.DataFrame) -> pd.DataFrame:
    return values.loc[(values["method"] != REFERENCE) & np.isfinite(values["emb_target"])]


def _si(value: float, _pos: int | None = None) -> str:
    """Tick label with an SI suffix from 1000 up (``2.5G``), plain below; no mathtext (fast)."""
    if not math.isfinite(value) or value == 0:
        return "0"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def _cost_axis(axis: Axis, values: Sequence[float] | np.ndarray, log: bool) -> None:
    """SI tick labels on a cost axis; on a log axis minor ticks at 2 and 5 are labelled when the
    data span at most two decades."""
    axis.set_major_formatter(FuncFormatter(_si))
    if not log:
        return
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and math.log10(v.max() / v.min()) <= 2.0:
        def minor(value: float, _pos: int | None = None) -> str:
            mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0.0
            return _si(value) if mantissa in (2.0, 5.0) else ""

        axis.set_minor_formatter(FuncFormatter(minor))
    else:
        axis.set_minor_formatter(NullFormatter())


def _spans_decades(values: Sequence[float] | np.ndarray) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(v.size) and bool((v > 0).all()) and float(v.max() / v.min()) > 10.0


def _seed_phrase(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{n} seed{'s' if hi > 1 else ''} per point"


def _axis_label(name: str, costs: Mapping[str, str]) -> str:
    return costs.get(name) or COSTS.get(name) or name


def _short(name: str) -> str:
    """A cost's words for a title: its label without the unit (the raw name if it has no label)."""
    label = COSTS.get(name)
    return label.rsplit(" (", 1)[0] if label else name


def _in_mib(cells: pd.DataFrame, cost: str) -> pd.DataFrame:
    """``cells`` with a ``*_bytes`` cost's values in MiB, the unit of the report's tables."""
    if not cost.endswith("_bytes"):
        return cells
    out = cells.copy()
    rows = out["name"] == cost
    out.loc[rows, "value"] = out.loc[rows, "value"] / 2**20
    return out


def _finish(fig: MplFigure, ax: Axes, title: str, ylabel: str, handles: list[Line2D]) -> str:
    """Title, y label and the legend beside the axes; the rendered PNG (base64)."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _render(fig)


def _empty_figure(key: str, title: str, message: str) -> Figure:
    with _style():
        fig, ax = _new_axes()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
        png = _render(fig)
    return Figure(key, title, f"No data: {message}.", png)


# relative horizontal offset between neighbouring series on a ratio plot (log x axis): methods with
# equal values at a target (memory, FLOPs) would otherwise hide each other's lines and markers
DODGE = 0.035


def _dodged(points: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """``points`` with ``x``: the target moved by ``DODGE`` steps per series, centred on the target."""
    step = {s: (i - (len(order) - 1) / 2) * DODGE for i, s in enumerate(order)}
    return points.assign(x=points["emb_target"] * (1 + points["series"].map(step).astype(float)))


def label_offsets(anchors: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7.0,
                  gap: tuple[float, float] = (4.0, 3.0)) -> list[tuple[float, float]]:
    """Offsets (points) for labels beside ``anchors`` (display positions in points) so that no two
    label boxes overlap: each label tries beside its point, then one line lower, one higher, two
    lower, ... (width estimated at 0.6 em per character, height 1.2 em)."""
    height = 1.2 * fontsize
    placed: list[tuple[float, float, float, float]] = []
    offsets: list[tuple[float, float]] = []
    for (ax_, ay), text in zip(anchors, texts, strict=True):
        width = 0.6 * fontsize * len(text) + 1.0
        for k in range(41):
            dy = gap[1] + (-1) ** k * ((k + 1) // 2) * height
            box = (ax_ + gap[0], ay + dy, ax_ + gap[0] + width, ay + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        offsets.append((gap[0], dy))
    return offsets


def _lineplot(points: pd.DataFrame, order: list[str], series: dict[str, Any], ax: Any) -> None:
    sns.lineplot(data=points, x="x", y="value", hue="series", style="series",
                 hue_order=order, style_order=order,
                 palette={s: series[s].colour for s in order},
                 markers={s: series[s].marker for s in order}, dashes=False,
                 estimator="mean", errorbar="sd", err_style="bars",
                 err_kws={"capsize": 3, "elinewidth": 1}, legend=False, ax=ax)


# --- figures --------------------------------------------------------------------------------------

def _ratio_figure(cells: pd.DataFrame, dataset: str, name: str, *, key: str, title: str, ylabel: str,
                  what: str, log_y: bool | None, is_cost: bool) -> Figure:
    df, series, ref_colour = _dataset_frame(cells, dataset)
    values = _values(df, name)
    points = _compressed(values)
    if points.empty:
        return _empty_figure(key, title, f"no finite {name} for a compressed method on {dataset}")
    ref = values.loc[values["method"] == REFERENCE, "value"]
    ref_mean = float(ref.mean()) if len(ref) else math.nan
    ref_std = float(ref.std(ddof=1)) if len(ref) > 1 else math.nan
    order = [s for s in series if s in set(points["series"])]
    points = _dodged(points, order)
    targets = sorted(set(points["emb_target"]))
    if log_y is None:
        log_y = _spans_decades([*points["value"], ref_mean])
    with _style():
        fig, ax = _new_axes()
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        with warnings.catch_warnings():
            # seaborn 0.13 + pandas 2.x: matplotlib's errorbar calls float() on a one-element
            # Series (a FutureWarning inside those libraries, not in our data)
            warnings.simplefilter("ignore", FutureWarning)
            _lineplot(points, order, series, ax)
        handles: list[Line2D] = [Line2D([], [], color=series[s].colour, marker=series[s].marker, label=s)
                                 for s in order]
        if math.isfinite(ref_mean):
            colour = ref_colour
            ax.axhline(ref_mean, color=colour, linestyle="--", linewidth=1.5, zorder=1)
            if math.isfinite(ref_std) and ref_std > 0:
                ax.axhspan(ref_mean - ref_std, ref_mean + ref_std, color=colour, alpha=0.12, zorder=0,
                           linewidth=0)
            handles.append(Line2D([], [], color=colour, linestyle="--", label=REFERENCE_LABEL))
        flagged = points.loc[points["flagged"]]
        if len(flagged):
            ax.scatter(flagged["x"], flagged["value"], marker="x", s=45, color="black",
                       linewidths=1.2, zorder=5)
            handles.append(Line2D([], [], color="black", marker="x", linestyle="None",
                                  label="flagged cell"))
        ax.xaxis.set_major_locator(FixedLocator(targets))
        ax.xaxis.set_major_formatter(FixedFormatter([_fmt(t) for t in targets]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(max(targets) * 1.3, min(targets) / 1.3)  # inverted: compression grows rightwards
        ax.set_xlabel("embedding parameter ratio (target, log scale; more compression \u2192)")
        if is_cost:
            _cost_axis(ax.yaxis, [*points["value"], ref_mean], log_y)
        png = _finish(fig, ax, title, ylabel + (" (log scale)" if log_y else ""), handles)
    caption = (f"{what} on {dataset} against the embedding parameter ratio target, seed mean per method "
               f"and target ({_seed_phrase(points.groupby(['series', 'emb_target']).size())}), each "
               f"method drawn slightly beside the target so that equal values stay visible; "
               f"error bars: \u00b11 std across seeds (none with a single seed)")
    if math.isfinite(ref_mean):
        caption += (f"; dashed line: {REFERENCE_LABEL} seed mean"
                    + (" with a \u00b11 std band" if math.isfinite(ref_std) and ref_std > 0 else ""))
    if len(flagged):
        caption += ("; x: flagged cells (achieved ratio more than 2 points off target), "
                    "included in the means")
    return Figure(key, title, caption + ".", png)


def accuracy_vs_ratio(cells: pd.DataFrame, dataset: str, metric: str) -> Figure:
    """Seed-mean ``metric`` per (method, emb_target) with ±1 std error bars; the reference dashed."""
    return _ratio_figure(
        cells, dataset, metric, key=f"{dataset}-{metric}-vs-emb",
        title=f"{dataset}: {metric} vs embedding ratio", ylabel=f"{metric} (higher is better)",
        what=f"{metric} (a fraction in [0, 1])", log_y=False, is_cost=False)


def cost_vs_ratio(cells: pd.DataFrame, dataset: str, cost: str, *, label: str | None = None) -> Figure:
    """Seed-mean ``cost`` per (method, emb_target); log y when the values span more than a decade.

    ``label`` describes the cost with its unit (default: from :data:`COSTS`, else the name)."""
    label = label or _axis_label(cost, COSTS)
    return _ratio_figure(
        _in_mib(cells, cost), dataset, cost, key=f"{dataset}-{cost}-vs-emb",
        title=f"{dataset}: {_short(cost)} vs embedding ratio",
        ylabel=label, what=f"{cost} ({label})", log_y=None, is_cost=True)


def accuracy_vs_cost(cells: pd.DataFrame, dataset: str, metric: str, cost: str, *,
                     label: str | None = None) -> Figure:
    """One point per (method, emb_target) at the seed means of ``cost`` and ``metric``, with the
    Pareto front over all points (reference included) as a step line and dominated points faded.

    ``label`` describes the cost with its unit (default: from :data:`COSTS`, else the name)."""
    key = f"{dataset}-{metric}-vs-{cost}"
    title = f"{dataset}: {metric} vs {_short(cost)}"
    label = label or _axis_label(cost, COSTS)
    df, series, _ = _dataset_frame(_in_mib(cells, cost), dataset)
    sub = df.loc[df["name"].isin([metric, cost]) & np.isfinite(df["value"])]
    wide = sub.groupby([*_SERIES_KEYS, "name"], dropna=False)["value"].mean().unstack("name")
    if metric not in wide or cost not in wide:
        return _empty_figure(key, title, f"no cell with both {metric} and {cost} on {dataset}")
    wide = wide.dropna(subset=[metric, cost]).reset_index()
    if wide.empty:
        return _empty_figure(key, title, f"no cell with both {metric} and {cost} on {dataset}")
    pts = wide.groupby(["series", "method", "emb_target"], dropna=False).agg(
        x=(cost, "mean"), x_sd=(cost, "std"), y=(metric, "mean"), y_sd=(metric, "std"),
        n=(metric, "size")).reset_index()
    front = set(pareto_front(list(zip(pts["x"], pts["y"], strict=True))))
    log_x = _spans_decades(pts["x"])
    with _style():
        fig, ax = _new_axes()
        if log_x:
            ax.set_xscale("log")
        if front:
            fp = pts.iloc[sorted(front)].sort_values(["x", "y"])
            ax.step(fp["x"], fp["y"], where="post", color="0.25", linewidth=1, zorder=1)
        labels = []
        for i, p in pts.iterrows():
            s = series[p["series"]]
            on = i in front
            alpha = 1.0 if on else 0.3
            ax.errorbar(p["x"], p["y"], xerr=None if pd.isna(p["x_sd"]) else p["x_sd"],
                        yerr=None if pd.isna(p["y_sd"]) else p["y_sd"], fmt="none", ecolor=s.colour,
                        elinewidth=0.8, alpha=alpha, zorder=2)
            ax.scatter([p["x"]], [p["y"]], s=60 if s.method == REFERENCE else 40,
                       marker="*" if s.method == REFERENCE else s.marker, color=s.colour, alpha=alpha,
                       edgecolors="black" if on else "none", linewidths=0.8, zorder=3)
            if s.method != REFERENCE and math.isfinite(p["emb_target"]):
                labels.append((p["x"], p["y"], _fmt(p["emb_target"]), max(alpha, 0.5), s.colour))
        _annotate_apart(fig, ax, labels)
        handles = [Line2D([], [], linestyle="None", color=s.colour,
                          marker="*" if s.method == REFERENCE else s.marker,
                          markersize=9 if s.method == REFERENCE else 6,
                          label=REFERENCE_LABEL if s.label == REFERENCE else s.label)
                   for s in series.values() if s.label in set(pts["series"])]
        if front:
            handles.append(Line2D([], [], color="0.25", linewidth=1, label="Pareto front"))
        _cost_axis(ax.xaxis, pts["x"], log_x)
        ax.set_xlabel(label + (" (log scale)" if log_x else "") + ", lower is better")
        png = _finish(fig, ax, title, f"{metric} (higher is better)", handles)
    caption = (f"{metric} (a fraction in [0, 1]) against {cost} ({label}) on {dataset}: one point per "
               f"method and embedding ratio target (the number beside it) at the seed means "
               f"({_seed_phrase(pts['n'])}); bars: \u00b11 std across seeds; step line: Pareto front "
               f"(lower cost, higher {metric}) over all points, outlined; dominated points faded.")
    return Figure(key, title, caption, png)


def _annotate_apart(fig: MplFigure, ax: Axes, labels: list[tuple[float, float, str, float, str]]) -> None:
    """Write each ``(x, y, text, alpha, colour)`` label beside its point, moved up or down where labels
    would overlap (points sharing a cost, e.g. every method at one FLOP count), with a thin leader
    line to its point when moved; the label takes its method's colour."""
    if not labels:
        return
    ax.margins(x=0.15)  # room on the right for the labels of the costliest points
    fig.canvas.draw()  # settles the axis limits, so data positions map to their final place
    to_points = 72.0 / fig.dpi
    anchors = [tuple(ax.transData.transform((x, y)) * to_points) for x, y, *_ in labels]
    order = sorted(range(len(labels)), key=lambda i: (anchors[i][0], -anchors[i][1]))
    offsets = label_offsets([anchors[i] for i in order], [labels[i][2] for i in order])
    for i, (dx, dy) in zip(order, offsets, strict=True):
        x, y, text, alpha, colour = labels[i]
        moved = abs(dy - 3.0) > 1e-9
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, alpha=alpha,
                    color=colour, va="bottom",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"} if moved else None)


def _has_compressed(df: pd.DataFrame, name: str) -> bool:
    sel = (df["name"] == name) & (df["method"] != REFERENCE) & np.isfinite(df["value"])
    return bool((sel & np.isfinite(df["emb_target"])).any())


def figures_for_dataset(cells: pd.DataFrame, dataset: str, metrics: Sequence[str] = ACCURACY,
                        costs: Mapping[str, str] | Sequence[str] = COSTS) -> list[Figure]:
    """Every figure for ``dataset``, in a stable order: each metric against the ratio, each cost
    against the ratio, then each (metric, cost) pair. A figure is skipped when no compressed
    method has a finite value for it (for a pair: a cell with both), so the list may be empty.
    Scoring memory is the phase's own need (``mem_scoring_bytes``) where the store has it; the
    process's peak (``peak_mem_scoring_bytes``) only for stores from before that figure."""
    df = cells.loc[cells["dataset"] == dataset].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["emb_target"] = pd.to_numeric(df["emb_target"], errors="coerce").astype(float)
    labels: Mapping[str, str] = costs if isinstance(costs, Mapping) else {}
    metrics = [m for m in metrics if _has_compressed(df, m)]
    cost_names = [c for c in costs if _has_compressed(df, c)]
    if "mem_scoring_bytes" in cost_names and "peak_mem_scoring_bytes" in cost_names:
        # what the phase needs, not the process's peak (which holds whatever ran before it)
        cost_names.remove("peak_mem_scoring_bytes")
    figures = [accuracy_vs_ratio(cells, dataset, m) for m in metrics]
    figures += [cost_vs_ratio(cells, dataset, c, label=_axis_label(c, labels)) for c in cost_names]
    for m in metrics:
        for c in cost_names:
            both = df.loc[df["name"].isin([m, c]) & (df["method"] != REFERENCE) & np.isfinite(df["value"])]
            ids = both.groupby(["method", "emb_target", "edge_target", "layers_target", "seed"],
                               dropna=False)["name"].nunique()
            if (ids == 2).any():
                figures.append(accuracy_vs_cost(cells, dataset, m, c, label=_axis_label(c, labels)))
    return figures
