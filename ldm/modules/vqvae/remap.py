"""Codebook index remapping to a subset of "used" codes, with the original VectorQuantizer2 semantics.

`remap` names a .npy file holding the used code indices. Indices are mapped to their position in that list
(`remap_to_used`); codes not in the list become `unknown_index` ("random": a random used position, "extra": one extra
token `len(used)`, or a fixed int). `unmap_to_all` maps positions back to codebook indices (the extra token maps to
`used[0]`). Unlike the original, lookups go through a table of size n_e instead of an (N x n_used) match matrix, and
unknown codes are filled with `torch.where` so nothing syncs with the host.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def load_used_indices(path: str) -> torch.Tensor:
    """Load the 1-D integer array of used code indices from a .npy file (no pickle), as a long tensor."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VectorQuantizer remap file not found: {path}")
    try:
        used = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"VectorQuantizer remap file {path} is not a readable .npy array: {err}") from err
    if used.ndim != 1 or used.size == 0 or not np.issubdtype(used.dtype, np.integer):
        raise ValueError(f"VectorQuantizer remap file {path} must hold a non-empty 1-D integer array of code "
                         f"indices; got dtype {used.dtype} and shape {used.shape}")
    if (used < 0).any():
        raise ValueError(f"VectorQuantizer remap file {path} contains negative code indices")
    return torch.from_numpy(used.astype(np.int64))


def resolve_unknown_index(unknown_index: str | int, n_used: int) -> tuple[str | int, int]:
    """Return (unknown_index, re_embed) as the original: "extra" becomes n_used and adds one token to re_embed."""
    if unknown_index == "extra":
        return n_used, n_used + 1
    if unknown_index == "random":
        return "random", n_used
    if isinstance(unknown_index, (int, np.integer)) and not isinstance(unknown_index, bool):
        return int(unknown_index), n_used
    raise ValueError(f"unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}")


def build_inverse_table(used: torch.Tensor, size: int) -> torch.Tensor:
    """Table t of length `size` with t[code] = first position of `code` in `used`, or -1 where the code is unused."""
    size = max(size, int(used.max()) + 1)
    positions = torch.arange(used.numel(), dtype=torch.long)
    table = torch.full((size,), used.numel(), dtype=torch.long)
    # amin keeps the first occurrence of a duplicated code, as the original's argmax over matches does.
    table.scatter_reduce_(0, used.long(), positions, reduce="amin")
    return torch.where(table == used.numel(), torch.full_like(table, -1), table)


def remap_to_used(inds: torch.Tensor, table: torch.Tensor, unknown_index: str | int, re_embed: int) -> torch.Tensor:
    """Map codebook indices to positions in the used list; unknown codes get `unknown_index` (shape is kept)."""
    table = table.to(inds.device)
    in_range = (inds >= 0) & (inds < table.numel())
    new = table[inds.clamp(0, table.numel() - 1)]
    unknown = ~in_range | (new < 0)
    if unknown_index == "random":
        fill = torch.randint(0, re_embed, inds.shape, device=inds.device)
    else:
        fill = torch.full_like(new, int(unknown_index))
    return torch.where(unknown, fill, new)


def unmap_to_all(inds: torch.Tensor, used: torch.Tensor, re_embed: int) -> torch.Tensor:
    """Map positions in the used list back to codebook indices; the extra token (if any) maps to used[0]."""
    used = used.to(inds.device)
    if re_embed > used.numel():
        inds = torch.where(inds >= used.numel(), torch.zeros_like(inds), inds)
    return used[inds]
