"""Dataset catalog: built-in entries (``catalog.toml``) plus user TOML files in the data root.

Schema of one dataset (built-in file: ``[[dataset]]`` tables; user file: top level)::

    name = "mydata"                 # user files: defaults to the file's stem
    description = "..."
    split = { protocol = "ratio", ratios = [0.7, 0.05, 0.25], seed = 0 }
    preprocess = { threshold = 4.0, dedup = true, kcore = [5, 5] }
    [[source]]                      # one or more, tried in order
    kind = "local"                  # local | download | recbole
    format = "edgelist"             # adjacency | edgelist | atomic
    dir = "mydata"                  # folder below the data root
    files = { all = "ratings.csv" } # or { train = ..., valid = ..., test = ... }
    header = false                  # edgelist: skip a header line
    separator = ","                 # edgelist: literal field separator (default: any of , tab space)
    urls = { all = "https://..." }  # download: one URL per file ...
    sha256 = { all = "hex" }        # ... and its checksum
    archive = { file = "x.zip", url = "https://...", sha256 = "hex" }  # or one zip for all files

Data root: ``--data-dir``, else ``$RECSHRINK_DATA``, else ``./datasets``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
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
_SPLIT_KEYS = {"protocol", "ratios", "seed", "valid_from_train", "scope"}
_PRE_KEYS = {"threshold", "dedup", "kcore"}


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _parse_source(raw: dict, where: str) -> Source:
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
    if "all" in files and len(files) > 1:
        raise CatalogError(f"{where}.files: give either 'all' or per-split files, not both")
    if "all" not in files and "train" not in files:
        raise CatalogError(f"{where}.files: per-split files need at least 'train'")
    if kind == "download" and not raw.get("archive"):
        missing = sorted(set(files) - set(raw.get("urls", {})))
        if missing:
            raise CatalogError(f"{where}: download source has no URL for {missing}")
    return Source(
        kind=kind,
        format=fmt,
        files=dict(files),
        dir=str(raw.get("dir", "")),
        urls=dict(raw.get("urls", {})),
        sha256=dict(raw.get("sha256", {})),
        archive=dict(raw.get("archive", {})),
        header=bool(raw.get("header", False)),
        separator=str(raw.get("separator", "")),
        fields=dict(raw.get("fields", {})),
    )


def parse_dataset(table: dict, origin: str, default_name: str | None = None) -> DatasetSpec:
    """Validate one dataset table (see the module docstring for the schema)."""
    where = f"{origin}"
    _check_keys(table, _DATASET_KEYS, where)
    name = table.get("name", default_name)
    if not name or not isinstance(name, str):
        raise CatalogError(f"{where}: missing 'name'")
    where = f"{origin} (dataset {name!r})"
    split = dict(table.get("split", {"protocol": "ratio"}))
    _check_keys(split, _SPLIT_KEYS, f"{where}.split")
    if split.get("protocol", "ratio") not in SPLIT_PROTOCOLS:
        raise CatalogError(f"{where}.split: protocol {split.get('protocol')!r} is not one of "
                           f"{SPLIT_PROTOCOLS}")
    split.setdefault("protocol", "ratio")
    pre = dict(table.get("preprocess", {}))
    _check_keys(pre, _PRE_KEYS, f"{where}.preprocess")
    sources = table.get("source")
    if isinstance(sources, dict):
        sources = [sources]
    if not sources:
        raise CatalogError(f"{where}: no [[source]] given")
    parsed = tuple(_parse_source(s, f"{where}.source[{k}]") for k, s in enumerate(sources))
    for s in parsed:
        has_split_files = "all" not in s.files
        if split["protocol"] == "given" and not has_split_files:
            raise CatalogError(f"{where}: protocol 'given' needs per-split files (train/test)")
        if split["protocol"] != "given" and has_split_files:
            raise CatalogError(
                f"{where}: per-split files need split protocol 'given', got {split['protocol']!r}"
            )
    return DatasetSpec(name, str(table.get("description", "")), parsed, split, pre, origin)


def _load_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from None


def builtin_catalog() -> dict[str, DatasetSpec]:
    text = resources.files("bench.data").joinpath("catalog.toml").read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    specs = [parse_dataset(t, "builtin catalog") for t in doc["dataset"]]
    return {s.name: s for s in specs}


def user_catalog(root: Path) -> dict[str, DatasetSpec]:
    """Dataset definitions from ``<root>/*.toml`` (one dataset per file)."""
    out: dict[str, DatasetSpec] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*.toml")):
        spec = parse_dataset(_load_toml(path), str(path), default_name=path.stem)
        if spec.name in out:
            raise CatalogError(f"{path}: dataset {spec.name!r} already defined in {out[spec.name].origin}")
        out[spec.name] = spec
    return out


def catalog(root: Path | None = None) -> dict[str, DatasetSpec]:
    """Built-in datasets, then the user's; a user file may override a built-in name."""
    specs = builtin_catalog()
    specs.update(user_catalog(root if root is not None else data_root()))
    return specs


def get_spec(name: str, root: Path | None = None) -> DatasetSpec:
    specs = catalog(root)
    if name not in specs:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(specs))} "
            f"(add your own as a TOML file in the data root, see README)"
        )
    return specs[name]
