"""Loading datasets: the shared real data, user TOML datasets, the catalog, the cache, downloads."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data import loading
from bench.data.catalog import CatalogError, UnknownDatasetError, builtin_catalog
from bench.data.dataset import EmptySplitError, InteractionData
from bench.data.loading import CorruptCacheWarning, load_dataset
from bench.data.sources import ChecksumError, DatasetUnavailableError, recbole_file

ML100K_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def write_toml(root: Path, name: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")


def keys(pairs: np.ndarray, n_items: int) -> set[int]:
    return set((pairs[:, 0] * n_items + pairs[:, 1]).tolist())


def assert_disjoint(data: InteractionData) -> None:
    train, valid, test = (keys(p, data.n_items) for p in (data.train, data.valid, data.test))
    assert len(train) == len(data.train)  # unique within each split
    assert len(valid) == len(data.valid)
    assert len(test) == len(data.test)
    assert not train & valid and not train & test and not valid & test


def ratio_interactions(n_users: int = 6, n_items: int = 8, seed: int = 0) -> list[tuple[int, int]]:
    """Distinct (user, item) pairs, 3 to ``n_items`` per user, so the ratio split fills all three."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        for i in rng.choice(n_items, int(rng.integers(3, n_items + 1)), replace=False):
            pairs.append((u, int(i)))
    return pairs


RATIO_TOML = """\
    split = {{ protocol = "ratio", seed = 0 }}

    [[source]]
    kind = "local"
    format = "edgelist"
    dir = "{dir}"
    files = {{ all = "ratings.txt" }}
    """


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder for this test alone."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RECSHRINK_CACHE", str(folder))
    return folder


# the shared real datasets ---------------------------------------------------------------------


def test_yelp_lightgnn_statistics_match_the_readme(shared_datasets):
    stats = load_dataset("yelp-lightgnn", shared_datasets).stats()
    assert stats["n_users"] == 42712
    assert stats["n_items"] == 26822
    assert stats["n_train"] == 182357
    assert stats["n_valid"] == 13025
    assert stats["n_test"] == 65128
    assert stats["n_train_users"] == 42174
    assert stats["n_valid_users"] == 10358
    assert stats["n_test_users"] == 30627
    assert stats["n_users"] - stats["n_train_users"] == 538
    assert stats["n_items"] - stats["n_train_items"] == 332
    assert stats["duplicates_removed"] == 0
    assert stats["cross_split_duplicates_removed"] == 0


def test_yelp_lightgnn_splits_are_disjoint(shared_datasets):
    data = load_dataset("yelp-lightgnn", shared_datasets)
    assert_disjoint(data)
    assert data.train.dtype == np.int64
    assert data.info["source"] == "local" and data.info["format"] == "adjacency"


def test_citeulike_counts_lines_and_duplicates(shared_datasets):
    stats = load_dataset("citeulike", shared_datasets).stats()
    assert (stats["n_users"], stats["n_items"]) == (5551, 16980)
    assert stats["read"] == {"train": 151918, "valid": 18727, "test": 39883}
    by_split = stats["duplicates_removed_by_split"]
    for split in ("train", "valid", "test"):
        assert stats[f"n_{split}"] + by_split[split] == stats["read"][split]
    assert stats["duplicates_removed"] == sum(by_split.values())
    assert stats["duplicates_removed"] > 0


def test_citeulike_splits_are_disjoint(shared_datasets):
    assert_disjoint(load_dataset("citeulike", shared_datasets))


def test_gowalla_from_the_local_files_with_their_given_validation_split(shared_datasets):
    data = load_dataset("gowalla", shared_datasets)
    stats = data.stats()
    assert (stats["n_users"], stats["n_items"]) == (29858, 40981)
    assert (stats["n_train"], stats["n_valid"], stats["n_test"]) == (719081, 91047, 217242)
    assert stats["read"] == {"train": 719081, "valid": 91047, "test": 217242}
    assert stats["n_train_users"] == stats["n_valid_users"] == stats["n_test_users"] == 29858
    assert stats["duplicates_removed"] == 0 and stats["cross_split_duplicates_removed"] == 0
    assert data.info["source"] == "local" and data.info["format"] == "adjacency"
    assert set(data.info["files"]) == {"train", "valid", "test"}
    assert "valid_from_train" not in data.info  # the given valid.txt is used, nothing is carved
    assert_disjoint(data)


