"""Tests for the shared skip counter and for reading skip counts through dataset wrappers."""
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from ldm.data.skipped_images import SkipCounter, skipped_count
from ldm.data.datamodule import WrappedDataset
from ldm.data.image_folder import ImageFolder


def test_skip_counter_marks_once():
    counter = SkipCounter(5)
    assert len(counter) == 5 and counter.count == 0
    assert counter.mark(3) is True
    assert counter.mark(3) is False
    assert counter.mark(0) is True
    assert counter.is_marked(3) and not counter.is_marked(1)
    assert counter.count == 2 and counter.indices() == [0, 3]
    assert counter.flags.is_shared()


def test_skipped_count_unwraps(bad_tree):
    ds = ImageFolder(bad_tree, size=8)
    ds._skips.mark(1)
    assert skipped_count(ds) == 1
    assert skipped_count(Subset(ds, [0])) == 1
    assert skipped_count(WrappedDataset(ds)) == 1
    assert skipped_count(ConcatDataset([ds, Subset(ds, [0])])) == 2
    assert skipped_count(WrappedDataset([1, 2])) is None
    assert skipped_count(None) is None


def test_count_survives_spawned_worker(bad_tree):
    ds = ImageFolder(bad_tree, size=8)
    batches = list(DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn"))
    assert batches[0]["image"].shape == (4, 8, 8, 3) and torch.isfinite(batches[0]["image"]).all()
    assert ds.num_skipped == 2
