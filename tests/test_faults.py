"""Fault injection: every bad input is a clear error, and a failing disk or process loses nothing.

Each case sets up one fault: a broken input (a wrongly typed catalog key, an id out of range,
bytes that are not UTF-8, a path leaving the data root, an output folder that is a file, a closed
stdout), checked for the exact error type and a message naming the file and the line or key
(valid input still loads to the same arrays); or a failing resource (a full cache disk), checked
for what is kept.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import context
from bench.cli import main
from bench.data import preprocess as pp
from bench.data.catalog import CatalogError, catalog, catalog_problems, get_spec
from bench.data.loading import _unique_pairs, load_dataset
from bench.data.readers import MAX_ID, DataFormatError, read_adjacency, read_atomic, read_edgelist
from tests.helpers import method_context, tiny_config, write_tiny_dataset

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


# catalog types -------------------------------------------------------------------------------


def test_header_string_false_is_an_error_not_true(tmp_path):
    path = ratio_dataset(tmp_path, extra='header = "false"')
    with pytest.raises(CatalogError) as info:
        load_dataset("mine", tmp_path)
    assert_names(info.value, str(path), "dataset 'mine'", "source[0].header", "'false'")


def test_header_true_boolean_still_skips_the_first_line(tmp_path):
    ratio_dataset(tmp_path, extra="header = true", header_line="user item\n")
    data = load_dataset("mine", tmp_path, use_cache=False)
    assert data.n_users == 6 and data.n_items == 5
    assert len(data.train) + len(data.valid) + len(data.test) == 30


CATALOG_TYPE_ERRORS = [
    pytest.param(', seed = "0"', "split.seed", id="seed-string"),
    pytest.param(", seed = -1", "split.seed", id="seed-negative"),
    pytest.param(", seed = true", "split.seed", id="seed-bool"),
    pytest.param(', ratios = "0.7,0.05,0.25"', "split.ratios", id="ratios-string"),
    pytest.param(", ratios = [0.7, 0.3]", "split.ratios", id="ratios-two"),
    pytest.param(', ratios = [0.7, "0.05", 0.25]', "split.ratios", id="ratios-string-item"),
    pytest.param(", ratios = [0.7, 0.2, 0.2]", "split.ratios", id="ratios-not-summing-to-1"),
    pytest.param(', scope = 3', "split.scope", id="scope-int"),
]


@pytest.mark.parametrize(("split", "key"), CATALOG_TYPE_ERRORS)
def test_wrongly_typed_split_keys_name_file_dataset_and_key(tmp_path, split, key):
    path = ratio_dataset(tmp_path, split=split)
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), "dataset 'mine'", key)


@pytest.mark.parametrize("value", ['"0.1"', "true", "1.5", "[0.1]"])
def test_wrongly_typed_valid_from_train_names_the_key(tmp_path, value):
    path = given_dataset(tmp_path, {"train": "0 1\n", "test": "0 2\n"}, split=f", valid_from_train = {value}")
    path.write_text(path.read_text().replace(', valid = "valid.txt"', ""))
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), "dataset 'mine'", "split.valid_from_train")


@pytest.mark.parametrize(("line", "key"), [
    ("name = 123", "'name'"),
    ('name = ""', "'name'"),
    ("description = 5", "description"),
    ("split = 5", "'split'"),
    ('preprocess = { dedup = "no" }', "preprocess.dedup"),
    ('preprocess = { threshold = "4" }', "preprocess.threshold"),
    ('preprocess = { kcore = "5" }', "preprocess.kcore"),
])
def test_wrongly_typed_top_level_keys_name_the_file_and_key(tmp_path, line, key):
    body = textwrap.dedent(RATIO_TOML.format(dir="mine", split="", extra=""))
    top, rest = body.split("\n", 1)
    if line.startswith("split"):
        top = ""
    path = write(tmp_path / "mine.toml", f"{line}\n{top}\n{rest}")
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), key)
    assert "missing 'name'" not in str(info.value)


@pytest.mark.parametrize(("extra", "key"), [
    ("separator = 1", "source[0].separator"),
    ("dir = 3", "source[0].dir"),
    ("sha256 = { all = 5 }", "source[0].sha256.all"),
    ("fields = { user_field = 1 }", "source[0].fields.user_field"),
])
def test_wrongly_typed_source_keys_name_the_key(tmp_path, extra, key):
    path = write(tmp_path / "mine.toml", RATIO_TOML.format(dir="mine", split="", extra="")
                 .replace('dir = "mine"', "") + textwrap.dedent(f"    {extra}\n"))
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), "dataset 'mine'", key)


def test_builtin_catalog_still_parses_with_the_same_options():
    specs = catalog(Path("/nonexistent-data-root"))
    assert specs["gowalla"].split == {"protocol": "given", "valid_from_train": 0.1, "seed": 0}
    assert specs["ml-1m"].sources[0].separator == "::"
    assert specs["ml-100k"].sources[1].header is False


# catalog files: encodings, broken files ---------------------------------------------------


def test_a_catalog_toml_with_a_byte_order_mark_loads(tmp_path):
    path = ratio_dataset(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    spec = get_spec("mine", tmp_path)
    assert spec.origin == str(path) and spec.split["protocol"] == "ratio"


def test_a_non_utf8_catalog_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "mine.toml", b'description = "caf\xe9"\n')
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), "line 1", "UTF-8")


def test_a_broken_catalog_file_leaves_the_other_datasets_usable(tmp_path, capsys):
    ratio_dataset(tmp_path, "good")
    broken = write(tmp_path / "broken.toml", "split = { protocol = \n")
    typed_text = textwrap.dedent(RATIO_TOML.format(dir="x", split=', seed = "1"', extra=""))
    typed = write(tmp_path / "typed.toml", 'name = "other"\n' + typed_text)
    assert len(load_dataset("good", tmp_path, use_cache=False).train) > 0
    names = set(catalog(tmp_path))
    assert "good" in names and "ml-100k" in names and "broken" not in names and "other" not in names
    problems = [str(p) for p in catalog_problems(tmp_path)]
    assert len(problems) == 2 and str(broken) in problems[0] and str(typed) in problems[1]
    # using the broken datasets raises their own errors
    with pytest.raises(CatalogError, match="invalid TOML") as info:
        get_spec("broken", tmp_path)
    assert str(broken) in str(info.value)
    with pytest.raises(CatalogError, match=r"split\.seed") as info:
        get_spec("other", tmp_path)
    assert str(typed) in str(info.value)
    # the listing still works and warns, naming the file
    assert main(["datasets", "--json", "--data-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    rows = {r["name"] for r in json.loads(captured.out)}
    assert {"good", "ml-100k"} <= rows and "broken" not in rows
    assert "warning" in captured.err and str(broken) in captured.err and str(typed) in captured.err
    assert main(["datasets", "broken", "--data-dir", str(tmp_path)]) == 2
    assert str(broken) in capsys.readouterr().err


def test_a_broken_file_named_after_a_builtin_does_not_silently_fall_back(tmp_path):
    path = write(tmp_path / "ml-1m.toml", "split = 3\n")
    with pytest.raises(CatalogError) as info:
        get_spec("ml-1m", tmp_path)
    assert str(path) in str(info.value)
    assert "ml-1m" not in catalog(tmp_path)
    assert "ml-100k" in catalog(tmp_path)


def test_an_unreadable_catalog_entry_is_reported_not_raised_by_the_listing(tmp_path):
    (tmp_path / "dir.toml").mkdir()  # a folder named like a catalog file cannot be read
    ratio_dataset(tmp_path, "good")
    assert "good" in catalog(tmp_path)
    [problem] = catalog_problems(tmp_path)
    assert str(tmp_path / "dir.toml") in str(problem) and "cannot read" in str(problem)


# paths ---------------------------------------------------------------------------------------

DOWNLOAD_TOML = """\
    split = {{ protocol = "ratio" }}
    [[source]]
    kind = "download"
    format = "edgelist"
    dir = "{dir}"
    files = {{ all = "{file}" }}
    urls = {{ all = "https://example.invalid/r.txt" }}
    """


@pytest.mark.parametrize(("folder", "file", "key"), [
    ("/tmp/elsewhere", "r.txt", "source[0].dir"),
    ("../outside", "r.txt", "source[0].dir"),
    ("ok/../../outside", "r.txt", "source[0].dir"),
    ("ok", "../../r.txt", "source[0].files.all"),
    ("ok", "/etc/r.txt", "source[0].files.all"),
])
def test_a_download_source_leaving_the_data_root_is_an_error(tmp_path, monkeypatch, folder, file, key):
    root = tmp_path / "root"
    path = write(root / "mine.toml", DOWNLOAD_TOML.format(dir=folder, file=file))
    monkeypatch.delenv("RECSHRINK_OFFLINE")

    def no_download(*args, **kwargs):
        raise AssertionError("no download may start")

    monkeypatch.setattr("bench.data.sources.download", no_download)
    with pytest.raises(CatalogError) as info:
        load_dataset("mine", root)
    assert_names(info.value, str(path), "dataset 'mine'", key, "below the data root")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_an_archive_file_leaving_the_data_root_is_an_error(tmp_path):
    text = DOWNLOAD_TOML.format(dir="ok", file="r.txt").replace(
        'urls = { all = "https://example.invalid/r.txt" }',
        'archive = { file = "../x.zip", url = "https://example.invalid/x.zip" }')
    path = write(tmp_path / "mine.toml", text)
    with pytest.raises(CatalogError) as info:
        get_spec("mine", tmp_path)
    assert_names(info.value, str(path), "archive.file")


def test_resolving_a_programmatic_download_source_outside_the_root_writes_nothing(tmp_path, monkeypatch):
    from bench.data.catalog import DatasetSpec, Source
    from bench.data.sources import DatasetUnavailableError, resolve_files

    monkeypatch.delenv("RECSHRINK_OFFLINE")
    calls = []
    monkeypatch.setattr("bench.data.sources.download", lambda *a, **k: calls.append(a))
    source = Source(kind="download", format="edgelist", files={"all": "r.txt"}, dir="../escape",
                    urls={"all": "https://example.invalid/r.txt"})
    spec = DatasetSpec("x", "", (source,), {"protocol": "ratio"}, {}, "test")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DatasetUnavailableError, match="below the data root"):
        resolve_files(spec, root)
    assert calls == [] and not (tmp_path / "escape").exists()


def test_a_local_source_may_read_an_absolute_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    write(outside / "ratings.txt", "".join(f"{u} {i}\n" for u in range(4) for i in range(5)))
    root = tmp_path / "root"
    write(root / "mine.toml", RATIO_TOML.format(dir=outside, split="", extra=""))
    data = load_dataset("mine", root, use_cache=False)
    assert (data.n_users, data.n_items) == (4, 5)


# the command line ----------------------------------------------------------------------------


def test_run_out_an_existing_file_is_a_clear_error(tiny_root, tmp_path, capsys):
    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn"]\nseeds = [0]\n'
                                    "emb_targets = [1.0]\n")
    out = write(tmp_path / "taken", "not a folder\n")
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recshrink: error: --out") and str(out) in err and "Traceback" not in err
    assert out.read_text() == "not a folder\n"
    below = out / "sub"
    assert main(["run", str(config), "--out", str(below), "--no-progress"]) == 2
    assert str(out) in capsys.readouterr().err


def test_report_out_an_existing_file_is_a_clear_error(tmp_path, capsys):
    out = write(tmp_path / "taken", "x\n")
    assert main(["report", str(tmp_path / "results.sqlite"), "-o", str(out)]) == 2
    assert "--out" in capsys.readouterr().err


def _cli(args: list[str], stdout: int | None = None, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300,
                          env={**os.environ, "RECSHRINK_OFFLINE": "1", **(env or {})})


@pytest.mark.parametrize("args", [["methods", "--json"], ["datasets", "--json"], ["datasets"]])
def test_a_closed_stdout_stops_quietly_with_status_141(tmp_path, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes: like `| head -1` after one line
    try:
        proc = _cli([*args, *(["--data-dir", str(tmp_path)] if args[0] == "datasets" else [])],
                    stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


_NO_TORCH = """
import sys
import bench.cli
for argv in {argvs!r}:
    try:
        bench.cli.main(argv)
    except SystemExit:
        pass
