"""Report figures (``bench/report/plots.py``) on a synthetic long frame of successful cells."""

from __future__ import annotations

import base64
import io
import math
import warnings

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bench.report.plots import (
    ACCURACY,
    COSTS,
    Figure,
    accuracy_vs_cost,
    accuracy_vs_ratio,
    cost_vs_ratio,
    figures_for_dataset,
    method_style,
    pareto_front,
)
from tests.helpers import PLOT_DATASETS as DATASETS
from tests.helpers import PLOT_METHODS as METHODS
from tests.helpers import PLOT_NAMES, synthetic_cells

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(fig: Figure) -> tuple[int, int]:
    raw = base64.b64decode(fig.png_base64, validate=True)
    assert raw.startswith(PNG_SIGNATURE), fig.key
    img = mpimg.imread(io.BytesIO(raw), format="png")
    height, width = img.shape[:2]
    assert width > 0 and height > 0
    assert fig.size() == (width, height)
    assert fig.title and fig.caption.endswith(".")
    return width, height


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return synthetic_cells()


@pytest.fixture(scope="module")
def figures(cells: pd.DataFrame) -> dict[str, list[Figure]]:
    """All default figures of the first dataset; a cheaper subset (one metric, one cost) of the second."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning / UserWarning leaks out of the plotting
        return {DATASETS[0]: figures_for_dataset(cells, DATASETS[0]),
                DATASETS[1]: figures_for_dataset(cells, DATASETS[1], metrics=["ndcg@20"], costs=["bits"])}


STORED_COSTS = tuple(c for c in COSTS if c in PLOT_NAMES)  # the synthetic store's (no mem_scoring_bytes)


def expected_keys(dataset: str, metrics: tuple[str, ...] | list[str] = ACCURACY,
                  costs: tuple[str, ...] | list[str] = STORED_COSTS) -> list[str]:
    return ([f"{dataset}-{m}-vs-emb" for m in metrics] + [f"{dataset}-{c}-vs-emb" for c in costs]
            + [f"{dataset}-{m}-vs-{c}" for m in metrics for c in costs])


def test_figures_for_dataset_count_keys_and_pngs(figures: dict[str, list[Figure]]) -> None:
    assert len(figures[DATASETS[0]]) == 2 + 4 + 2 * 4
    assert [f.key for f in figures[DATASETS[0]]] == expected_keys(DATASETS[0])  # stable order
    assert [f.key for f in figures[DATASETS[1]]] == expected_keys(DATASETS[1], ["ndcg@20"], ["bits"])
    for dataset in DATASETS:
        for f in figures[dataset]:
            width, height = check_png(f)
            assert (width, height) == (640, 400)  # 6.4 x 4 in at 100 dpi
            assert dataset in f.title
            assert "std across seeds" in f.caption
            assert len(f.png_base64) < 200_000  # small enough for ~20 figures in a few MB
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_captions_mention_reference_flagged_and_front(figures: dict[str, list[Figure]]) -> None:
    by_key = {f.key: f for f in figures["ml-100k"]}
    recall = by_key["ml-100k-recall@20-vs-emb"].caption
    assert "lightgcn (uncompressed)" in recall and "flagged" in recall and "3 seeds per point" in recall
    assert "Pareto front" in by_key["ml-100k-recall@20-vs-flops"].caption
    assert "(ms)" in by_key["ml-100k-latency_scoring_b64_p50_ms-vs-emb"].caption


def test_figures_are_deterministic(cells: pd.DataFrame) -> None:
    a = accuracy_vs_ratio(cells, "ml-100k", "recall@20")
    b = accuracy_vs_ratio(cells, "ml-100k", "recall@20")
    assert a == b


def _colours_in(fig: Figure) -> set[str]:
    img = mpimg.imread(io.BytesIO(fig.png_bytes()), format="png")
    rgb = np.round(img[..., :3].reshape(-1, 3) * 255).astype(int)
    return {"#{:02x}{:02x}{:02x}".format(*p) for p in np.unique(rgb, axis=0)}


def test_palette_is_global_and_stable(cells: pd.DataFrame) -> None:
    style = method_style(cells)
    assert list(style) == sorted(METHODS)
    assert len({c for c, _ in style.values()}) == len(METHODS)
    assert method_style(cells) == method_style(cells.sample(frac=1.0, random_state=1))
    # a dataset lacking a method keeps the colours of the whole frame: pruning and quant are drawn
    # in their global colours, hashing's colour is absent
    df = cells.loc[~((cells["dataset"] == "yelp-mini") & (cells["method"] == "hashing"))
                   & cells["name"].isin(["recall@20"])]
    colours = _colours_in(accuracy_vs_ratio(df, "yelp-mini", "recall@20"))
    assert {style["pruning"][0], style["quant"][0], style["lightgcn"][0]} <= colours
    assert style["hashing"][0] not in colours


def test_flagged_read_back_as_strings(cells: pd.DataFrame) -> None:
    df = cells.loc[cells["name"] == "recall@20"].copy()
    df["flagged"] = df["flagged"].map({True: "True", False: "False"})
    df.loc[df.index[:3], "flagged"] = None
    fig = accuracy_vs_ratio(df, "ml-100k", "recall@20")
    assert "flagged cells" in fig.caption
    df["flagged"] = "False"
    assert "flagged" not in accuracy_vs_ratio(df, "ml-100k", "recall@20").caption


@pytest.mark.parametrize(("points", "expected"), [
    ([], []),
    ([(1.0, 0.5)], [0]),
    # 1 dominated by 0 (same cost, lower acc); 3 dominated by 2 (more cost, same acc)
    ([(1.0, 0.5), (1.0, 0.4), (2.0, 0.6), (3.0, 0.6), (0.5, 0.1)], [0, 2, 4]),
    # exact duplicates do not dominate each other; both stay on the front
    ([(1.0, 0.5), (1.0, 0.5), (2.0, 0.4)], [0, 1]),
    # duplicates that are dominated are both off the front
    ([(2.0, 0.4), (2.0, 0.4), (1.0, 0.5)], [2]),
    # NaN or infinite points are never on the front and dominate nothing
    ([(math.nan, 0.9), (1.0, math.nan), (2.0, 0.3), (math.inf, 1.0), (0.1, -math.inf), (3.0, 0.2)], [2]),
    ([(math.nan, math.nan)], []),
    # a chain where each point trades cost for accuracy
    ([(4.0, 0.4), (1.0, 0.1), (3.0, 0.3), (2.0, 0.2)], [0, 1, 2, 3]),
])
def test_pareto_front(points: list[tuple[float, float]], expected: list[int]) -> None:
    assert pareto_front(points) == expected


def test_single_seed_and_single_target(cells: pd.DataFrame) -> None:
    one = synthetic_cells(datasets=("d",), targets=(0.25,), seeds=(7,), names=("recall@20", "bits"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = figures_for_dataset(one, "d")
    assert [f.key for f in figs] == ["d-recall@20-vs-emb", "d-bits-vs-emb", "d-recall@20-vs-bits"]
    for f in figs:
        check_png(f)
    assert "1 seed per point" in figs[0].caption and "\u00b11 std band" not in figs[0].caption


def test_missing_names_nan_values_and_absent_data(cells: pd.DataFrame) -> None:
    df = cells.loc[cells["name"].isin(["recall@20", "ndcg@20", "bits", "latency_scoring_b64_p50_ms"])].copy()
    # quant has no latency at all; hashing's ndcg is all NaN; bits is NaN everywhere
    df = df.loc[~((df["method"] == "quant") & (df["name"] == "latency_scoring_b64_p50_ms"))]
    df.loc[(df["method"] == "hashing") & (df["name"] == "ndcg@20"), "value"] = math.nan
    df.loc[df["name"] == "bits", "value"] = math.nan
    figs = figures_for_dataset(df, "ml-100k")
    keys = [f.key for f in figs]
    latency = "latency_scoring_b64_p50_ms"
    assert keys == ["ml-100k-recall@20-vs-emb", "ml-100k-ndcg@20-vs-emb", f"ml-100k-{latency}-vs-emb",
                    f"ml-100k-recall@20-vs-{latency}", f"ml-100k-ndcg@20-vs-{latency}"]
    for f in figs:
        check_png(f)
    # absent data: direct calls draw a "no data" figure instead of raising
    for fig in (accuracy_vs_ratio(df, "ml-100k", "bits"), cost_vs_ratio(df, "nope", "flops"),
                accuracy_vs_cost(df, "ml-100k", "recall@20", "bits"),
                accuracy_vs_cost(df, "ml-100k", "recall@20", "unknown")):
        check_png(fig)
        assert fig.caption.startswith("No data")
    assert figures_for_dataset(df, "nope") == []
    only_reference = df.loc[df["method"] == "lightgcn"]
    assert figures_for_dataset(only_reference, "ml-100k") == []


def test_variants_and_custom_costs() -> None:
    df = synthetic_cells(datasets=("d",), methods=("lightgcn", "sparse"), names=("recall@20", "flops"))
    other = df.loc[df["method"] == "sparse"].copy()
    df.loc[df["method"] == "sparse", "edge_target"] = 0.5
    other["edge_target"] = 0.25
    other["value"] *= 0.9
    df = pd.concat([df, other], ignore_index=True)
    figs = figures_for_dataset(df, "d", metrics=["recall@20", "hit@20"], costs={"flops": "mult-adds (#)"})
    assert [f.key for f in figs] == ["d-recall@20-vs-emb", "d-flops-vs-emb", "d-recall@20-vs-flops"]
    assert "mult-adds (#)" in figs[1].caption
    for f in figs:
        check_png(f)


def test_img_tag_escapes_alt() -> None:
    fig = accuracy_vs_ratio(synthetic_cells(datasets=('<b>"x"&y</b>',)), '<b>"x"&y</b>', "recall@20")
    tag = fig.img_tag()
    assert tag.startswith('<img alt="&lt;b&gt;&quot;x&quot;&amp;y&lt;/b&gt;: recall@20 vs embedding ratio"')
    assert f'src="data:image/png;base64,{fig.png_base64}"' in tag
    assert 'width="640" height="400"' in tag
    assert "<b>" not in tag


def test_cost_plots_have_worded_titles_and_memory_in_mib():
    from bench.report.plots import _in_mib

    cells = synthetic_cells()
    dataset = DATASETS[0]
    for cost in ("peak_mem_scoring_bytes", "latency_scoring_b64_p50_ms"):
        for fig in (cost_vs_ratio(cells, dataset, cost), accuracy_vs_cost(cells, dataset, "recall@20", cost)):
            assert cost not in fig.title, fig.title  # words, not the stored name
    assert accuracy_vs_cost(cells, dataset, "recall@20", "peak_mem_scoring_bytes").title == (
        f"{dataset}: recall@20 vs peak memory, scoring")
    assert COSTS["peak_mem_scoring_bytes"].endswith("(MiB)")
    mib = _in_mib(cells, "peak_mem_scoring_bytes")
    rows = cells["name"] == "peak_mem_scoring_bytes"
    assert np.allclose(mib.loc[rows, "value"] * 2**20, cells.loc[rows, "value"])
    assert mib.loc[~rows, "value"].equals(cells.loc[~rows, "value"])  # other names untouched


def test_label_offsets_keep_labels_apart():
    from bench.report.plots import label_offsets

    # five labels at one point (methods at one FLOP count), one far away
    anchors = [(100.0, 50.0)] * 5 + [(400.0, 10.0)]
    texts = ["0.5", "0.2", "0.08", "0.5", "0.2", "0.08"]
    offsets = label_offsets(anchors, texts, fontsize=7)
    boxes = [(x + dx, y + dy, x + dx + 0.6 * 7 * len(t) + 1, y + dy + 8.4)
             for (x, y), (dx, dy), t in zip(anchors, offsets, texts, strict=True)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert offsets[0] == (4.0, 3.0) and offsets[-1] == (4.0, 3.0)  # unmoved where nothing is in the way
    assert len({dy for _, dy in offsets[:5]}) == 5


def test_scoring_memory_is_the_phase_need_where_the_store_has_it(cells: pd.DataFrame) -> None:
    """With both memory figures stored, the report plots what scoring needs above its start, not the
    process's peak (which depends on what ran before the cell)."""
    dataset = DATASETS[0]
    need = cells.loc[cells["name"] == "peak_mem_scoring_bytes"].assign(name="mem_scoring_bytes")
    need["value"] = need["value"] / 4
    keys = [f.key for f in figures_for_dataset(pd.concat([cells, need]), dataset)]
    assert f"{dataset}-mem_scoring_bytes-vs-emb" in keys
    assert f"{dataset}-recall@20-vs-mem_scoring_bytes" in keys
    assert not any("peak_mem" in k for k in keys)
