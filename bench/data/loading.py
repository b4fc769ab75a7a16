"""Load a catalog dataset: resolve files, preprocess, split, and cache the result.

The processed dataset is cached under a key that hashes the raw files' sha256 sums and every
preprocessing and split option, so any change to either rebuilds it. A cache file that fails to
load, or whose content fingerprint differs from the one stored with it, is reported and rebuilt.

Cache folder: ``$RECSHRINK_CACHE``, else ``<data root>/.cache`` when the data root is writable,
else ``~/.cache/recshrink``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import preprocess as pp
from bench.data.catalog import DatasetSpec, Source, data_root, get_spec
from bench.data.dataset import EmptySplitError, InteractionData
from bench.data.readers import RawInteractions, read_file
from bench.data.sources import resolve_files, sha256_file
from bench.files import write_atomically

CACHE_VERSION = 1


class CorruptCacheWarning(UserWarning):
    """A cached processed dataset was unreadable or inconsistent and is being rebuilt."""


def cache_dir(root: Path) -> Path:
    env = os.environ.get("RECSHRINK_CACHE")
    if env:
        return Path(env)
    if root.is_dir() and os.access(root, os.W_OK):
        return root / ".cache"
    return Path.home() / ".cache" / "recshrink"


def _read_all(source, paths: dict[str, Path]) -> dict[str, RawInteractions]:
    opts: dict[str, Any] = {"header": source.header, "separator": source.separator}
    opts.update(source.fields)
    return {split: read_file(p, source.format, **opts) for split, p in paths.items()}


def _kcore_option(value: Any) -> tuple[int, int] | None:
    if value is None or value == 0:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"kcore must be an integer or [k_user, k_item], got {value!r}")


def _build_single(spec: DatasetSpec, raw: RawInteractions, info: dict[str, Any]) -> InteractionData:
    pre, split = spec.preprocess, spec.split
    info["read"] = {"all": len(raw)}
    raw, n_thr = pp.implicit(raw, pre.get("threshold"))
    info["filtered_out"] = {"below_threshold": n_thr}
    users, items, times = raw.users, raw.items, raw.timestamps
    if pre.get("dedup", True):
        keep = pp.deduplicate(users, items, times)
        info["duplicates_removed"] = int(len(users) - len(keep))
        users, items = users[keep], items[keep]
        times = None if times is None else times[keep]
    k = _kcore_option(pre.get("kcore"))
    if k is not None:
        mask = pp.kcore(users, items, *k)
        info["filtered_out"]["kcore"] = int((~mask).sum())
        users, items = users[mask], items[mask]
        times = None if times is None else times[mask]
    if len(users) == 0:
        raise EmptySplitError(f"{raw.source}: no interaction left after preprocessing")
    u, n_users = pp.remap_ids(users, raw.tokens)
    i, n_items = pp.remap_ids(items, raw.tokens)
    info["remapped"] = True
    protocol = split["protocol"]
    seed = int(split.get("seed", 0))
    if protocol == "ratio":
        labels = pp.split_ratio(u, seed, pp.check_ratios(split.get("ratios", pp.DEFAULT_RATIOS)))
    elif protocol == "loo":
        labels = pp.split_loo(u, times, seed)
    else:
        labels = pp.split_temporal(
            u, times, pp.check_ratios(split.get("ratios", pp.DEFAULT_RATIOS)),
            str(split.get("scope", "global")),
        )
    pairs = np.stack([u, i], axis=1)
    parts = [pairs[labels == k] for k in range(3)]
    for name, part in zip(("train", "valid", "test"), parts, strict=True):
        if len(part) == 0:
            raise EmptySplitError(
                f"{raw.source}: the {protocol!r} split left the {name} split empty"
            )
    return InteractionData(spec.name, n_users, n_items, *[_sorted(p) for p in parts], info=info)


def _sorted(pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return pairs.reshape(0, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _unique_pairs(pairs: np.ndarray, n_items: int) -> tuple[np.ndarray, int]:
    keys = pp.pair_keys(pairs[:, 0], pairs[:, 1], n_items)
    uniq = pp.sorted_unique(keys)
    return np.stack([uniq // n_items, uniq % n_items], axis=1), len(keys) - len(uniq)


def _build_given(
    spec: DatasetSpec, raws: dict[str, RawInteractions], info: dict[str, Any]
) -> InteractionData:
    pre, split = spec.preprocess, spec.split
    if _kcore_option(pre.get("kcore")) is not None:
        raise ValueError(f"dataset {spec.name!r}: k-core filtering is not supported with the "
                         f"'given' split protocol (it would change the published splits)")
    info["filtered_out"] = {}
    kept: dict[str, RawInteractions] = {}
    for name, raw in raws.items():
        kept[name], info["filtered_out"][f"{name}_below_threshold"] = pp.implicit(
            raw, pre.get("threshold")
        )
        if len(kept[name]) == 0:
            raise EmptySplitError(f"{raw.source}: the {name} split is empty")
    names = list(kept)
    tokens = kept[names[0]].tokens
    if tokens:
        sizes = [len(kept[n]) for n in names]
        u_all, n_users = pp.remap_ids(np.concatenate([kept[n].users for n in names]), True)
        i_all, n_items = pp.remap_ids(np.concatenate([kept[n].items for n in names]), True)
        cuts = np.cumsum(sizes)[:-1]
        pairs = {n: np.stack([uu, ii], axis=1) for n, uu, ii in
                 zip(names, np.split(u_all, cuts), np.split(i_all, cuts), strict=True)}
        info["remapped"] = True
    else:
        n_users = int(max(kept[n].users.max() for n in names)) + 1
        n_items = int(max(kept[n].items.max() for n in names)) + 1
        pairs = {n: np.stack([kept[n].users, kept[n].items], axis=1) for n in names}
        info["remapped"] = False
    info["read"] = {n: len(raws[n]) for n in names}
    dups: dict[str, int] = {}
    for n in names:
        pairs[n], dups[n] = _unique_pairs(pairs[n], n_items)
    info["duplicates_removed"] = int(sum(dups.values()))
    info["duplicates_removed_by_split"] = {n: int(d) for n, d in dups.items()}
    if "valid" not in pairs:
        frac = float(split.get("valid_from_train", 0.0))
        if frac <= 0:
            raise EmptySplitError(
                f"dataset {spec.name!r} has no validation file; set split.valid_from_train "
                f"to carve a validation share from train"
            )
        labels = pp.split_ratio(pairs["train"][:, 0], int(split.get("seed", 0)),
                                pp.check_ratios((1 - frac, frac, 0.0)))
        pairs["valid"] = pairs["train"][labels == 1]
        pairs["train"] = pairs["train"][labels == 0]
        info["valid_from_train"] = frac
    # the splits must be disjoint: a pair already in an earlier split is dropped from a later one
    seen = pp.pair_keys(pairs["train"][:, 0], pairs["train"][:, 1], n_items)
    cross = 0
    for n in ("valid", "test"):
        keys = pp.pair_keys(pairs[n][:, 0], pairs[n][:, 1], n_items)
        overlap = np.isin(keys, seen)
        cross += int(overlap.sum())
        pairs[n] = pairs[n][~overlap]
        seen = np.concatenate([seen, keys[~overlap]])
    info["cross_split_duplicates_removed"] = cross
    for n in ("train", "valid", "test"):
        if len(pairs[n]) == 0:
            raise EmptySplitError(f"dataset {spec.name!r}: the {n} split is empty")
    return InteractionData(spec.name, n_users, n_items, pairs["train"], pairs["valid"],
                           pairs["test"], info=info)


def build_dataset(
    spec: DatasetSpec,
    root: Path,
    resolved: tuple[Source, dict[str, Path], dict[str, str]] | None = None,
) -> InteractionData:
    """Read and preprocess a dataset from its files (no cache).

    ``resolved`` = (source, paths, sha256 digests) when the caller already resolved the files.
    """
    if resolved is None:
        source, paths = resolve_files(spec, root)
        digests = {k: sha256_file(p) for k, p in paths.items()}
    else:
        source, paths, digests = resolved
    raws = _read_all(source, paths)
    info: dict[str, Any] = {
        "source": source.kind,
        "format": source.format,
        "files": {k: {"path": str(p), "sha256": digests[k]} for k, p in paths.items()},
        "split": dict(spec.split),
        "preprocess": dict(spec.preprocess),
    }
    data = _build_single(spec, raws["all"], info) if "all" in raws else _build_given(spec, raws, info)
    return data.without_cold_pairs() if spec.split.get("drop_cold", False) else data


def _cache_key(spec: DatasetSpec, digests: dict[str, str], source: Source) -> str:
    # the reading options change what the same files parse to, so they are part of the key
    read = {"header": source.header, "separator": source.separator, "fields": source.fields}
    payload = json.dumps(
        {"v": CACHE_VERSION, "name": spec.name, "split": spec.split, "pre": spec.preprocess,
         "files": digests, "source": source.kind, "format": source.format, "read": read},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _save_cache(path: Path, data: InteractionData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"info": data.info, "fingerprint": data.fingerprint(), "name": data.name}
    write_atomically(path, lambda tmp: np.savez(tmp, shape=np.array([data.n_users, data.n_items]),
                                                train=data.train, valid=data.valid, test=data.test,
                                                meta=np.array(json.dumps(meta))))


def _load_cache(path: Path) -> InteractionData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        n_users, n_items = (int(x) for x in z["shape"])
        data = InteractionData(meta["name"], n_users, n_items, z["train"], z["valid"], z["test"],
                               info=meta["info"])
    if data.fingerprint() != meta["fingerprint"]:
        raise ValueError("content fingerprint mismatch")
    return data


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, use_cache: bool = True
) -> InteractionData:
    """Load a dataset by catalog name (see :mod:`bench.data.catalog`), using the cache."""
    root = data_root(data_dir)
    spec = get_spec(name, root)
    if not use_cache:
        return build_dataset(spec, root)
    source, paths = resolve_files(spec, root)
    digests = {k: sha256_file(p) for k, p in paths.items()}
    key = _cache_key(spec, digests, source)
    path = cache_dir(root) / f"{spec.name}-{key}.npz"
    if path.is_file():
        try:
            return _load_cache(path)
        except Exception as exc:  # any unreadable or inconsistent cache file is rebuilt
            warnings.warn(f"corrupt dataset cache {path} ({exc}); rebuilding it",
                          CorruptCacheWarning, stacklevel=2)
    data = build_dataset(spec, root, (source, paths, digests))
    try:
        _save_cache(path, data)
    except OSError as exc:
        warnings.warn(f"could not write the dataset cache {path}: {exc}", stacklevel=2)
    return data
