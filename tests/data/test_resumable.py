"""ResumableDataLoader: order and augmentations from (seed, epoch, position); a restored loader continues mid-epoch."""

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from ldm.data.resumable import ResumableDataLoader, SeededDataset, SeededIndex, seeded_global_rngs


class Noisy(Dataset):
    """Each item draws from all three global RNGs, as random crops and flips do."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([i, torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64)


def _epoch(loader, epoch):
    loader.resumable_sampler.set_epoch(epoch)
    return [b for b in loader]


def test_same_seed_same_stream_whatever_the_workers_and_the_caller_rng():
    a = _epoch(ResumableDataLoader(Noisy(), batch_size=3, seed=5), 0)
    torch.manual_seed(123)
    b = _epoch(ResumableDataLoader(Noisy(), batch_size=3, seed=5, num_workers=2), 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 4
    c = _epoch(ResumableDataLoader(Noisy(), batch_size=3, seed=6), 0)
    assert not torch.equal(a[0], c[0])
    assert sorted(torch.cat(a)[:, 0].tolist()) == list(range(10))  # a permutation of the dataset


def test_restored_loader_continues_the_epoch_at_the_saved_batch():
    full = _epoch(ResumableDataLoader(Noisy(), batch_size=3, seed=5), 1)
    first = ResumableDataLoader(Noisy(), batch_size=3, seed=5)
    first.resumable_sampler.set_epoch(1)
    iterator = iter(first)
    taken = [next(iterator), next(iterator)]
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 2
    second = ResumableDataLoader(Noisy(), batch_size=3, seed=0)
    second.load_state_dict(state)  # takes the run's seed from the state
    rest = _epoch(second, 1)
    assert all(torch.equal(x, y) for x, y in zip(taken + rest, full)) and len(taken + rest) == len(full)
    assert len(_epoch(second, 2)) == 4  # the next epoch is whole again


def test_seeded_items_leave_the_callers_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ds = SeededDataset(Noisy())
    x = ds[SeededIndex(4, 99)]
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(ds[SeededIndex(4, 99)], x) and ds[4][0] == 4
    with seeded_global_rngs(1):
        y = torch.rand(())
    with seeded_global_rngs(1):
        assert torch.equal(torch.rand(()), y)
