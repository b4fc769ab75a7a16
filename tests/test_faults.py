"""Fault injection: what recshrink does when the disk, the store or a process fails.

Each test sets up one fault and checks that nothing already computed is lost and that the message
names the problem.
"""

from __future__ import annotations

import errno

import pytest
import torch

from bench import context
from tests.helpers import method_context


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