def test_gowalla_download_fallback_carves_validation_when_no_valid_file(tmp_path):
    spec = builtin_catalog()["gowalla"]
    assert [s.kind for s in spec.sources] == ["local", "download"]
    download = spec.sources[1]
    assert set(download.files) == set(download.urls) == {"train", "test"}
    assert all(u.startswith("https://raw.githubusercontent.com/kuandeng/LightGCN/")
               for u in download.urls.values())
    # the download's layout (train.txt + test.txt, no valid.txt) is read by the fallback source
    lines = "".join(f"{u} " + " ".join(str((u + k) % 12) for k in range(10)) + "\n" for u in range(5))
    write_files(tmp_path / "gowalla", {"train.txt": lines, "test.txt": "0 10\n1 11\n"})
    data = load_dataset("gowalla", tmp_path)
    assert data.info["source"] == "download" and data.info["valid_from_train"] == 0.1
    assert len(data.train) + len(data.valid) == 50 and len(data.valid) == 5  # 1 of 10 per user
    assert len(data.test) == 2


@pytest.mark.recbole
def test_ml100k_from_the_recbole_package(tmp_path):
    if recbole_file(ML100K_INTER) is None:
        pytest.skip("recbole is not installed (its ml-100k example files are needed)")
    imported_before = "recbole" in sys.modules
    data = load_dataset("ml-100k", tmp_path)
    if not imported_before:
        assert "recbole" not in sys.modules
    stats = data.stats()
    assert data.info["source"] == "recbole" and data.info["format"] == "atomic"
    assert (stats["n_users"], stats["n_items"]) == (943, 1682)
    assert stats["n_interactions"] == 100000
    assert stats["read"] == {"all": 100000}
    assert stats["duplicates_removed"] == 0
    total = stats["n_interactions"]
    assert abs(stats["n_train"] / total - 0.70) < 0.02
    assert abs(stats["n_valid"] / total - 0.05) < 0.01
    assert abs(stats["n_test"] / total - 0.25) < 0.02
    assert_disjoint(data)
    everything = np.concatenate([data.train, data.valid, data.test])
    per_user = np.bincount(everything[:, 0], minlength=data.n_users)
    with_test = np.zeros(data.n_users, dtype=bool)
    with_test[data.test[:, 0]] = True
    assert with_test[per_user >= 4].all()


# user datasets with the 'given' protocol ------------------------------------------------------

GIVEN_TOML = """\
    split = { protocol = "given" }

    [[source]]
    kind = "local"
    format = "edgelist"
    dir = "mine"
    files = { train = "train.txt", valid = "valid.txt", test = "test.txt" }
    """


def test_duplicates_and_test_users_without_train_are_counted(tmp_path):
    write_toml(tmp_path, "mine", GIVEN_TOML)
    write_files(tmp_path / "mine", {
        "train.txt": "0 0\n0 1\n0 1\n1 0\n1 2\n",  # (0, 1) twice
        "valid.txt": "0 2\n1 1\n",
        "test.txt": "0 3\n1 2\n2 0\n",  # (1, 2) is already in train; user 2 has no train item
    })
    data = load_dataset("mine", tmp_path)
    stats = data.stats()
    assert stats["read"] == {"train": 5, "valid": 2, "test": 3}
    assert stats["duplicates_removed_by_split"] == {"train": 1, "valid": 0, "test": 0}
    assert stats["duplicates_removed"] == 1
    assert stats["cross_split_duplicates_removed"] == 1
    assert stats["test_users_without_train"] == 1
    assert stats["valid_users_without_train"] == 0
    assert (stats["n_users"], stats["n_items"]) == (3, 4)
    assert data.train.tolist() == [[0, 0], [0, 1], [1, 0], [1, 2]]
    assert data.valid.tolist() == [[0, 2], [1, 1]]
    assert data.test.tolist() == [[0, 3], [2, 0]]
    assert [1, 2] not in data.test.tolist()


def test_pair_in_valid_and_test_is_kept_in_valid_only(tmp_path):
    write_toml(tmp_path, "mine", GIVEN_TOML)
    write_files(tmp_path / "mine", {
        "train.txt": "0 0\n1 1\n",
        "valid.txt": "0 1\n",
        "test.txt": "0 1\n1 0\n",
    })
    data = load_dataset("mine", tmp_path)
    assert data.valid.tolist() == [[0, 1]]
    assert data.test.tolist() == [[1, 0]]
    assert data.stats()["cross_split_duplicates_removed"] == 1


