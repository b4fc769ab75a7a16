"""Preprocessing steps and split protocols of :mod:`bench.data.preprocess`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data import preprocess as pp
from bench.data.readers import RawInteractions

DEFAULT = (0.7, 0.05, 0.25)


def kcore_reference(users: list[int], items: list[int], k_user: int, k_item: int) -> list[bool]:
    """Drop one offending user or item at a time until none is left (the k-core is unique)."""
    alive = [True] * len(users)
    while True:
        ucount = Counter(u for u, a in zip(users, alive, strict=True) if a)
        icount = Counter(i for i, a in zip(items, alive, strict=True) if a)
        bad_users = [u for u, c in ucount.items() if c < k_user]
        bad_items = [i for i, c in icount.items() if c < k_item]
        if bad_users:
            alive = [a and u != bad_users[0] for u, a in zip(users, alive, strict=True)]
        elif bad_items:
            alive = [a and i != bad_items[0] for i, a in zip(items, alive, strict=True)]
        else:
            return alive


# k-core ---------------------------------------------------------------------------------------


pairs_strategy = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 9)), min_size=0, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, k_user=st.integers(1, 4), k_item=st.integers(1, 4))
def test_kcore_matches_the_one_at_a_time_reference(pairs, k_user, k_item):
    users = np.array([p[0] for p in pairs], dtype=np.int64)
    items = np.array([p[1] for p in pairs], dtype=np.int64)
    mask = pp.kcore(users, items, k_user, k_item)
    expected = kcore_reference(users.tolist(), items.tolist(), k_user, k_item)
    assert mask.tolist() == expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kcore_result_is_a_fixed_point(seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, 400)
    items = rng.zipf(1.6, 400) % 80
    mask = pp.kcore(users, items, 3, 4)
    assert 0 < mask.sum() < len(mask)  # the data is made so that some, not all, survive
    _, ucnt = np.unique(users[mask], return_counts=True)
    _, icnt = np.unique(items[mask], return_counts=True)
    assert ucnt.min() >= 3 and icnt.min() >= 4
    assert mask.tolist() == kcore_reference(users.tolist(), items.tolist(), 3, 4)
    # filtering the survivors again removes nothing
    assert pp.kcore(users[mask], items[mask], 3, 4).all()


def test_kcore_cascades_by_hand():
    # item 9 has one interaction; with k_item=2 it goes, which leaves user 1 with one item
    # (below k_user=2), whose removal leaves item 5 with one user, and so on
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([4, 5, 5, 9, 4, 6])
    assert pp.kcore(users, items, 2, 2).tolist() == [False] * 6
    assert pp.kcore(users, items, 2, 1).tolist() == [True] * 6
    assert pp.kcore(users, items, 1, 2).tolist() == [True, True, True, False, True, False]


# ratio counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1, 0, 0)),  # nothing to hold out
        (2, (1, 0, 1)),  # test: floor(0.5) = 0, share in (0, 1) -> one from train
        (3, (1, 1, 1)),  # test first, then valid, while train keeps >= 2 before giving
        (4, (2, 1, 1)),  # test floor(1.0) = 1; valid share 0.2 -> one from train
        (10, (7, 1, 2)),  # test floor(2.5) = 2; valid share 0.5 -> one from train
        (20, (14, 1, 5)),  # floor(1.0) = 1 and floor(5.0) = 5, no adjustment
        (100, (70, 5, 25)),
        (7, (5, 1, 1)),  # test floor(1.75) = 1; valid share 0.35 -> one from train
    ],
)
def test_ratio_counts_by_hand(n, expected):
    assert pp.ratio_counts(n, DEFAULT) == expected


def test_ratio_counts_with_a_zero_share_never_adds_to_it():
    assert pp.ratio_counts(2, (0.9, 0.1, 0.0)) == (1, 1, 0)
    assert pp.ratio_counts(1, (0.9, 0.1, 0.0)) == (1, 0, 0)
    assert pp.ratio_counts(25, (0.9, 0.1, 0.0)) == (23, 2, 0)


ratios_strategy = st.tuples(
    st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0)
).map(lambda r: tuple(x / sum(r) for x in r))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 500), ratios=ratios_strategy)
def test_ratio_counts_sum_to_n_and_keep_a_train_item(n, ratios):
    n_train, n_valid, n_test = pp.ratio_counts(n, ratios)
    assert n_train + n_valid + n_test == n
    assert n_train >= 1 and n_valid >= 0 and n_test >= 0
    assert n_valid >= int(np.floor(ratios[1] * n)) and n_test >= int(np.floor(ratios[2] * n))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 1000))
def test_ratio_counts_default_gives_every_user_with_two_items_a_test_item(n):
    n_train, n_valid, n_test = pp.ratio_counts(n, DEFAULT)
    assert n_test >= 1 and n_train >= 1
    if n >= 3:
        assert n_valid >= 1


# check_ratios ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratios",
    [(0.7, 0.3), (0.5, 0.2, 0.2, 0.1), (0.8, -0.1, 0.3), (0.0, 0.5, 0.5), (0.7, 0.1, 0.1),
     (0.7, 0.2, 0.25)],
)
def test_check_ratios_rejects_bad_ratios(ratios):
    with pytest.raises(ValueError, match="split ratios must be"):
        pp.check_ratios(ratios)


def test_check_ratios_accepts_and_converts():
    assert pp.check_ratios([0.8, 0.2, 0]) == (0.8, 0.2, 0.0)
    assert pp.check_ratios(("0.7", "0.05", "0.25")) == DEFAULT


# split_ratio ----------------------------------------------------------------------------------


def _random_users(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, 50)
    return rng.permutation(np.repeat(np.arange(50), sizes))


def test_split_ratio_is_deterministic_for_a_seed_and_differs_for_another():
    users = _random_users(0)
    a = pp.split_ratio(users, 7, DEFAULT)
    b = pp.split_ratio(users, 7, DEFAULT)
    c = pp.split_ratio(users, 8, DEFAULT)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_ratio_gives_each_user_the_ratio_counts(seed):
    users = _random_users(seed)
    labels = pp.split_ratio(users, seed, DEFAULT)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    for u in np.unique(users):
        mine = labels[users == u]
        counts = tuple(int((mine == k).sum()) for k in range(3))
        assert counts == pp.ratio_counts(len(mine), DEFAULT)
        if len(mine) >= 2:
            assert counts[2] >= 1


def test_split_per_user_orders_by_the_key():
    users = np.array([0, 0, 0, 0, 1, 1])
    key = np.array([3.0, 1.0, 4.0, 2.0, 9.0, 8.0])
    # user 0 has 4 items -> (2, 1, 1): keys 1, 2 train, 3 valid, 4 test
    # user 1 has 2 items -> (1, 0, 1): key 8 train, 9 test
    assert pp.split_per_user(users, key, DEFAULT).tolist() == [1, 0, 2, 0, 2, 0]


# leave-one-out --------------------------------------------------------------------------------


def test_split_loo_latest_to_test_second_latest_to_valid():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    times = np.array([5.0, 9.0, 1.0, 7.0, 3.0, 2.0, 1.0, 10.0, 30.0, 20.0])
    labels = pp.split_loo(users, times, seed=0)
    assert labels.tolist() == [0, 2, 0, 1, 2, 0, 0, 0, 2, 1]


def test_split_loo_without_timestamps_holds_out_one_test_and_one_valid_item():
    users = _random_users(3)
    labels = pp.split_loo(users, None, seed=5)
    assert np.array_equal(labels, pp.split_loo(users, None, seed=5))
    for u in np.unique(users):
        mine = labels[users == u]
        assert int((mine == 2).sum()) == (1 if len(mine) >= 2 else 0)
        assert int((mine == 1).sum()) == (1 if len(mine) >= 3 else 0)


# temporal -------------------------------------------------------------------------------------


def test_split_temporal_global_cuts_time_once():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 20, 200)
    times = rng.integers(0, 50, 200).astype(float)  # many ties
    labels = pp.split_temporal(users, times, DEFAULT, "global")
    train, valid, test = (times[labels == k] for k in range(3))
    assert (len(train), len(valid), len(test)) == (140, 10, 50)
    assert train.max() <= valid.min() and valid.max() <= test.min()
    assert train.max() <= test.min()


def test_split_temporal_user_scope_follows_each_users_time_order():
    users = np.array([0, 0, 0, 0, 1, 1, 1])
    times = np.array([40.0, 10.0, 30.0, 20.0, 3.0, 1.0, 2.0])
    labels = pp.split_temporal(users, times, DEFAULT, "user")
    # user 0: (2, 1, 1) -> 10, 20 train, 30 valid, 40 test; user 1: (1, 1, 1)
    assert labels.tolist() == [2, 0, 1, 0, 2, 0, 1]


def test_split_temporal_needs_timestamps_and_a_known_scope():
    users = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="needs timestamps"):
        pp.split_temporal(users, None, DEFAULT, "global")
    with pytest.raises(ValueError, match="scope must be 'global' or 'user', got 'item'"):
        pp.split_temporal(users, np.array([1.0, 2.0, 3.0]), DEFAULT, "item")


# remapping and deduplication ------------------------------------------------------------------


def test_remap_ids_tokens_in_order_of_first_appearance():
    tokens = np.array(["b", "a", "b", "c", "a", "10", "9"], dtype=object)
    ids, n = pp.remap_ids(tokens, tokens=True)
    assert ids.tolist() == [0, 1, 0, 2, 1, 3, 4]
    assert n == 5


def test_remap_ids_integers_in_ascending_order():
    ids, n = pp.remap_ids(np.array([10, 3, 10, 7, 42]), tokens=False)
    assert ids.tolist() == [2, 0, 2, 1, 3]
    assert n == 4
    assert ids.dtype == np.int64


def test_deduplicate_keeps_the_earliest_timestamp():
    users = np.array([0, 0, 1, 0, 1, 0])
    items = np.array([5, 5, 5, 5, 6, 6])
    times = np.array([30.0, 10.0, 20.0, 15.0, 1.0, 2.0])
    assert pp.deduplicate(users, items, times).tolist() == [1, 2, 4, 5]


def test_deduplicate_keeps_the_first_line_on_ties_and_without_timestamps():
    users = np.array([2, 0, 2, 0, 2])
    items = np.array([1, 3, 1, 3, 0])
    assert pp.deduplicate(users, items, None).tolist() == [0, 1, 4]
    tied = np.array([7.0, 7.0, 7.0, 7.0, 7.0])
    assert pp.deduplicate(users, items, tied).tolist() == [0, 1, 4]


# implicit feedback ----------------------------------------------------------------------------


def _raw(ratings: list[float] | None) -> RawInteractions:
    n = 4
    return RawInteractions(np.arange(n), np.arange(n),
                           None if ratings is None else np.array(ratings), None,
                           source="r.txt")


def test_implicit_keeps_ratings_at_or_above_the_threshold():
    kept, dropped = pp.implicit(_raw([1.0, 4.0, 3.5, 5.0]), 4.0)
    assert kept.users.tolist() == [1, 3]
    assert kept.ratings.tolist() == [4.0, 5.0]
    assert dropped == 2


def test_implicit_without_threshold_keeps_everything():
    raw = _raw(None)
    kept, dropped = pp.implicit(raw, None)
    assert kept is raw and dropped == 0


def test_implicit_threshold_without_ratings_is_an_error():
    with pytest.raises(ValueError, match=r"r\.txt: a rating threshold was set but the file has no"):
        pp.implicit(_raw(None), 3.0)


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_sorted_unique_equals_numpy_unique(n):
    from bench.data.preprocess import sorted_unique

    values = np.random.default_rng(n).integers(0, max(n // 3, 1), n)
    np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
