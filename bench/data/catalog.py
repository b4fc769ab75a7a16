"""Dataset catalog: built-in entries (``catalog.toml``) plus user TOML files in the data root.

Schema of one dataset (built-in file: ``[[dataset]]`` tables; user file: top level)::

    name = "mydata"                 # user files: defaults to the file's stem
    description = "..."
    split = { protocol = "ratio", ratios = [0.7, 0.05, 0.25], seed = 0 }  # drop_cold = false
    preprocess = { threshold = 4.0, dedup = true, kcore = [5, 5] }
    [[source]]                      # one or more, tried in order
    kind = "local"                  # local | download | recbole
    format = "edgelist"             # adjacency | edgelist | atomic
    dir = "mydata"                  # folder below the data root (local: may be absolute)
    files = { all = "ratings.csv" } # or { train = ..., valid = ..., test = ... }
    header = false                  # edgelist: skip a header line (a boolean, not "false")
    separator = ","                 # edgelist: literal field separator (default: any of , tab space)
    urls = { all = "https://..." }  # download: one URL per file ...
    sha256 = { all = "hex" }        # ... and its checksum
    archive = { file = "x.zip", url = "https://...", sha256 = "hex" }  # or one zip for all files

Data root: ``--data-dir``, else ``$RECSHRINK_DATA``, else ``./datasets``.

Every key is type-checked; an error names the catalog file, the dataset and the key. A
``download`` source writes below the data root only: its ``dir``, ``files`` and ``archive.file``
are relative paths without ``..``. A ``local`` source may read files anywhere (an absolute
``dir``). A user file that cannot be read or is invalid leaves out only its own dataset
(:func:`catalog_problems` lists such files; asking for that dataset raises the file's error).
Catalog files are UTF-8, optionally with a byte-order mark.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bench.data.readers import FORMATS

SPLIT_PROTOCOLS = ("given", "ratio", "loo", "temporal")
SOURCE_KINDS = ("local", "download", "recbole")
SPLIT_NAMES = ("all", "train", "valid", "test")


class CatalogError(ValueError):
    """A dataset definition is invalid, or a name is unknown."""


class UnknownDatasetError(CatalogError, KeyError):
    """No dataset of that name in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    kind: str
    format: str
    files: dict[str, str]
    dir: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    archive: dict[str, str] = field(default_factory=dict)
    header: bool = False
    separator: str = ""
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    sources: tuple[Source, ...]
    split: dict[str, Any]
    preprocess: dict[str, Any]
    origin: str  # "builtin" or the path of the user's TOML file


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$RECSHRINK_DATA``, else ``./datasets``."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("RECSHRINK_DATA")
    return Path(env) if env else Path("datasets")


_DATASET_KEYS = {"name", "description", "split", "preprocess", "source"}
_SOURCE_KEYS = {"kind", "format", "files", "dir", "urls", "sha256", "archive", "header",
                "separator", "fields"}
