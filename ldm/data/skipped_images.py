"""Images a dataset had to skip: the bad-file warning, and a skip count that survives DataLoader workers."""

from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was skipped (the message names the file)."""


class SkipCounter:
    """Per-item 'unreadable' flags in shared memory, read the same from the main process and every worker.

    A DataLoader worker is a separate process, so a plain int attribute incremented there is lost. The flags live in a
    shared-memory uint8 tensor: forked workers write to the same pages and spawned workers receive it through torch's
    shared-memory pickling. Flagging is idempotent, so the count is of distinct files and needs no lock.
    """

    def __init__(self, n: int):
        self.flags = torch.zeros(max(int(n), 0), dtype=torch.uint8).share_memory_()

    def mark(self, index: int) -> bool:
        """Flag item `index` as unreadable; True when it was not flagged before (so the caller warns once)."""
        was = bool(self.flags[index])
        self.flags[index] = 1
        return not was

    def is_marked(self, index: int) -> bool:
        """Whether item `index` is known to be unreadable."""
        return bool(self.flags[index])

    @property
    def count(self) -> int:
        """Number of distinct items flagged so far, across all processes sharing the flags."""
        return int(self.flags.sum())

    def indices(self) -> list[int]:
        """Indices of the flagged items, ascending."""
        return torch.nonzero(self.flags, as_tuple=False).flatten().tolist()

    def __len__(self) -> int:
        return int(self.flags.numel())


def skipped_count(dataset: Dataset | None) -> int | None:
    """Unreadable files skipped by `dataset` (looking through Subset / ConcatDataset / WrappedDataset); None if untracked."""
    if dataset is None:
        return None
    count = getattr(dataset, "num_skipped", None)
    if count is not None:
        return int(count)
    if isinstance(dataset, Subset):
        return skipped_count(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        counts = [skipped_count(d) for d in dataset.datasets]
        counts = [c for c in counts if c is not None]
        return sum(counts) if counts else None
    inner = getattr(dataset, "data", None)  # WrappedDataset
    if isinstance(inner, Dataset):
        return skipped_count(inner)
    return None
