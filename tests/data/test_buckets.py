"""Tests for aspect-ratio buckets: sizes, assignment, the DDP-aware resumable sampler, ImageFolder and DataModule."""
import math
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.buckets import (BucketBatchSampler, BucketDataLoader, check_bucket_multiple, make_buckets,
                              nearest_bucket)
from ldm.data.skipped_images import BadImageWarning
from ldm.data.datamodule import DataModuleFromConfig
from ldm.data.image_folder import ImageFolder
from ldm.util import ConfigError


def test_make_buckets():
    buckets = make_buckets(65536, 64, max_ratio=2.0)
    assert buckets == sorted(set(buckets)) and (256, 256) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0 and 0.9 * 65536 <= h * w <= 65536
        assert 0.5 <= w / h <= 2.0
    assert buckets == [(192, 320), (256, 256), (320, 192)]
    fine = make_buckets(65536, 32)
    assert max(w / h for h, w in fine) <= 2.0 and len(fine) > 3
    assert all((w, h) in fine for h, w in fine)  # portrait and landscape alike
    with pytest.raises(ValueError, match="pixels"):
        make_buckets(100, 64)


def test_nearest_bucket_compares_log_ratios():
    buckets = [(128, 256), (192, 192), (256, 128)]
    assert nearest_bucket(100, 210, buckets) == 0
    assert nearest_bucket(300, 290, buckets) == 1
    assert nearest_bucket(400, 190, buckets) == 2
    # 1:1.41 is as far (in log) from 1:1 as from 1:2; tie goes to the first
    assert nearest_bucket(100, round(100 * math.sqrt(2)), buckets) in (0, 1)


def test_check_bucket_multiple():
    check_bucket_multiple([(64, 128)], 64)
    with pytest.raises(ConfigError, match="multiple"):
        check_bucket_multiple([(64, 96)], 64)


def _ids(n=23):
    return [i % 3 if i < 20 else 2 for i in range(n)]  # three buckets of different sizes


def _batches(sampler):
    return [[s.index for s in batch] for batch in sampler]


def test_sampler_two_ranks_equal_disjoint_one_bucket():
    ids = _ids()
    ranks = [BucketBatchSampler(ids, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    out = [_batches(s) for s in ranks]
    assert len(out[0]) == len(out[1]) == len(ranks[0]) == len(ranks[1]) > 0
    items = [[i for b in batches for i in b] for batches in out]
    assert not set(items[0]) & set(items[1])
    assert len(items[0]) == len(set(items[0]))
    for batches in out:
        assert all(len({ids[i] for i in b}) == 1 and 1 <= len(b) <= 3 for b in batches)


def test_sampler_deterministic_per_seed_and_epoch():
    ids = _ids()
    a, b = BucketBatchSampler(ids, 3, seed=1, rank=0, world_size=1), BucketBatchSampler(ids, 3, seed=1, rank=0,
                                                                                        world_size=1)
    assert _batches(a) == _batches(b)
    first = list(a)
    a.set_epoch(1)
    assert _batches(a) != [[s.index for s in batch] for batch in first]
    seeds = [s.seed for batch in first for s in batch]
    assert len(set(seeds)) == len(seeds)  # per-item seeds for SeededDataset


class Folderish:
    """A tiny bucketed dataset: item i is its index, bucket i % 2."""

    bucket_sizes = [(2, 4), (4, 2)]

    def __len__(self):
        return 10

    def bucket_of(self, i):
        return i % 2

    def __getitem__(self, i):
        return {"i": i, "r": float(np.random.rand())}


def test_loader_resumes_mid_epoch():
    full = BucketDataLoader(Folderish(), batch_size=2, seed=3)
    full.resumable_sampler.set_epoch(0)
    reference = list(full)
    loader = BucketDataLoader(Folderish(), batch_size=2, seed=3)
    loader.resumable_sampler.set_epoch(0)
    it = iter(loader)
    seen = [next(it), next(it)]
    state = loader.state_dict()
    assert state["batches"] == 2 and state["epoch"] == 0
    resumed = BucketDataLoader(Folderish(), batch_size=2, seed=0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    got = seen + rest
    assert len(got) == len(reference) == len(loader)
    for x, y in zip(got, reference):
        assert x["i"].tolist() == y["i"].tolist()
        assert x["r"].tolist() == y["r"].tolist()  # the same per-item RNG


def _folder(tmp_path, sizes=((40, 80), (80, 40), (60, 60), (42, 90), (90, 44), (64, 64))):
    root = tmp_path / "imgs"
    root.mkdir()
    for k, (h, w) in enumerate(sizes):
        arr = np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{k}.png")
    return root


BUCKETS = {"pixels": 2304, "multiple": 16, "max_ratio": 2.0}


def test_image_folder_with_buckets(tmp_path):
    root = _folder(tmp_path)
    ds = ImageFolder(root, size=32, random_crop=True, buckets=BUCKETS)
    assert ds.bucket_sizes == make_buckets(2304, 16)
    for i in range(len(ds)):
        h, w = ds.bucket_sizes[ds.bucket_of(i)]
        assert ds[i]["image"].shape == (h, w, 3)
    shapes = {ds[i]["image"].shape[:2] for i in range(len(ds))}
    assert shapes == {(32, 64), (64, 32), (48, 48)}
    explicit = ImageFolder(root, size=32, buckets=[[16, 32], [32, 16]])
    assert explicit.bucket_sizes == [(16, 32), (32, 16)]
    assert ImageFolder(root, size=32)[0]["image"].shape == (32, 32, 3)  # no buckets: today's squares


def test_datamodule_over_bucketed_folder(tmp_path):
    root = _folder(tmp_path)
    cfg = OmegaConf.create({"batch_size": 2, "num_workers": 0, "train": {
        "target": "ldm.data.default.image_dataset",
        "params": {"root": str(root), "size": 32, "validation_fraction": 0}}})
    cfg.validation = {"target": "ldm.data.default.image_dataset",
                      "params": {"root": str(root), "size": 32, "validation_fraction": 0, "split": "validation"}}
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(
        ["train.params.buckets.pixels=2304", "train.params.buckets.multiple=16",
         "validation.params.buckets=[[32,64],[48,48],[64,32]]"]))
    dm = DataModuleFromConfig(**cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, BucketDataLoader)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        assert batch["image"].ndim == 4 and batch["image"].shape[-1] == 3
        assert len(batch["file_path_"]) == batch["image"].shape[0]
    val = list(dm.val_dataloader())
    assert sum(len(b["file_path_"]) for b in val) == 6  # one rank: nothing dropped
    assert {tuple(b["image"].shape[1:3]) for b in val} == {(32, 64), (48, 48), (64, 32)}


def test_unreadable_image_in_a_bucket_is_replaced_at_that_bucket_size(tmp_path):
    root = _folder(tmp_path, sizes=((64, 64), (64, 128)))
    (root / "0b.png").write_bytes(b"not an image")  # its replacement is the next readable image, 1.png: wide
    ds = ImageFolder(root, size=64, buckets=[[64, 64], [64, 128]])
    bad = ds.paths.index("0b.png")
    with pytest.warns(BadImageWarning):
        item = ds[bad]
    assert item["image"].shape[:2] == ds.bucket_sizes[ds.bucket_of(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        for batch in BucketDataLoader(ds, batch_size=2, shuffle=False):
            assert len({tuple(x.shape) for x in batch["image"]}) == 1
