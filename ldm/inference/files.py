"""Output files: numbered image files (`00042.png`), and atomic writes (`ldm.files.atomic_write`, re-exported)."""

from __future__ import annotations

import os
import re

from ldm.files import atomic_write

__all__ = ["atomic_write", "count_done", "next_index", "numbered_indices", "numbered_name"]


def numbered_name(index: int, digits: int = 5, ext: str = ".png", prefix: str = "") -> str:
    """`00042.png` (or `<prefix>00042.png`): the file name of output number `index`."""
    return f"{prefix}{index:0{digits}d}{ext}"


def numbered_indices(folder: str, ext: str = ".png", prefix: str = "") -> set[int]:
    """Numbers of the `<prefix><digits><ext>` files in `folder` (temporary files and other names are ignored)."""
    if not os.path.isdir(folder):
        return set()
    pattern = re.compile("^" + re.escape(prefix) + r"(\d+)" + re.escape(ext) + "$")
    return {int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m}


def next_index(folder: str, ext: str = ".png", prefix: str = "") -> int:
    """One past the highest numbered file in `folder` (0 when there is none), so new outputs never overwrite."""
    indices = numbered_indices(folder, ext, prefix)
    return max(indices) + 1 if indices else 0


def count_done(folder: str, ext: str = ".png", prefix: str = "") -> int:
    """How many outputs 0, 1, 2, ... exist without a gap: where an interrupted numbered run resumes."""
    indices = numbered_indices(folder, ext, prefix)
    n = 0
    while n in indices:
        n += 1
    return n
