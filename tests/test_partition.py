"""The METIS partition behind LEGCF's and LERG's initial assignment (invariant 7):
every label in ``[0, c)``, all ``c`` parts used, k-way or recursive bisection
kept by cut quality, the repair of empty parts, and the reported share of train edges inside parts."""

from __future__ import annotations

import numpy as np
import pytest

from methods.legcf import LEGCF
from methods.shared.composition import PartitionError, metis_partition, metis_parts
from tests.helpers import clustered_data, method_context


def brute_inside(n_users: int, labels: np.ndarray, pairs: np.ndarray) -> float:
    """Share of the distinct (user, item) pairs whose user and item carry the same label."""
    distinct = {(int(u), int(i)) for u, i in pairs}
    same = sum(labels[u] == labels[n_users + i] for u, i in distinct)
    return same / len(distinct)


def assert_covers(labels: np.ndarray, n: int, c: int) -> None:
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(c))  # exactly the labels 0..c-1, each used


@pytest.mark.parametrize("mode", ["auto", "kway", "recursive"])
@pytest.mark.parametrize("c", [1, 2, 7, 40, 90, 99, 100])
def test_labels_cover_0_to_c_minus_1_exactly(c, mode):
    data = clustered_data()
    p = metis_partition(data.n_users, data.n_items, data.train, c, seed=0, mode=mode)
    assert_covers(p.labels, 100, c)
    sizes = np.bincount(p.labels, minlength=c)
    assert p.info()["part_size_min"] == sizes.min() >= 1
    assert p.info()["part_size_max"] == sizes.max()


def test_kway_leaves_parts_empty_on_the_toy_graph_and_auto_keeps_recursive_bisection():
    data = clustered_data()  # 100 nodes: METIS k-way leaves 4 of 40 parts empty here
    kway = metis_partition(data.n_users, data.n_items, data.train, 40, seed=0, mode="kway")
    assert kway.candidates["kway"]["empty_parts"] > 0
    assert kway.empty_repaired == kway.candidates["kway"]["empty_parts"]
    assert_covers(kway.labels, 100, 40)
    auto = metis_partition(data.n_users, data.n_items, data.train, 40, seed=0)
    assert set(auto.candidates) == {"kway", "recursive"}
    assert auto.candidates["recursive"]["empty_parts"] == 0
    assert auto.method == "recursive" and auto.empty_repaired == 0
    assert_covers(auto.labels, 100, 40)
    alone = metis_partition(data.n_users, data.n_items, data.train, 40, seed=0, mode="recursive")
    assert np.array_equal(auto.labels, alone.labels)


@pytest.mark.parametrize("c", [2, 10, 25, 40, 60, 90])
def test_auto_keeps_the_mode_with_fewest_empty_parts_then_most_edges_inside(c):
    data = clustered_data()
    auto = metis_partition(data.n_users, data.n_items, data.train, c, seed=0)
    cand = auto.candidates
    best = min(("kway", "recursive"),
               key=lambda m: (cand[m]["empty_parts"], -cand[m]["edges_inside"], m != "kway"))
    assert auto.method == best
    alone = metis_partition(data.n_users, data.n_items, data.train, c, seed=0, mode=best)
    assert np.array_equal(auto.labels, alone.labels)


def test_both_modes_leave_parts_empty_near_n_and_the_repair_fills_them():
    data = clustered_data()  # at c = 90 of 100 nodes recursive bisection leaves parts empty too
    p = metis_partition(data.n_users, data.n_items, data.train, 90, seed=0)
    assert min(v["empty_parts"] for v in p.candidates.values()) > 0
    assert p.empty_repaired == p.candidates[p.method]["empty_parts"]
    assert_covers(p.labels, 100, 90)
    assert p.info()["partition_empty_repaired"] == p.empty_repaired


@pytest.mark.parametrize("c", [1, 5, 40, 90])
def test_edges_inside_equals_a_brute_force_count(c):
    data = clustered_data()
    pairs = np.concatenate([data.train, data.train[:30]])  # duplicate pairs count once
    p = metis_partition(data.n_users, data.n_items, pairs, c, seed=0)
    assert p.edges_inside == pytest.approx(brute_inside(data.n_users, p.labels, data.train), abs=1e-12)
    assert p.info()["partition_edges_inside"] == p.edges_inside
    if c == 1:
        assert p.method == "single" and p.edges_inside == 1.0 and p.candidates == {}
    elif p.empty_repaired == 0:  # the kept candidate's share is the final one
        assert p.candidates[p.method]["edges_inside"] == pytest.approx(p.edges_inside, abs=1e-12)


def test_partition_is_deterministic_for_a_seed():
    data = clustered_data()
    for c in (12, 40, 90):
        first = metis_partition(data.n_users, data.n_items, data.train, c, seed=3)
        again = metis_partition(data.n_users, data.n_items, data.train, c, seed=3)
        assert np.array_equal(first.labels, again.labels)
        assert (first.method, first.empty_repaired) == (again.method, again.empty_repaired)
        assert np.array_equal(first.labels, metis_parts(data.n_users, data.n_items, data.train, c, 3))


def test_repair_moves_the_donor_entity_with_fewest_neighbours_in_its_part(monkeypatch):
    import pymetis

    def everything_in_part_0(c, adjacency, recursive, options):
        return 0, [0] * (len(adjacency.adj_starts) - 1)

    monkeypatch.setattr(pymetis, "part_graph", everything_in_part_0)
    # users 0-2 each rated items 0-2; user 3 has no train edge (entity 3), items are entities 4-6
    pairs = np.array([(u, i) for u in range(3) for i in range(3)])
    p = metis_partition(4, 3, pairs, 2, seed=0, mode="kway")
    assert p.empty_repaired == 1
    assert p.labels.tolist() == [0, 0, 0, 1, 0, 0, 0]  # the isolated user moved: no edge is cut
    assert p.edges_inside == 1.0
    # c = 3: the second empty part takes, among the six connected entities (3 neighbours inside
    # each), the highest id
    p = metis_partition(4, 3, pairs, 3, seed=0, mode="kway")
    assert p.empty_repaired == 2
    assert p.labels.tolist() == [0, 0, 0, 1, 0, 0, 2]
    assert p.edges_inside == pytest.approx(brute_inside(4, p.labels, pairs)) == pytest.approx(6 / 9)


def test_bad_mode_and_impossible_part_counts_are_clear_errors():
    data = clustered_data()
    with pytest.raises(ValueError, match=r"partition mode.*'bisect'"):
        metis_partition(data.n_users, data.n_items, data.train, 4, seed=0, mode="bisect")
    for c in (0, 101):
        with pytest.raises(PartitionError, match=f"100 entities into {c} non-empty parts"):
            metis_partition(data.n_users, data.n_items, data.train, c, seed=0)


def test_legcf_initial_assignment_reports_the_partition():
    ctx = method_context(0)
    o = LEGCF(c=40, t=2, w_star=0.6).options
    s, info = LEGCF.initial_assignment(ctx, o)
    data = ctx.data
    p = metis_partition(data.n_users, data.n_items, data.train, 40, ctx.seed)
    assert np.array_equal(s.index[:, 0].numpy(), p.labels)
    assert info["init"] == "metis" and info["partition_method"] == p.method == "recursive"
    assert info["partition_edges_inside"] == pytest.approx(brute_inside(data.n_users, p.labels, data.train))
    assert info["partition_empty_repaired"] == 0
    assert info["part_size_min"] >= 1
    random_info = LEGCF.initial_assignment(ctx, o.replace(ablation="random-init"))[1]
    assert "partition_method" not in random_info