print("torch" in sys.modules)
"""


def test_help_and_usage_errors_do_not_import_torch():
    argvs = [["--help"], ["run", "--help"], ["run", "--no-such-option"], ["nonsense"], []]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH.format(argvs=argvs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_the_dataset_listing_does_not_import_torch(tmp_path):
    code = (f"import sys, bench.cli; bench.cli.main(['datasets', '--data-dir', {str(tmp_path)!r}]); "
            f"print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# --- a full cache disk ---------------------------------------------------------------------------

def _full_disk(monkeypatch, exc: BaseException) -> None:
    """Make every cache write fail with ``exc`` after writing a partial temporary file."""

    def save(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise exc

    monkeypatch.setattr(context.torch, "save", save)


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file"),
])
def test_a_full_cache_disk_keeps_the_trained_base_in_memory(tmp_path, monkeypatch, exc):
    messages: list[str] = []
    ctx = method_context(checkpoint_dir=tmp_path)
    ctx.log = messages.append
    _full_disk(monkeypatch, exc)
    if isinstance(exc, RuntimeError):  # torch says only "write failed": the free space tells
        monkeypatch.setattr(context.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**20})())
    base = ctx.base()
    assert isinstance(base.model, torch.nn.Module) and base.state_hash
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"], "a temporary or partial file was left"
    assert any("could not write the cache file" in m and "the disk is full" in m for m in messages), messages
    # the next call in this run uses the model from memory: the same state, no retraining
    assert ctx.base().state_hash == base.state_hash


def test_a_full_disk_leaves_no_partial_dataset_cache(tmp_path, monkeypatch):
    from bench.data import loading

    root = write_tiny_dataset(tmp_path / "data")
    monkeypatch.delenv("RECSHRINK_CACHE", raising=False)  # the cache goes below this root

    def savez(path, **arrays):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loading.np, "savez", savez)
    with pytest.warns(UserWarning, match="could not write the dataset cache .*No space left"):
        data = load_dataset("tiny", root)
    assert data.n_users == 60
    assert not [p for p in loading.cache_dir(root).rglob("*") if p.is_file()], "a partial cache file was left"


# --- the results store, the output folder, the run's process ------------------------------------

CELLS = 'datasets = ["tiny"]\nmethods = ["lightgcn", "toy-truncate"]\nemb_targets = [0.5]\nseeds = [0, 1]\n'
QUIET = {"progress": False, "log": lambda m: None, "report": False}


def _store_with_cells(path: Path, n: int = 40) -> Path:
    from bench.store import ResultStore
    from tests.helpers import result

    with ResultStore(path) as store:
        for seed in range(n):
            store.put(dataclasses.replace(result("toy-a", 0.5, seed), key=f"k{seed}",
                                          traceback="x" * 3000))  # enough pages to damage one inside
    return path


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_damaged_store_is_refused_on_open_by_run_and_report(tmp_path, tiny_root, toy_plugin, capsys, where):
    out = tmp_path / "out"
    store = _store_with_cells(out / "results.sqlite")
    size = store.stat().st_size
    with open(store, "r+b") as fh:
        fh.seek(size // 2 if where == "middle" else size - 3000)
        fh.write(bytes(range(256)) * 8)
    damaged = store.read_bytes()
    config = tiny_config(tiny_root, CELLS)
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"results store {store} is damaged" in err and ".recover" in err and "Traceback" not in err
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 2
    assert "is damaged" in capsys.readouterr().err
    assert store.read_bytes() == damaged  # nothing was written to it


def test_a_zero_length_store_is_not_a_store_for_report(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    store.touch()
    assert main(["report", str(store), "-o", str(tmp_path / "rep")]) == 2
    assert "not a recshrink results store" in capsys.readouterr().err
    assert store.stat().st_size == 0  # no schema written into the input


def test_a_result_the_store_cannot_take_is_kept_and_stored_by_the_next_run(tmp_path, tiny_root, toy_plugin,
                                                                           monkeypatch):
    import sqlite3

    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore, StoreError

    config = load_config(tiny_config(tiny_root, CELLS))
    out = tmp_path / "out"
    real_put, calls = ResultStore.put, []

    def put_until_full(self, result):
        calls.append(result.key)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        real_put(self, result)

    monkeypatch.setattr(ResultStore, "put", put_until_full)
    with pytest.raises(StoreError, match=r"database or disk is full.*kept in .*unstored"):
        run_matrix(config, out, **QUIET)
    kept = list((out / "unstored").glob("*.json"))
    assert [p.stem for p in kept] == [calls[1]]
    with ResultStore(out / "results.sqlite") as store:
        assert store.runs()[-1]["outcome"] == "crashed"
        assert set(store.statuses()) == {calls[0]}
    monkeypatch.setattr(ResultStore, "put", real_put)
    ran: list[str] = []
    summary = run_matrix(config, out, on_result=lambda r: ran.append(r.key), **QUIET)
    assert calls[1] not in ran and calls[0] not in ran  # neither computed again
    assert summary.already_done == 2 and summary.ran == summary.total - 2
    assert not list((out / "unstored").glob("*.json"))
    with ResultStore(out / "results.sqlite") as store:
        assert store.statuses()[calls[1]] == "ok"


def test_two_runs_on_one_output_folder_cannot_overlap(tmp_path, tiny_root, toy_plugin):
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import RunLockedError, run_lock

    config = load_config(tiny_config(tiny_root, CELLS))
    out = tmp_path / "out"
    with run_lock(out):
        expected = rf"another recshrink run is writing to {out} \(PID {os.getpid()} "
        with pytest.raises(RunLockedError, match=expected):
            run_matrix(config, out, **QUIET)
    assert run_matrix(config, out, **QUIET).ok == 4  # released


def test_a_killed_runs_lock_is_not_stale(tmp_path):
    from bench.store import run_lock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from bench.store import run_lock
        with run_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(timeout=30)
        with run_lock(out):  # the kernel released it with the process
            pass
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_stops_a_run_like_ctrl_c_and_records_it(tmp_path, tiny_root, toy_plugin):
    import signal
    import sqlite3
    import time

    config = tiny_config(tiny_root, 'datasets = ["tiny"]\nmethods = ["lightgcn", "toy-truncate"]\n'
                                    "emb_targets = [0.5, 0.25]\nseeds = [0, 1, 2]\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 120
    for line in proc.stderr:
        if "/seed" in line and ": ok" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 143, rest
    assert "terminated (SIGTERM); every finished cell is saved" in rest and "Traceback" not in rest
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("SELECT outcome FROM runs").fetchall() == [("terminated",)]
    assert con.execute("SELECT COUNT(*) FROM cells WHERE status = 'ok'").fetchone()[0] >= 1
    con.close()


def test_a_failed_report_write_keeps_the_old_report_and_fails_the_run(tmp_path, tiny_root, toy_plugin,
                                                                      monkeypatch, capsys):
    config = tiny_config(tiny_root, CELLS)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    page = (out / "index.html").read_text()
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if self.name.startswith(".index.html.tmp"):
            real_write_text(self, text[:100], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        from bench.report import build_report
        build_report([out], out)
    assert (out / "index.html").read_text() == page  # the old page, whole
    assert not list(out.glob(".*tmp*")), "a temporary file was left"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--retry-failed"]) == 2
    assert "could not write the report" in capsys.readouterr().err


def test_a_rebuilt_damaged_checkpoint_is_said_in_the_cells_log(tmp_path, tiny_root, toy_plugin, monkeypatch):
    from tests.helpers import run_single_cell

    monkeypatch.setenv("RECSHRINK_CACHE", str(tmp_path / "cache"))
    body = 'datasets = ["tiny"]\nmethods = ["toy-truncate"]\nemb_targets = [0.5]\nseeds = [0]\n'
    first = run_single_cell(tiny_root, tmp_path / "a", body)
    assert not any("unusable" in m for m in first["info"]["log"])  # it says it trained the base
    (checkpoint,) = (tmp_path / "cache" / "checkpoints").glob("*.pt")
    checkpoint.write_bytes(b"damaged")
    second = run_single_cell(tiny_root, tmp_path / "b", body)
    assert any(str(checkpoint) in m and "unusable" in m and "rebuilding" in m
               for m in second["info"]["log"]), second["info"]["log"]
    assert second["metrics"] == first["metrics"]


# --- budget values that used to pass validation and fail every cell at run time -------------------

@pytest.mark.parametrize("line, named", [
    ('backend = "bogus"', "backend='bogus'"),
    ('init = "bogus"', "init='bogus'"),
    ('reg_form = "bogus"', "reg_form='bogus'"),
    ('valid_metric = "bogus@20"', "valid_metric 'bogus@20'"),
    ("ks = [0, 20]", "ks=(0, 20)"),
    ("ks = [-5, 20]", "ks=(-5, 20)"),
    ("dim = 8.5", "dim=8.5"),
    ("epochs = 2.5", "epochs=2.5"),
    ("eval_memory_bytes = 0", "eval_memory_bytes=0"),
    ("eval_memory_bytes = -1", "eval_memory_bytes=-1"),
])
def test_a_bad_budget_value_is_a_config_error_before_any_cell(tmp_path, tiny_root, line, named):
    from bench.config import ConfigError, load_config

    config = tiny_config(tiny_root, CELLS)
    key = line.split("=")[0].strip()
    kept = [ln for ln in config.read_text().splitlines() if ln.split("=")[0].strip() != key]
    config.write_text("\n".join(kept).replace("[budget]", f"[budget]\n{line}", 1) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{config}: budget: ") + ".*" + re.escape(named)):
        load_config(config)


def test_ks_above_the_item_count_is_a_config_error_before_any_cell(tmp_path, tiny_root, toy_plugin, capsys):
    config = tiny_config(tiny_root, CELLS)
    text = config.read_text().replace("ks = [5, 10]", "ks = [10, 50]")  # the tiny dataset has 40 items
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: budget.ks: ks [50] exceed tiny's 40 items" in err
    assert not (out / "results.sqlite").exists() or not _stored_keys(out)


def _stored_keys(out: Path) -> set[str]:
    from bench.store import ResultStore

    with ResultStore(out / "results.sqlite") as store:
        return set(store.statuses())