def test_empty_test_file_raises_empty_split_error_naming_the_split(tmp_path):
    write_toml(tmp_path, "mine", GIVEN_TOML)
    write_files(tmp_path / "mine", {"train.txt": "0 0\n1 1\n", "valid.txt": "0 1\n",
                                    "test.txt": ""})
    with pytest.raises(EmptySplitError, match=r"test\.txt: the test split is empty"):
        load_dataset("mine", tmp_path)


def test_test_file_emptied_by_cross_split_duplicates_raises_empty_split_error(tmp_path):
    write_toml(tmp_path, "mine", GIVEN_TOML)
    write_files(tmp_path / "mine", {"train.txt": "0 0\n1 1\n", "valid.txt": "0 1\n",
                                    "test.txt": "0 0\n"})
    with pytest.raises(EmptySplitError, match=r"'mine': the test split is empty"):
        load_dataset("mine", tmp_path)


def test_rating_threshold_on_a_file_without_ratings_is_a_value_error(tmp_path):
    write_toml(tmp_path, "mine", GIVEN_TOML.replace(
        'split = { protocol = "given" }',
        'split = { protocol = "given" }\n    preprocess = { threshold = 4.0 }'))
    write_files(tmp_path / "mine", {"train.txt": "0 0\n", "valid.txt": "0 1\n",
                                    "test.txt": "0 2\n"})
    with pytest.raises(ValueError, match=r"train\.txt: a rating threshold was set"):
        load_dataset("mine", tmp_path)


def test_rating_threshold_keeps_high_ratings(tmp_path):
    write_toml(tmp_path, "rated", """\
        split = { protocol = "ratio", seed = 0 }
        preprocess = { threshold = 4.0 }

        [[source]]
        kind = "local"
        format = "edgelist"
        dir = "rated"
        files = { all = "r.csv" }
        """)
    rows = [f"{u},{i},{5 if (u + i) % 3 else 1}" for u in range(5) for i in range(6)]
    write_files(tmp_path / "rated", {"r.csv": "\n".join(rows) + "\n"})
    stats = load_dataset("rated", tmp_path).stats()
    low = sum(1 for u in range(5) for i in range(6) if (u + i) % 3 == 0)
    assert stats["filtered_out"]["below_threshold"] == low
    assert stats["n_interactions"] == 30 - low


def test_missing_validation_file_needs_valid_from_train(tmp_path):
    write_toml(tmp_path, "novalid", """\
        split = { protocol = "given" }

        [[source]]
        kind = "local"
        format = "adjacency"
        dir = "novalid"
        files = { train = "train.txt", test = "test.txt" }
        """)
    write_files(tmp_path / "novalid", {"train.txt": "0 0 1 2 3\n1 0 1 2\n",
                                       "test.txt": "0 4\n1 4\n"})
    with pytest.raises(EmptySplitError, match="valid_from_train"):
        load_dataset("novalid", tmp_path)


def test_valid_from_train_carves_validation_from_train(tmp_path):
    write_toml(tmp_path, "novalid", """\
        split = { protocol = "given", valid_from_train = 0.25, seed = 0 }

        [[source]]
        kind = "local"
        format = "adjacency"
        dir = "novalid"
        files = { train = "train.txt", test = "test.txt" }
        """)
    write_files(tmp_path / "novalid", {"train.txt": "0 0 1 2 3\n1 0 1 2 3 5 6 7 8\n",
                                       "test.txt": "0 4\n1 4\n"})
    data = load_dataset("novalid", tmp_path)
    # per user: 4 items -> floor(1.0) = 1 to valid; 8 items -> floor(2.0) = 2 to valid
    assert len(data.valid) == 3 and len(data.train) == 9
    assert data.test.tolist() == [[0, 4], [1, 4]]
    assert_disjoint(data)
    original = {(0, i) for i in range(4)} | {(1, i) for i in (0, 1, 2, 3, 5, 6, 7, 8)}
    assert {tuple(p) for p in data.train.tolist() + data.valid.tolist()} == original


