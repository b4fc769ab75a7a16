"""Writing files so that a reader never sees a partial one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader sees the old file or the new one, never a truncated one; a failed write (a full disk)
    removes the temporary file and re-raises, leaving any old file as it was. The temporary name
    keeps ``path``'s suffix (``numpy.savez`` appends ``.npz`` to a name without it) and the process
    id (concurrent writers do not share one).
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
