"""A training DataLoader that can stop mid-epoch and continue with exactly the batches an uninterrupted run gets.

Three pieces make the data stream a function of (seed, epoch, position) only:

- `ResumableSampler`: the epoch's order is a permutation drawn from `seed + epoch` (as DistributedSampler does, and
  it is one, so Lightning leaves it alone under DDP and calls `set_epoch`), split by rank; it can start at a position.
- `SeededDataset`: every item is produced under global RNGs (torch CPU, numpy, random) seeded from (seed, epoch,
  rank, position), so random crops and flips do not depend on which worker made the item or on what ran before;
  the caller's RNG state is restored afterwards.
- `ResumableDataLoader`: Lightning's stateful-loader protocol (`state_dict` / `load_state_dict`, saved in the
  checkpoint under the fit loop): it records the epoch and how many batches it handed out, and a restored loader
  skips those samples in the sampler (no data is loaded for them).

Iterable (streaming) datasets order themselves and are not covered: they restart their stream on resume.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SeededIndex(NamedTuple):
    """What ResumableSampler yields: the dataset index and the seed the item is made with."""

    index: int
    seed: int


def run_seed() -> int:
    """The seed of `pl.seed_everything` (main.py's -s/--seed), 0 if none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0) or 0)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), e.g. (seed, epoch, rank, position)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Run the body with torch (CPU), numpy and `random` seeded from `seed`; restore the previous states after."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)  # CPU only: items are made on the CPU; CUDA is left alone
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle by `seed + epoch`, split by rank; rank and world size read when it is built)
    that yields `SeededIndex` items and can skip the first `start` samples of this rank's share once."""

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0):
        world, rank = _world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0
        self.epoch_offset = 0  # this run's data epoch minus Lightning's epoch counter (see ResumableDataLoader)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch + self.epoch_offset)

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        for position in range(start, len(indices)):
            yield SeededIndex(indices[position], derived_seed(self.seed, self.epoch, self.rank, position))


class SeededDataset(Dataset):
    """Wraps a map-style dataset: `ds[SeededIndex(i, s)]` is `dataset[i]` made under RNGs seeded with `s`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, SeededIndex):
            with seeded_global_rngs(item.seed):
                return self.dataset[item.index]
        return self.dataset[item]

    def __getattr__(self, name: str) -> Any:  # dataset attributes (e.g. skipped-file counters) stay reachable
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDataLoader(DataLoader):
    """DataLoader over `SeededDataset(dataset)` with a `ResumableSampler`, stateful in Lightning's sense."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs: Any):
        self.resumable_sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed)
        super().__init__(SeededDataset(dataset), batch_size=batch_size, sampler=self.resumable_sampler, **kwargs)
        self._batches_out = 0
        self._pending: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.resumable_sampler
        self._batches_out = 0
        pending, self._pending = self._pending, None
        if pending is not None:
            # The data epoch follows the checkpoint, not Lightning's counter: resumed right at the end of an epoch,
            # Lightning sometimes counts one epoch more (when validation was not due), which would change the order.
            saved, done = int(pending["epoch"]), int(pending["batches"])
            epoch, skip = (saved + 1, 0) if done >= len(self) else (saved, done)
            sampler.epoch_offset += epoch - sampler.epoch
            sampler.epoch = epoch
            self._batches_out = skip
            self._skip(skip)
        for batch in super().__iter__():
            self._batches_out += 1
            yield batch

    def _skip(self, batches: int) -> None:
        """Make the sampler start after the first `batches` batches of its epoch (once)."""
        self.resumable_sampler.start = batches * int(self.batch_size or 1)

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches handed out in it (Lightning saves this with the fit loop)."""
        sampler = self.resumable_sampler
        return {"epoch": int(sampler.epoch), "batches": int(self._batches_out), "seed": int(sampler.seed),
                "world_size": int(sampler.num_replicas)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch at the saved batch when the loader is next iterated."""
        sampler = self.resumable_sampler
        if int(state.get("world_size", sampler.num_replicas)) != sampler.num_replicas:
            import warnings

            warnings.warn(f"the checkpoint was written with {state['world_size']} data-parallel ranks, this run has "
                          f"{sampler.num_replicas}: the interrupted epoch restarts with a new split", stacklevel=2)
            return
        sampler.seed = int(state.get("seed", sampler.seed))  # the run's order continues, whatever -s says now
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