def test_given_atomic_files_share_one_token_mapping(tmp_path):
    write_toml(tmp_path, "tok", """\
        split = { protocol = "given" }

        [[source]]
        kind = "local"
        format = "atomic"
        dir = "tok"
        files = { train = "a.inter", valid = "b.inter", test = "c.inter" }
        """)
    head = "user_id:token\titem_id:token\n"
    write_files(tmp_path / "tok", {"a.inter": head + "ann\tx\nbob\ty\n",
                                   "b.inter": head + "bob\tx\n",
                                   "c.inter": head + "cid\tz\nann\ty\n"})
    data = load_dataset("tok", tmp_path)
    # users: ann 0, bob 1, cid 2; items: x 0, y 1, z 2 (first appearance over train, valid, test)
    assert (data.n_users, data.n_items) == (3, 3)
    assert data.train.tolist() == [[0, 0], [1, 1]]
    assert data.valid.tolist() == [[1, 0]]
    assert data.test.tolist() == [[0, 1], [2, 2]]


# catalog --------------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_known_names(tmp_path):
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'") as info:
        load_dataset("nope", tmp_path)
    message = str(info.value)
    for name in ("yelp-lightgnn", "citeulike", "ml-100k"):
        assert name in message
    assert isinstance(info.value, KeyError)


CATALOG_ERRORS = [
    pytest.param("typo", "typo", RATIO_TOML.format(dir="typo") + 'formt = "x"\n',
                 r"unknown key\(s\) \['formt'\]",
                 id="unknown-key"),
    pytest.param("typo", "typo", 'splitt = { protocol = "ratio" }\n' + RATIO_TOML.format(dir="typo"),
                 r"\['splitt'\]", id="unknown-top-level-key"),
    pytest.param("broken", "broken", "split = { protocol = \n", "invalid TOML", id="invalid-toml"),
]


@pytest.mark.parametrize(("name", "dataset", "text", "message"), CATALOG_ERRORS)
def test_malformed_user_toml_is_a_catalog_error_naming_the_file(tmp_path, name, dataset, text, message):
    path = write_toml(tmp_path, name, text)
    with pytest.raises(CatalogError, match=message) as info:
        load_dataset(dataset, tmp_path)
    assert str(path) in str(info.value)


def test_user_toml_ratio_protocol_splits_cover_all_deduplicated_interactions(tmp_path):
    pairs = ratio_interactions()
    lines = [f"{u} {i}" for u, i in pairs] + [f"{u} {i}" for u, i in pairs[:4]]  # 4 duplicates
    write_toml(tmp_path, "mine", RATIO_TOML.format(dir="mine"))
    write_files(tmp_path / "mine", {"ratings.txt": "\n".join(lines) + "\n"})
    data = load_dataset("mine", tmp_path)
    stats = data.stats()
    assert stats["read"] == {"all": len(pairs) + 4}
    assert stats["duplicates_removed"] == 4
    assert len(data.train) and len(data.valid) and len(data.test)
    assert_disjoint(data)
    # integer ids are remapped in ascending order: here 0..n-1 map to themselves
    assert data.n_users == 6 and data.n_items == len({i for _, i in pairs})
    union = {tuple(p) for p in np.concatenate([data.train, data.valid, data.test]).tolist()}
    item_ids = {old: new for new, old in enumerate(sorted({i for _, i in pairs}))}
    assert union == {(u, item_ids[i]) for u, i in pairs}
    for u in range(data.n_users):
        counts = tuple(int((split[:, 0] == u).sum()) for split in (data.train, data.valid,
                                                                    data.test))
        assert counts == loading.pp.ratio_counts(sum(counts), (0.7, 0.05, 0.25))


