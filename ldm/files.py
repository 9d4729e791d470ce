"""Atomic file writes (temporary name in the same folder, fsync, then rename): the one copy of that logic."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> str:
    """Call `write(f)` on a hidden temporary file next to `path`, fsync, then rename it to `path`; returns `path`.

    A killed process leaves at most a `.name.*.tmp` file behind, never a torn `path`; on an exception the temporary
    file is removed and an existing `path` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
