"""Turn a catalog :class:`Source` into local files: found, extracted, or downloaded and checked."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path

from bench.data.catalog import DatasetSpec, Source


class DatasetUnavailableError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be fetched."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the published or recorded one."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recbole_file(relative: str) -> Path | None:
    """Path of a file inside the installed ``recbole`` distribution, without importing recbole."""
    try:
        dist = metadata.distribution("recbole")
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _recorded_sums(folder: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    f = folder / "SHA256SUMS"
    if f.is_file():
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1]] = parts[0]
    return sums


def _record_sum(folder: Path, name: str, digest: str) -> None:
    sums = _recorded_sums(folder)
    sums[name] = digest
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def verify(path: Path, expected: str, folder: Path | None = None) -> str:
    """Check ``path`` against ``expected`` (or the sum recorded in ``folder``); return its sha256."""
    digest = sha256_file(path)
    if not expected and folder is not None:
        expected = _recorded_sums(folder).get(path.name, "")
    if expected and digest != expected:
        raise ChecksumError(
            f"{path}: sha256 {digest} does not match the expected {expected}; "
            f"the file is corrupt or a different version: delete it and fetch it again"
        )
    return digest


def offline() -> bool:
    return os.environ.get("RECSHRINK_OFFLINE", "").lower() in ("1", "true", "yes")


def download(url: str, dest: Path, sha256: str, dataset: str) -> Path:
    """Fetch ``url`` to ``dest`` (atomically), check ``sha256`` or record it on first use."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = (
        f"dataset {dataset!r} needs {dest.name}: download {url} and place it at {dest}"
        + (f" (sha256 {sha256})" if sha256 else "")
    )
    if offline():
        raise DatasetUnavailableError(f"{hint}; downloads are off (RECSHRINK_OFFLINE is set)")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    except (OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DatasetUnavailableError(f"{hint}; the download failed: {exc}") from None
    try:
        digest = verify(Path(tmp), sha256)
    except ChecksumError:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    if not sha256:
        _record_sum(dest.parent, dest.name, digest)
    return dest


def _download_target(root: Path, *parts: str) -> Path:
    """``root / parts``, refused unless it stays below ``root`` (a download never writes elsewhere)."""
    path = root.joinpath(*parts)
    if any(Path(p).is_absolute() for p in parts) or ".." in path.relative_to(root).parts:
        raise DatasetUnavailableError(
            f"refusing to download to {path}: a download source's dir and files must stay below "
            f"the data root {root}"
        )
    return path


def _available(source: Source, root: Path) -> bool:
    if source.kind == "recbole":
        return all(recbole_file(f) is not None for f in source.files.values())
    folder = root / source.dir
    if all((folder / f).is_file() for f in source.files.values()):
        return True
    if source.kind == "download":
        return not offline()
    return False


def availability(spec: DatasetSpec, root: Path) -> str:
    """``present`` (files on disk), ``download`` (will be fetched) or ``missing``."""
    for source in spec.sources:
        if source.kind == "recbole" and _available(source, root):
            return "present (recbole package)"
        folder = root / source.dir
        if source.kind != "recbole" and all((folder / f).is_file() for f in source.files.values()):
            return "present"
    if any(s.kind == "download" for s in spec.sources):
        return "download" if not offline() else "missing (offline)"
    return "missing"


def _missing_message(spec: DatasetSpec, root: Path) -> str:
    """One line: the dataset, every place looked in, and how to set the data root."""
    tried = []
    for s in spec.sources:
        if s.kind == "recbole":
            tried.append("the ml-100k files inside an installed recbole package "
                         "(pip install 'recshrink[recbole]')")
        else:
            tried.extend(f"{split} {root / s.dir / f}" for split, f in s.files.items())
    return (f"dataset {spec.name!r} is not available; tried: {'; '.join(tried)} "
            f"(data root: {root.resolve()}; set it with --data-dir or RECSHRINK_DATA)")


def resolve_files(spec: DatasetSpec, root: Path) -> tuple[Source, dict[str, Path]]:
    """Local paths of the first available source's files (downloading them if needed)."""
    errors: list[Exception] = []
    for source in spec.sources:
        if source.kind == "recbole":
            paths = {k: recbole_file(f) for k, f in source.files.items()}
            if all(p is not None for p in paths.values()):
                return source, paths  # type: ignore[return-value]
            continue
        folder = root / source.dir
        paths = {k: folder / f for k, f in source.files.items()}
        if all(p.is_file() for p in paths.values()):
            for k, p in paths.items():
                # download() records a sum in the SHA256SUMS beside the file it fetched
                verify(p, source.sha256.get(k, ""), p.parent)
            return source, paths
        if source.kind != "download":
            continue
        try:
            folder = _download_target(root, source.dir)
            paths = {k: _download_target(root, source.dir, f) for k, f in source.files.items()}
            if source.archive:
                arch = _download_target(root, source.dir, source.archive["file"])
                if not arch.is_file():
                    download(source.archive["url"], arch, source.archive.get("sha256", ""), spec.name)
                else:
                    verify(arch, source.archive.get("sha256", ""), arch.parent)
                with zipfile.ZipFile(arch) as z:
                    for member in source.files.values():
                        z.extract(member, folder)
            else:
                for k, p in paths.items():
                    if not p.is_file():
                        download(source.urls[k], p, source.sha256.get(k, ""), spec.name)
            return source, paths
        except DatasetUnavailableError as exc:
            errors.append(exc)
    if errors:
        raise DatasetUnavailableError("; ".join(str(e) for e in errors))
    raise DatasetUnavailableError(_missing_message(spec, root))
