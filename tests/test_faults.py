"""Fault injection on the data inputs and the command line: every bad input is a clear error.

Each case feeds one broken input (a wrongly typed catalog key, an id out of range, bytes that are
not UTF-8, a path leaving the data root, an output folder that is a file, a closed stdout) and
checks the exact error type and that its message names the file and the line or key; valid
input still loads to the same arrays.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data import preprocess as pp
from bench.data.loading import _unique_pairs, load_dataset
from bench.data.readers import MAX_ID, DataFormatError, read_adjacency, read_atomic, read_edgelist

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GIVEN_TOML = """\
    split = {{ protocol = "given"{split} }}
    [[source]]
    kind = "local"
    format = "{fmt}"
    dir = "{dir}"
    files = {{ train = "train.txt", valid = "valid.txt", test = "test.txt" }}
    {extra}
    """

RATIO_TOML = """\
    split = {{ protocol = "ratio"{split} }}
    [[source]]
    kind = "local"
    format = "edgelist"
    dir = "{dir}"
    files = {{ all = "ratings.txt" }}
    {extra}
    """


def ratio_dataset(root: Path, name: str = "mine", split: str = "", extra: str = "",
                  header_line: str = "") -> Path:
    """``<root>/<name>.toml`` (ratio split) and a ratings file of 6 users x 5 items."""
    lines = [f"{u} {i}" for u in range(6) for i in range(5)]
    write(root / name / "ratings.txt", header_line + "\n".join(lines) + "\n")
    return write(root / f"{name}.toml", RATIO_TOML.format(dir=name, split=split, extra=extra))


def given_dataset(root: Path, splits: dict[str, str], name: str = "mine", fmt: str = "edgelist",
                  split: str = "") -> Path:
    for s, text in splits.items():
        write(root / name / f"{s}.txt", text)
    return write(root / f"{name}.toml", GIVEN_TOML.format(dir=name, fmt=fmt, split=split, extra=""))


def assert_names(exc: BaseException, *parts: str) -> None:
    message = str(exc)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "reason"), [
    ("1" + "0" * 30, "above the maximum id"),    # 10**30: was an OverflowError traceback
    ("1" + "0" * 12, "above the maximum id"),    # 10**12: was accepted, then a huge id space
    (str(2**32), "above the maximum id"),
    (str(MAX_ID + 1), "above the maximum id"),
    ("1_0", "non-integer"),
    ("+3", "non-integer"),
    ("\u0663", "non-integer"),                   # ARABIC-INDIC DIGIT THREE
    ("\uff11", "non-integer"),                   # FULLWIDTH DIGIT ONE
])
@pytest.mark.parametrize("reader", ["adjacency", "edgelist"])
def test_ids_outside_ascii_digits_or_the_maximum_name_file_and_line(tmp_path, token, reason, reader):
    path = write(tmp_path / "bad.txt", f"0 1\n1 {token}\n")
    read = read_adjacency if reader == "adjacency" else read_edgelist
    with pytest.raises(DataFormatError) as info:
        read(path)
    assert info.value.line == 2 and info.value.path == str(path)
    assert_names(info.value, f"{path}:2:", "item id", reason)


def test_the_maximum_id_itself_is_accepted(tmp_path):
    raw = read_edgelist(write(tmp_path / "ok.txt", f"{MAX_ID} 0\n0 {MAX_ID}\n"))
    assert raw.users.tolist() == [MAX_ID, 0] and raw.items.tolist() == [0, MAX_ID]


def test_a_huge_id_in_a_dataset_is_a_data_error_before_any_array_is_built(tmp_path):
    given_dataset(tmp_path, {"train": "0 1\n", "valid": "0 2\n", "test": f"0 3\n{10**12} 1\n"})
    with pytest.raises(DataFormatError, match=r"test\.txt:2: user id '1000000000000' is above"):
        load_dataset("mine", tmp_path, use_cache=False)
    assert main(["datasets", "mine", "--data-dir", str(tmp_path)]) == 2


def test_pair_keys_refuse_to_wrap_around_instead_of_merging_users():
    big = 2**32
    pairs = np.array([[big, 0], [0, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match="overflow int64"):
        _unique_pairs(pairs, big + 1)  # big * (big + 1) wraps int64: user `big` would become another
    with pytest.raises(ValueError, match="overflow int64"):
        pp.pair_keys(pairs[:, 0], pairs[:, 1], big + 1)


def test_pair_keys_at_the_maximum_id_stay_distinct():
    users = np.array([MAX_ID, MAX_ID, 0, 0], dtype=np.int64)
    items = np.array([MAX_ID, 0, MAX_ID, 0], dtype=np.int64)
    keys = pp.pair_keys(users, items, MAX_ID + 1)
    assert len(set(keys.tolist())) == 4
    uniq, dups = _unique_pairs(np.stack([users, items], axis=1), MAX_ID + 1)
    assert dups == 0
    assert {tuple(p) for p in uniq.tolist()} == set(zip(users.tolist(), items.tolist(), strict=True))


def test_large_sparse_ids_with_a_ratio_split_are_remapped_densely(tmp_path):
    big = MAX_ID
    lines = [f"{u} {i}" for u in (0, big) for i in (5, 7, 9, big)]
    write(tmp_path / "mine" / "ratings.txt", "\n".join(lines) + "\n")
    write(tmp_path / "mine.toml", RATIO_TOML.format(dir="mine", split="", extra=""))
    data = load_dataset("mine", tmp_path, use_cache=False)
    assert (data.n_users, data.n_items) == (2, 4)
    pairs = np.concatenate([data.train, data.valid, data.test])
    assert sorted(map(tuple, pairs.tolist())) == [(u, i) for u in range(2) for i in range(4)]


# data-file encodings ------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_adjacency, read_edgelist])
def test_non_utf8_bytes_name_file_and_line(tmp_path, reader):
    path = write(tmp_path / "bad.txt", b"0 1\n1 2\n2 \xff3\n")
    with pytest.raises(DataFormatError) as info:
        reader(path)
    assert info.value.line == 3
    assert_names(info.value, f"{path}:3:", "not valid UTF-8", "0xff")


def test_non_utf8_bytes_in_an_atomic_file_name_file_and_line(tmp_path):
    path = write(tmp_path / "bad.inter", b"user_id:token\titem_id:token\nu\ti\nv\t\xe9\n")
    with pytest.raises(DataFormatError) as info:
        read_atomic(path)
    assert info.value.line == 3 and "not valid UTF-8" in str(info.value)


@pytest.mark.parametrize("reader", [read_adjacency, read_edgelist])
def test_a_utf8_byte_order_mark_is_skipped_in_data_files(tmp_path, reader):
    plain = reader(write(tmp_path / "plain.txt", "0 1\n2 3\n"))
    bom = reader(write(tmp_path / "bom.txt", "\ufeff0 1\n2 3\n".encode()))
    np.testing.assert_array_equal(bom.users, plain.users)
    np.testing.assert_array_equal(bom.items, plain.items)


def test_a_byte_order_mark_before_an_atomic_header_is_skipped(tmp_path):
    raw = read_atomic(write(tmp_path / "x.inter", "\ufeffuser_id:token\titem_id:token\nu\ti\n".encode()))
    assert raw.users.tolist() == ["u"] and raw.items.tolist() == ["i"]


# error messages quote little -----------------------------------------------------------------


def test_a_malformed_line_is_quoted_only_briefly(tmp_path):
    secret = "x" * 5000
    path = write(tmp_path / "bad.txt", f"{secret} 1\n")
    with pytest.raises(DataFormatError) as info:
        read_adjacency(path)
    assert len(str(info.value)) < len(str(path)) + 200
    assert secret not in str(info.value)
