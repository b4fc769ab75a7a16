"""Shared fixtures. Tests never touch the network and never write into ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("RECSHRINK_SHARED", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECSHRINK_OFFLINE", "1")
    monkeypatch.setenv("RECSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("RECSHRINK_DATA", raising=False)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "yelp-lightgnn" / "train.txt").is_file():
        pytest.fail(f"the shared datasets are missing at {SHARED_DATASETS} "
                    f"(expected ../shared/datasets beside the project; or set RECSHRINK_SHARED)")
    return SHARED_DATASETS


# --- the harness: a tiny dataset, matrix configs, a third-party plugin --------------------------

TOY_PLUGIN = '''\
"""A tiny third-party method package; the tests install it and load it through its entry points."""

import torch
from torch import nn

from bench.api import ArtifactPart, CompressedModel, Knob, LightGCN, Method



class _Fixed(nn.Module):
    def __init__(self, users, items):
        super().__init__()
        self.users = nn.Parameter(users)
        self.items = nn.Parameter(items)

    def propagate(self):
        return self.users, self.items


class TruncateBase(Method):
    axes = ("emb",)
    description = "keeps the first dims of the base model's final representations (a toy)"
    knobs = (Knob("slack", 0.0, "extra fraction of dimensions kept, to miss the target on purpose"),)
    target_mapping = "dims = round((emb + slack) * d)"
    uses_base = True

    def compress(self, context, target):
        base = context.base().model
        k = max(1, min(base.dim, round((target.emb + self.options["slack"]) * base.dim)))
        with torch.no_grad():
            users, items = base.propagate()
        module = _Fixed(users[:, :k].clone(), items[:, :k].clone())
        parts = [ArtifactPart("users", "values", module.users.detach()),
                 ArtifactPart("items", "values", module.items.detach())]
        return CompressedModel(module, parts, graph=None, n_layers=0, settings={"dims": k})


class Raises(Method):
    axes = ("emb",)
    description = "always raises (a failing method)"

    def compress(self, context, target):
        raise RuntimeError("toy failure on purpose")


class OutOfMemory(Method):
    axes = ("emb",)
    description = "runs out of memory (as torch reports it on CPU)"

    def compress(self, context, target):
        raise MemoryError("cannot allocate 40 GiB")


class Diverges(Method):
    axes = ("emb",)
    description = "trains a model whose loss is NaN (a diverging method)"

    def compress(self, context, target):
        model = LightGCN(context.data.n_users, context.data.n_items, 4, 1, context.training_graph())
        with torch.no_grad():
            model.user_emb.fill_(float("nan"))
        context.fit(model.to(context.device), context.train_config(epochs=2))
        raise AssertionError("unreachable: training must diverge")
'''

TOY_ENTRY_POINTS = """\
[recshrink.methods]
toy-truncate = recshrink_toyplugin:TruncateBase
toy-raise = recshrink_toyplugin:Raises
toy-nan = recshrink_toyplugin:Diverges
toy-oom = recshrink_toyplugin:OutOfMemory
"""


def _build_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel of the toy plugin (no build backend needed)."""
    import base64
    import hashlib
    import zipfile

    dist = "recshrink_toyplugin-0.1.dist-info"
    files = {
        "recshrink_toyplugin/__init__.py": TOY_PLUGIN,
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: recshrink-toyplugin\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: recshrink-tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": TOY_ENTRY_POINTS,
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = folder / "recshrink_toyplugin-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="session")
def toy_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy plugin installed by pip into a folder of its own (put it on the path to use it)."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("plugin")
    wheel = _build_wheel(folder)
    target = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)], check=True)
    return target


@pytest.fixture
def toy_plugin(toy_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy plugin importable here and in worker processes, its methods registered; undone after."""
    import importlib
    import sys

    from bench import registry

    registry.load_all()  # built-ins register on first import: before the plugin is on the path
    monkeypatch.syspath_prepend(str(toy_plugin_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(toy_plugin_dir), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(registry, "_PLUGIN_ERRORS", {})
    registry.load_all(reload_plugins=True)
    yield toy_plugin_dir
    sys.modules.pop("recshrink_toyplugin", None)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