def test_cli_datasets_lists_builtins_and_user_datasets(tmp_path, capsys):
    write_toml(tmp_path, "mine", RATIO_TOML.format(dir="mine"))
    assert main(["datasets", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert set(builtin_catalog()) <= set(names)
    assert {"yelp-lightgnn", "citeulike", "ml-100k"} <= set(names)
    by_name = {r["name"]: r for r in rows}
    assert by_name["mine"]["defined_in"] == str(tmp_path / "mine.toml")
    assert by_name["mine"]["available"] == "missing"  # its ratings file is not there
    assert by_name["yelp-lightgnn"]["defined_in"].startswith("builtin")
    assert by_name["yelp-lightgnn"]["available"] == "missing"
    assert by_name["gowalla"]["available"] == "missing (offline)"


def test_cli_datasets_shows_the_statistics_of_one_dataset(tmp_path, capsys):
    write_toml(tmp_path, "mine", RATIO_TOML.format(dir="mine"))
    pairs = ratio_interactions()
    write_files(tmp_path / "mine", {"ratings.txt": "".join(f"{u} {i}\n" for u, i in pairs)})
    assert main(["datasets", "mine", "--json", "--data-dir", str(tmp_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["name"] == "mine"
    assert stats["n_train"] + stats["n_valid"] + stats["n_test"] == len(pairs)


# cache ----------------------------------------------------------------------------------------


def _dataset_for_cache(root: Path, seed: int = 0) -> list[tuple[int, int]]:
    pairs = ratio_interactions(seed=seed)
    write_toml(root, "mine", RATIO_TOML.format(dir="mine"))
    write_files(root / "mine", {"ratings.txt": "".join(f"{u} {i}\n" for u, i in pairs)})
    return pairs


def test_second_load_is_served_from_the_cache(tmp_path, own_cache, monkeypatch):
    _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    assert len(list(own_cache.glob("mine-*.npz"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("the dataset was rebuilt instead of read from the cache")

    monkeypatch.setattr(loading, "build_dataset", no_build)
    second = load_dataset("mine", tmp_path)
    assert second.fingerprint() == first.fingerprint()
    assert second.stats() == first.stats()
    with pytest.raises(AssertionError, match="rebuilt"):
        load_dataset("mine", tmp_path, use_cache=False)


def test_corrupt_cache_file_warns_and_is_rebuilt(tmp_path, own_cache):
    _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    (cache_file,) = own_cache.glob("mine-*.npz")
    blob = bytearray(cache_file.read_bytes())
    blob[len(blob) // 3 : len(blob) // 3 + 64] = b"\xff" * 64
    cache_file.write_bytes(bytes(blob))
    with pytest.warns(CorruptCacheWarning, match="corrupt dataset cache"):
        rebuilt = load_dataset("mine", tmp_path)
    assert rebuilt.fingerprint() == first.fingerprint()
    # the rebuilt cache file is sound again
    again = loading._load_cache(cache_file)
    assert again.fingerprint() == first.fingerprint()


def test_truncated_cache_file_warns_and_is_rebuilt(tmp_path, own_cache):
    _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    (cache_file,) = own_cache.glob("mine-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(CorruptCacheWarning):
        assert load_dataset("mine", tmp_path).fingerprint() == first.fingerprint()


def test_changed_raw_file_changes_the_cache_key(tmp_path, own_cache):
    pairs = _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    extra = [(6, 0), (6, 1), (6, 2), (6, 3)]  # a new user with four items
    lines = "".join(f"{u} {i}\n" for u, i in pairs + extra)
    (tmp_path / "mine" / "ratings.txt").write_text(lines, encoding="utf-8")
    second = load_dataset("mine", tmp_path)
    assert second.n_users == first.n_users + 1
    assert second.stats()["n_interactions"] == first.stats()["n_interactions"] + 4
    assert second.fingerprint() != first.fingerprint()
    assert len(list(own_cache.glob("mine-*.npz"))) == 2


def test_changed_split_option_changes_the_cache_key(tmp_path, own_cache):
    _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    write_toml(tmp_path, "mine", RATIO_TOML.format(dir="mine").replace("seed = 0", "seed = 1"))
    second = load_dataset("mine", tmp_path)
    assert second.fingerprint() != first.fingerprint()
    assert second.stats()["n_interactions"] == first.stats()["n_interactions"]


def test_changed_header_option_changes_the_cache_key(tmp_path, own_cache):
    # the same file read with and without `header = true` is different data
    pairs = _dataset_for_cache(tmp_path)
    first = load_dataset("mine", tmp_path)
    write_toml(tmp_path, "mine", RATIO_TOML.format(dir="mine") + "header = true\n")
    second = load_dataset("mine", tmp_path)
    assert first.stats()["n_interactions"] == len(pairs)
    assert second.stats()["n_interactions"] == len(pairs) - 1
    assert second.fingerprint() == load_dataset("mine", tmp_path, use_cache=False).fingerprint()


# downloads ------------------------------------------------------------------------------------

DOWNLOAD_TOML = """\
    split = {{ protocol = "ratio", seed = 0 }}

    [[source]]
    kind = "download"
    format = "edgelist"
    dir = "dl"
    files = {{ all = "ratings.txt" }}
    urls = {{ all = {url} }}
    sha256 = {{ all = "{sha}" }}
    """


def remote_file(tmp_path: Path) -> tuple[Path, str]:
    """A file outside the data root to download through a file:// URL, and its sha256."""
    remote = tmp_path / "remote" / "ratings.txt"
    remote.parent.mkdir()
    remote.write_text("".join(f"{u} {i}\n" for u, i in ratio_interactions()), encoding="utf-8")
    return remote, hashlib.sha256(remote.read_bytes()).hexdigest()


def download_toml(root: Path, remote: Path, sha: str) -> None:
    write_toml(root, "dl", DOWNLOAD_TOML.format(url=json.dumps(remote.as_uri()), sha=sha))


def test_download_with_the_right_checksum_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "0")
    remote, sha = remote_file(tmp_path)
    root = tmp_path / "data"
    download_toml(root, remote, sha)
    data = load_dataset("dl", root)
    local = root / "dl" / "ratings.txt"
    assert local.read_bytes() == remote.read_bytes()
    assert data.info["source"] == "download"
    assert data.info["files"]["all"]["sha256"] == sha
    assert data.stats()["n_interactions"] == len(ratio_interactions())
    assert not list((root / "dl").glob(".*.part"))  # no temporary file left behind


def test_download_with_a_wrong_checksum_fails_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "0")
    remote, _ = remote_file(tmp_path)
    root = tmp_path / "data"
    download_toml(root, remote, "0" * 64)
    with pytest.raises(ChecksumError, match="does not match the expected 0000"):
        load_dataset("dl", root)
    assert not (root / "dl" / "ratings.txt").exists()
    assert not list((root / "dl").glob(".*.part"))


def test_download_without_checksum_records_it_and_checks_it_later(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "0")
    remote, sha = remote_file(tmp_path)
    root = tmp_path / "data"
    download_toml(root, remote, "")
    first = load_dataset("dl", root)
    sums = (root / "dl" / "SHA256SUMS").read_text().split()
    assert sums == [sha, "ratings.txt"]
    assert load_dataset("dl", root).fingerprint() == first.fingerprint()
    local = root / "dl" / "ratings.txt"
    local.write_text(local.read_text() + "9 9\n", encoding="utf-8")
    with pytest.raises(ChecksumError, match=rf"ratings\.txt: sha256 .* expected {sha}"):
        load_dataset("dl", root)


def test_download_into_a_subfolder_records_and_checks_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "0")
    remote, _ = remote_file(tmp_path)
    root = tmp_path / "data"
    text = DOWNLOAD_TOML.format(url=json.dumps(remote.as_uri()), sha="")
    write_toml(root, "dl", text.replace('all = "ratings.txt"', 'all = "sub/ratings.txt"'))
    load_dataset("dl", root)
    local = root / "dl" / "sub" / "ratings.txt"
    assert local.read_bytes() == remote.read_bytes()
    local.write_text(local.read_text() + "9 9\n", encoding="utf-8")
    with pytest.raises(ChecksumError):
        load_dataset("dl", root)


def test_offline_download_names_the_url_and_the_destination(tmp_path):
    remote, sha = remote_file(tmp_path)
    root = tmp_path / "data"
    download_toml(root, remote, sha)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("dl", root)
    message = str(info.value)
    assert remote.as_uri() in message
    assert str(root / "dl" / "ratings.txt") in message
    assert "RECSHRINK_OFFLINE" in message
    assert not (root / "dl" / "ratings.txt").exists()


def test_failed_download_is_dataset_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "0")
    root = tmp_path / "data"
    missing = tmp_path / "remote" / "nothing.txt"
    download_toml(root, missing, "")
    with pytest.raises(DatasetUnavailableError, match="the download failed") as info:
        load_dataset("dl", root)
    assert missing.as_uri() in str(info.value)


def test_missing_local_dataset_lists_the_expected_paths(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="not available") as info:
        load_dataset("citeulike", tmp_path)
    assert str(tmp_path / "citeulike" / "train.txt") in str(info.value)