_SPLIT_KEYS = {"protocol", "ratios", "seed", "valid_from_train", "scope", "drop_cold"}
_PRE_KEYS = {"threshold", "dedup", "kcore"}
_ARCHIVE_KEYS = {"file", "url", "sha256"}
_FIELD_KEYS = {"user_field", "item_field", "rating_field", "time_field"}
_TEMPORAL_SCOPES = ("global", "user")


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _bad(where: str, key: str, expected: str, value: Any) -> CatalogError:
    return CatalogError(f"{where}: key {key!r} must be {expected}, got {value!r} "
                        f"({type(value).__name__})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(raw: Any, where: str, key: str) -> dict:
    if not isinstance(raw, dict):
        raise _bad(where, key, "a table", raw)
    return raw


def _string_table(raw: Any, where: str, key: str) -> dict[str, str]:
    table = _table(raw, where, key)
    for k, v in table.items():
        if not isinstance(v, str):
            raise _bad(where, f"{key}.{k}", "a string", v)
    return dict(table)


def _string(raw: dict, key: str, where: str, default: str, prefix: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise _bad(where, prefix + key, "a string", value)
    return value


def _confined(value: str, where: str, key: str) -> None:
    """A download writes below the data root only: no absolute path, no '..' component."""
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive or ".." in parts:
        raise CatalogError(f"{where}: key {key!r} of a download source must be a relative path "
                           f"without '..' (downloads are written below the data root), got {value!r}")


def _parse_source(raw: dict, dataset: str, index: int) -> Source:
    where, at = f"{dataset}.source[{index}]", f"source[{index}]."
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: each source must be a table")
    _check_keys(raw, _SOURCE_KEYS, where)
    kind = raw.get("kind", "local")
    if kind not in SOURCE_KINDS:
        raise CatalogError(f"{where}: kind {kind!r} is not one of {SOURCE_KINDS}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise CatalogError(f"{where}: format {fmt!r} is not one of {FORMATS}")
    files = raw.get("files")
    if not isinstance(files, dict) or not files:
        raise CatalogError(f"{where}: 'files' must map split names {SPLIT_NAMES} to file names")
    _check_keys(files, set(SPLIT_NAMES), f"{where}.files")
    for k, v in files.items():
        if not isinstance(v, str) or not v:
            raise _bad(dataset, f"{at}files.{k}", "a non-empty file name", v)
    if "all" in files and len(files) > 1:
        raise CatalogError(f"{where}.files: give either 'all' or per-split files, not both")
    if "all" not in files and "train" not in files:
        raise CatalogError(f"{where}.files: per-split files need at least 'train'")
    directory = _string(raw, "dir", dataset, "", at)
    urls = _string_table(raw.get("urls", {}), dataset, f"{at}urls")
    sha256 = _string_table(raw.get("sha256", {}), dataset, f"{at}sha256")
    archive = _string_table(raw.get("archive", {}), dataset, f"{at}archive")
    _check_keys(archive, _ARCHIVE_KEYS, f"{where}.archive")
    if archive and not archive.get("file"):
        raise CatalogError(f"{dataset}: key '{at}archive.file' is missing (the archive's file name)")
    header = raw.get("header", False)
    if not isinstance(header, bool):
        raise _bad(dataset, f"{at}header", "true or false (a TOML boolean, unquoted)", header)
    separator = _string(raw, "separator", dataset, "", at)
    fields = _string_table(raw.get("fields", {}), dataset, f"{at}fields")
    _check_keys(fields, _FIELD_KEYS, f"{where}.fields")
    if kind == "download":
        _confined(directory, dataset, f"{at}dir")
        for k, v in files.items():
            _confined(v, dataset, f"{at}files.{k}")
        if archive:
            _confined(archive["file"], dataset, f"{at}archive.file")
    if kind == "download" and not archive:
        missing = sorted(set(files) - set(urls))
        if missing:
            raise CatalogError(f"{where}: download source has no URL for {missing}")
    return Source(
        kind=kind,
        format=fmt,
        files=dict(files),
        dir=directory,
        urls=urls,
        sha256=sha256,
        archive=archive,
        header=header,
        separator=separator,
        fields=fields,
    )


def _parse_split(raw: Any, where: str) -> dict[str, Any]:
    split = dict(_table(raw, where, "split"))
    _check_keys(split, _SPLIT_KEYS, f"{where}.split")
    protocol = split.get("protocol", "ratio")
    if protocol not in SPLIT_PROTOCOLS:
        raise CatalogError(f"{where}.split: protocol {split.get('protocol')!r} is not one of "
                           f"{SPLIT_PROTOCOLS}")
    if "seed" in split and not (_is_int(split["seed"]) and split["seed"] >= 0):
        raise _bad(where, "split.seed", "an integer >= 0", split["seed"])
    if "ratios" in split:
        ratios = split["ratios"]
        if not (isinstance(ratios, list) and len(ratios) == 3 and all(_is_number(x) for x in ratios)):
            raise _bad(where, "split.ratios", "a list of three numbers [train, valid, test]", ratios)
        if any(x < 0 for x in ratios) or ratios[0] <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise CatalogError(f"{where}: key 'split.ratios' must be three non-negative numbers "
                               f"summing to 1 with a positive train share, got {ratios!r}")
    if "valid_from_train" in split:
        frac = split["valid_from_train"]
        if not (_is_number(frac) and 0 <= frac < 1):
            raise _bad(where, "split.valid_from_train", "a number in [0, 1)", frac)
    if "drop_cold" in split and not isinstance(split["drop_cold"], bool):
        raise _bad(where, "split.drop_cold", "true or false (a TOML boolean, unquoted)", split["drop_cold"])
    if "scope" in split and split["scope"] not in _TEMPORAL_SCOPES:
        raise _bad(where, "split.scope", f"one of {_TEMPORAL_SCOPES}", split["scope"])
    split.setdefault("protocol", "ratio")
    return split


def _parse_preprocess(raw: Any, where: str) -> dict[str, Any]:
    pre = dict(_table(raw, where, "preprocess"))
    _check_keys(pre, _PRE_KEYS, f"{where}.preprocess")
    if "threshold" in pre and not _is_number(pre["threshold"]):
        raise _bad(where, "preprocess.threshold", "a number", pre["threshold"])
    if "dedup" in pre and not isinstance(pre["dedup"], bool):
        raise _bad(where, "preprocess.dedup", "true or false (a TOML boolean)", pre["dedup"])
    if "kcore" in pre:
        k = pre["kcore"]
        ok = (_is_int(k) and k >= 0) or (
            isinstance(k, list) and len(k) == 2 and all(_is_int(x) and x >= 0 for x in k)
        )
        if not ok:
            raise _bad(where, "preprocess.kcore", "an integer >= 0 or [k_user, k_item]", k)
    return pre


def parse_dataset(table: dict, origin: str, default_name: str | None = None) -> DatasetSpec:
    """Validate one dataset table (see the module docstring for the schema).

    Every error is a :class:`CatalogError` naming ``origin`` (the catalog file), the dataset
    and the offending key.
    """
    where = f"{origin}"
    _check_keys(table, _DATASET_KEYS, where)
    name = table.get("name", default_name)
    if name is None:
        raise CatalogError(f"{where}: key 'name' is missing")
    if not isinstance(name, str) or not name:
        raise _bad(where, "name", "a non-empty string", name)
    where = f"{origin} (dataset {name!r})"
    description = _string(table, "description", where, "")
    split = _parse_split(table.get("split", {"protocol": "ratio"}), where)
    pre = _parse_preprocess(table.get("preprocess", {}), where)
    sources = table.get("source")
    if isinstance(sources, dict):
        sources = [sources]
    if not sources:
        raise CatalogError(f"{where}: no [[source]] given")
    if not isinstance(sources, list):
        raise _bad(where, "source", "a table or an array of tables", sources)
    parsed = tuple(_parse_source(s, where, k) for k, s in enumerate(sources))
    for s in parsed:
        has_split_files = "all" not in s.files
        if split["protocol"] == "given" and not has_split_files:
            raise CatalogError(f"{where}: protocol 'given' needs per-split files (train/test)")
        if split["protocol"] != "given" and has_split_files:
            raise CatalogError(
                f"{where}: per-split files need split protocol 'given', got {split['protocol']!r}"
            )
    return DatasetSpec(name, description, parsed, split, pre, origin)


def _load_toml(path: Path) -> dict:
    """Parse a catalog TOML file (UTF-8, a leading byte-order mark allowed)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise CatalogError(f"{path}: line {line}: not valid UTF-8 text; save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from None


def builtin_catalog() -> dict[str, DatasetSpec]:
    text = resources.files("bench.data").joinpath("catalog.toml").read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    specs = [parse_dataset(t, "builtin catalog") for t in doc["dataset"]]
    return {s.name: s for s in specs}


def _user_catalog(root: Path) -> tuple[dict[str, DatasetSpec], list[tuple[str, CatalogError]]]:
    """The valid user datasets, and ``(name, error)`` for each file that could not be used.

    The name of a broken file is the ``name`` it sets when that much could be read, else its
    stem: asking for that dataset raises the file's error, while the other datasets stay usable.
    Two files defining one name make that name unusable.
    """
    out: dict[str, DatasetSpec] = {}
    broken: list[tuple[str, CatalogError]] = []
    if not root.is_dir():
        return out, broken
    for path in sorted(root.glob("*.toml")):
        name = path.stem
        try:
            table = _load_toml(path)
            if isinstance(table.get("name"), str) and table["name"]:
                name = table["name"]
            spec = parse_dataset(table, str(path), default_name=path.stem)
        except CatalogError as exc:
            broken.append((name, exc))
            continue
        if spec.name in out:
            broken.append((spec.name, CatalogError(
                f"{path}: dataset {spec.name!r} already defined in {out[spec.name].origin}")))
            continue
        out[spec.name] = spec
    for name, _ in broken:
        out.pop(name, None)
    return out, broken


def user_catalog(root: Path) -> dict[str, DatasetSpec]:
    """Dataset definitions from ``<root>/*.toml`` (one dataset per file); broken files are left out.

    :func:`catalog_problems` lists the files left out and why.
    """
    return _user_catalog(root)[0]


def catalog_problems(root: Path | None = None) -> list[CatalogError]:
    """The errors of the catalog files in the data root that could not be used."""
    return [exc for _, exc in _user_catalog(root if root is not None else data_root())[1]]


def catalog(root: Path | None = None) -> dict[str, DatasetSpec]:
    """Built-in datasets, then the user's; a user file may override a built-in name.

    A user file that cannot be read or is invalid is left out (see :func:`catalog_problems`), and
    so is a built-in dataset that such a file would override.
    """
    specs = builtin_catalog()
    user, broken = _user_catalog(root if root is not None else data_root())
    for name, _ in broken:
        specs.pop(name, None)
    specs.update(user)
    return specs


def get_spec(name: str, root: Path | None = None) -> DatasetSpec:
    """The dataset ``name``; a catalog file meant to define it but invalid raises its error."""
    root = root if root is not None else data_root()
    user, broken = _user_catalog(root)
    for broken_name, exc in broken:
        if broken_name == name:
            raise exc
    specs = builtin_catalog()
    specs.update(user)
    if name not in specs:
        skipped = "".join(f"; {exc}" for _, exc in broken)
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(specs))} "
            f"(add your own as a TOML file in the data root, see README)"
            + (f". Catalog files that could not be used{skipped}" if broken else "")
        )
    return specs[name]
