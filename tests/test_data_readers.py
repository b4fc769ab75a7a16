"""Readers of the adjacency, edge-list and RecBole atomic formats, and their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.data.readers import (
    DataFormatError,
    read_adjacency,
    read_atomic,
    read_edgelist,
    read_file,
)


def write(tmp_path: Path, text: str, name: str = "bad.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# adjacency ------------------------------------------------------------------------------------


def test_adjacency_reads_one_pair_per_item_and_allows_lonely_users(tmp_path):
    path = write(tmp_path, "0 3 1\n1\n\n2 0\n", "train.txt")
    raw = read_adjacency(path)
    assert raw.users.tolist() == [0, 0, 2]
    assert raw.items.tolist() == [3, 1, 0]
    assert raw.users.dtype == np.int64 and raw.items.dtype == np.int64
    assert raw.ratings is None and raw.timestamps is None
    assert not raw.tokens
    assert raw.source == str(path)


ADJACENCY_ERRORS = [
    pytest.param("0 1 2\n1 2\n2 4 x5\n", 3, r"non-integer item id 'x5'", id="non-integer-item"),
    pytest.param("0 1\nu1 2\n", 2, r"non-integer user id 'u1'", id="non-integer-user"),
    pytest.param("0 1\n1 2\n\n3 -4\n", 4, r"negative item id -4", id="negative-item"),
    pytest.param("-1 2\n", 1, r"negative user id -1", id="negative-user"),
]


@pytest.mark.parametrize(("text", "line", "message"), ADJACENCY_ERRORS)
def test_adjacency_malformed_input_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(DataFormatError, match=rf"bad\.txt:{line}: {message}") as info:
        read_adjacency(path)
    assert info.value.path == str(path)
    assert info.value.line == line


def test_data_format_error_is_a_value_error(tmp_path):
    path = write(tmp_path, "-1 2\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: negative user id -1"):
        read_adjacency(path)


# edge list ------------------------------------------------------------------------------------


def test_edgelist_accepts_spaces_commas_and_tabs(tmp_path):
    path = write(tmp_path, "0 1 4.5 100\n2,3,1,200\n4\t5\t2.0\t300\n", "ok.txt")
    raw = read_edgelist(path)
    assert raw.users.tolist() == [0, 2, 4]
    assert raw.items.tolist() == [1, 3, 5]
    assert raw.ratings.tolist() == [4.5, 1.0, 2.0]
    assert raw.timestamps.tolist() == [100.0, 200.0, 300.0]


def test_edgelist_two_columns_have_no_ratings(tmp_path):
    raw = read_edgelist(write(tmp_path, "0 1\n1 0\n", "ok.txt"))
    assert raw.ratings is None and raw.timestamps is None
    assert len(raw) == 2


def test_edgelist_with_header_true_skips_the_first_line(tmp_path):
    path = write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.5,100\n4,5,1.0,50\n", "ok.csv")
    raw = read_edgelist(path, header=True)
    assert raw.users.tolist() == [1, 4]
    assert raw.items.tolist() == [2, 5]
    assert raw.ratings.tolist() == [3.5, 1.0]
    assert raw.timestamps.tolist() == [100.0, 50.0]


def test_edgelist_double_colon_separator(tmp_path):
    path = write(tmp_path, "1::1193::5::978300760\n1::661::3::978302109\n2::3::4::978300001\n",
                 "ratings.dat")
    raw = read_edgelist(path, separator="::")
    assert raw.users.tolist() == [1, 1, 2]
    assert raw.items.tolist() == [1193, 661, 3]
    assert raw.ratings.tolist() == [5.0, 3.0, 4.0]
    assert raw.timestamps.tolist() == [978300760.0, 978302109.0, 978300001.0]


EDGELIST_ERRORS = [
    pytest.param("0 1 5 7\n1 2 3 4 5\n", {}, 2, r"expected 2 to 4 fields .* got 5", id="too-many-fields"),
    pytest.param("0 1\n\n7\n", {}, 3, r"expected 2 to 4 fields .* got 1", id="single-field"),
    pytest.param("0 1\n1 2\n2 3 5\n", {}, 3, r"expected 2 fields like the first line",
                 id="inconsistent-field-counts"),
    pytest.param("userId,movieId,rating,timestamp\n1,2,3.5,100\n", {}, 1, r".*set header = true",
                 id="header-line-without-header-flag"),
    pytest.param("1 2\nx 3\n", {}, 2, r"non-integer user id", id="bad-user-after-first-line"),
    pytest.param("user item\n1 2\n1 -2\n", {"header": True}, 3, r"negative item id -2",
                 id="header-true-reports-data-line-numbers"),
    pytest.param("1::1193::5::978300760\n", {}, 1, r"expected 2 to 4 fields",
                 id="double-colon-needs-the-separator-option"),
    pytest.param("0 1 4\n0 2 nan\n", {}, 2, r"rating is NaN", id="nan-rating"),
    pytest.param("0 1 4\n0 2 NaN\n", {}, 2, r"rating is NaN", id="NaN-rating"),
    pytest.param("0 1 4 10\n0 2 4 soon\n", {}, 2, r"non-numeric timestamp 'soon'",
                 id="non-numeric-timestamp"),
]


@pytest.mark.parametrize(("text", "options", "line", "message"), EDGELIST_ERRORS)
def test_edgelist_malformed_input_names_file_and_line(tmp_path, text, options, line, message):
    path = write(tmp_path, text)
    with pytest.raises(DataFormatError, match=rf"bad\.txt:{line}: {message}") as info:
        read_edgelist(path, **options)
    assert info.value.path == str(path)
    assert info.value.line == line


def test_edgelist_bad_user_after_first_line_gets_no_header_hint(tmp_path):
    path = write(tmp_path, "1 2\nx 3\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: non-integer user id") as info:
        read_edgelist(path)
    assert "header" not in str(info.value)


# atomic ---------------------------------------------------------------------------------------

ATOMIC_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def test_atomic_reads_tokens_ratings_and_timestamps(tmp_path):
    path = write(tmp_path, ATOMIC_HEADER + "u7\ti1\t3\t100\nu2\ti1\t5\t90\n", "x.inter")
    raw = read_atomic(path)
    assert raw.tokens
    assert raw.users.tolist() == ["u7", "u2"]
    assert raw.items.tolist() == ["i1", "i1"]
    assert raw.ratings.tolist() == [3.0, 5.0]
    assert raw.timestamps.tolist() == [100.0, 90.0]


def test_atomic_field_order_and_custom_names(tmp_path):
    text = "stamp:float\titem:token\tuser:token\n5\ta\tb\n"
    raw = read_atomic(write(tmp_path, text, "x.inter"), user_field="user", item_field="item",
                      time_field="stamp")
    assert raw.users.tolist() == ["b"]
    assert raw.items.tolist() == ["a"]
    assert raw.timestamps.tolist() == [5.0]
    assert raw.ratings is None


ATOMIC_ERRORS = [
    pytest.param("uid:token\titem_id:token\n1\t2\n", 1, r"header has no field 'user_id'",
                 id="missing-user-field"),
    pytest.param("user_id:token\titem_id\n1\t2\n", 1, r"header field 'item_id' has no ':type'",
                 id="field-without-type"),
    pytest.param("user_id:token\titem_id:int\n1\t2\n", 1, r"unknown field type 'int'",
                 id="unknown-field-type"),
    pytest.param("", 1, r"missing header", id="empty-file"),
    pytest.param(ATOMIC_HEADER + "1\t2\t3\t4\n\n1\t3\t4\n", 4, r"expected 4 tab-separated fields, got 3",
                 id="row-with-wrong-number-of-fields"),
    pytest.param(ATOMIC_HEADER + "1\t2\t3\t4\n1\t3\tnan\t5\n", 3, r"rating is NaN", id="nan-rating"),
    pytest.param(ATOMIC_HEADER + "1\t\t3\t4\n", 2, r"empty user or item token", id="empty-token"),
]


@pytest.mark.parametrize(("text", "line", "message"), ATOMIC_ERRORS)
def test_atomic_malformed_input_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(DataFormatError, match=rf"bad\.txt:{line}: {message}") as info:
        read_atomic(path)
    assert info.value.path == str(path)
    assert info.value.line == line


# dispatch -------------------------------------------------------------------------------------


def test_read_file_passes_edgelist_options(tmp_path):
    path = write(tmp_path, "u::i\n3::4\n", "ok.dat")
    raw = read_file(path, "edgelist", header=True, separator="::")
    assert raw.users.tolist() == [3] and raw.items.tolist() == [4]


def test_read_file_passes_atomic_field_names(tmp_path):
    path = write(tmp_path, "a:token\tb:token\nx\ty\n", "ok.inter")
    raw = read_file(path, "atomic", user_field="b", item_field="a")
    assert raw.users.tolist() == ["y"] and raw.items.tolist() == ["x"]


def test_read_file_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown file format 'csv'"):
        read_file(write(tmp_path, "0 1\n", "ok.txt"), "csv")
