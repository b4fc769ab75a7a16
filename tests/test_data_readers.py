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


def test_adjacency_non_integer_id_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1 2\n1 2\n2 4 x5\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:3: non-integer item id 'x5'") as info:
        read_adjacency(path)
    assert info.value.path == str(path)
    assert info.value.line == 3


def test_adjacency_non_integer_user_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1\nu1 2\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: non-integer user id 'u1'"):
        read_adjacency(path)


def test_adjacency_negative_id_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1\n1 2\n\n3 -4\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:4: negative item id -4"):
        read_adjacency(path)


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


def test_edgelist_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1 5 7\n1 2 3 4 5\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: expected 2 to 4 fields .* got 5"):
        read_edgelist(path)


def test_edgelist_single_field_is_rejected(tmp_path):
    path = write(tmp_path, "0 1\n\n7\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:3: expected 2 to 4 fields .* got 1"):
        read_edgelist(path)


def test_edgelist_inconsistent_field_counts_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1\n1 2\n2 3 5\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:3: expected 2 fields like the first line"):
        read_edgelist(path)


def test_edgelist_header_line_without_header_flag_suggests_header_true(tmp_path):
    path = write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.5,100\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: .*set header = true"):
        read_edgelist(path)


def test_edgelist_bad_user_after_first_line_gets_no_header_hint(tmp_path):
    path = write(tmp_path, "1 2\nx 3\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: non-integer user id") as info:
        read_edgelist(path)
    assert "header" not in str(info.value)


def test_edgelist_with_header_true_skips_the_first_line(tmp_path):
    path = write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.5,100\n4,5,1.0,50\n", "ok.csv")
    raw = read_edgelist(path, header=True)
    assert raw.users.tolist() == [1, 4]
    assert raw.items.tolist() == [2, 5]
    assert raw.ratings.tolist() == [3.5, 1.0]
    assert raw.timestamps.tolist() == [100.0, 50.0]


def test_edgelist_header_true_still_reports_data_line_numbers(tmp_path):
    path = write(tmp_path, "user item\n1 2\n1 -2\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:3: negative item id -2"):
        read_edgelist(path, header=True)


def test_edgelist_double_colon_separator(tmp_path):
    path = write(tmp_path, "1::1193::5::978300760\n1::661::3::978302109\n2::3::4::978300001\n",
                 "ratings.dat")
    raw = read_edgelist(path, separator="::")
    assert raw.users.tolist() == [1, 1, 2]
    assert raw.items.tolist() == [1193, 661, 3]
    assert raw.ratings.tolist() == [5.0, 3.0, 4.0]
    assert raw.timestamps.tolist() == [978300760.0, 978302109.0, 978300001.0]


def test_edgelist_double_colon_needs_the_separator_option(tmp_path):
    path = write(tmp_path, "1::1193::5::978300760\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: expected 2 to 4 fields"):
        read_edgelist(path)


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_edgelist_nan_rating_names_file_and_line(tmp_path, value):
    path = write(tmp_path, f"0 1 4\n0 2 {value}\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: rating is NaN"):
        read_edgelist(path)


def test_edgelist_non_numeric_timestamp_names_file_and_line(tmp_path):
    path = write(tmp_path, "0 1 4 10\n0 2 4 soon\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: non-numeric timestamp 'soon'"):
        read_edgelist(path)


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


def test_atomic_missing_user_field_names_file_and_line(tmp_path):
    path = write(tmp_path, "uid:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: header has no field 'user_id'"):
        read_atomic(path)


def test_atomic_field_without_type_names_file_and_line(tmp_path):
    path = write(tmp_path, "user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: header field 'item_id' has no ':type'"):
        read_atomic(path)


def test_atomic_unknown_field_type_is_rejected(tmp_path):
    path = write(tmp_path, "user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: unknown field type 'int'"):
        read_atomic(path)


def test_atomic_empty_file_reports_missing_header(tmp_path):
    with pytest.raises(DataFormatError, match=r"bad\.txt:1: missing header"):
        read_atomic(write(tmp_path, ""))


def test_atomic_row_with_wrong_number_of_fields_names_file_and_line(tmp_path):
    path = write(tmp_path, ATOMIC_HEADER + "1\t2\t3\t4\n\n1\t3\t4\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:4: expected 4 tab-separated fields, got 3"):
        read_atomic(path)


def test_atomic_nan_rating_names_file_and_line(tmp_path):
    path = write(tmp_path, ATOMIC_HEADER + "1\t2\t3\t4\n1\t3\tnan\t5\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:3: rating is NaN"):
        read_atomic(path)


def test_atomic_empty_token_names_file_and_line(tmp_path):
    path = write(tmp_path, ATOMIC_HEADER + "1\t\t3\t4\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:2: empty user or item token"):
        read_atomic(path)


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
