"""Aspect-ratio buckets over WebDataset shards: one shape per batch, equal batch counts per rank and worker, disjoint
ranks, through the data module and a DataLoader with workers."""
import io
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

import ldm.data.shards as shards
from ldm.data.buckets import batches_by_shape, make_buckets
from ldm.data.datamodule import DataModuleFromConfig
from ldm.data.shards import ShardDataset, write_manifest
from ldm.util import ConfigError

from shard_helpers import tar_bytes  # noqa: E402  (tests/data/conftest.py puts it on the path)

BUCKETS = {"pixels": 2304, "multiple": 16, "max_ratio": 2.0}  # (32, 64), (48, 48), (64, 32), ...
SIZES = [(40, 80), (80, 40), (60, 60), (42, 90), (90, 44), (64, 64), (50, 100), (100, 50), (70, 70), (33, 66),
         (66, 33), (45, 45), (40, 81)]


def image_bytes(h, w, k):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def mixed(tmp_path):
    """13 images of three aspect ratios (portrait, square, landscape) with captions, in shards of 4 (+ manifest)."""
    counts = {}
    for s in range(0, len(SIZES), 4):
        members = []
        for k in range(s, min(s + 4, len(SIZES))):
            members += [(f"{k:03d}.png", image_bytes(*SIZES[k], k)), (f"{k:03d}.txt", f"image {k}".encode())]
        name = f"{s // 4:06d}.tar"
        (tmp_path / name).write_bytes(tar_bytes(members))
        counts[name] = len(members) // 2
    write_manifest(str(tmp_path / "manifest.json"), counts)
    return [str(tmp_path / n) for n in counts]


def keys(batches):
    return [p.rsplit("#", 1)[1] for b in batches for p in b["file_path_"]]


def test_batches_by_shape_exact_count_and_one_shape_each():
    shapes = [(2, 4), (4, 2), (3, 3)]
    stream = [{"image": np.zeros(shapes[k % 3] + (3,), np.float32), "i": k} for k in range(11)]
    out = list(batches_by_shape(stream, n_batches=11 // 3, batch_size=3))
    assert len(out) == 3
    for batch in out:
        assert len({tuple(x.shape) for x in batch["image"]}) == 1
    # the full batches come first; leftovers (largest first) make up the rest when the stream ends
    assert [len(b["i"]) for b in out] == [3, 3, 3]
    assert list(batches_by_shape(stream[:2], 0, 3)) == []
    short = list(batches_by_shape(stream[:5], n_batches=5 // 2, batch_size=2))
    assert [len(b["i"]) for b in short] == [2, 2]


def test_each_item_gets_its_bucket_and_batches_have_one_shape(mixed):
    ds = ShardDataset(mixed, size=32, buckets=BUCKETS, shuffle_buffer=4, seed=1)
    assert ds.bucket_sizes == make_buckets(2304, 16)
    shapes = {tuple(ex["image"].shape[:2]) for ex in ds}
    assert shapes == {(32, 64), (64, 32), (48, 48)}
    ds.batch_by_bucket(batch_size=3, num_workers=1)
    batches = list(ds)
    assert len(batches) == len(ds) == 13 // 3
    for batch in batches:
        assert batch["image"].ndim == 4 and len({tuple(x.shape) for x in batch["image"]}) == 1
        assert len(batch["caption"]) == batch["image"].shape[0]
    seen = keys(batches)
    assert len(seen) == len(set(seen)) >= 3 * 3  # no repeats; at most batch_size - 1 per bucket left over


@pytest.mark.parametrize("workers", [1, 2])
def test_two_ranks_get_equal_batch_counts_and_disjoint_samples(mixed, monkeypatch, workers):
    per_rank = []
    for rank in range(2):
        got = []
        for worker in range(workers):
            monkeypatch.setattr(shards, "get_worker_info",
                                lambda w=worker: SimpleNamespace(id=w, num_workers=workers))
            ds = ShardDataset(mixed, size=32, buckets=BUCKETS, shuffle_buffer=4, seed=3, rank=rank, world_size=2)
            ds.batch_by_bucket(batch_size=2, num_workers=workers)
            ds.set_epoch(0)
            got += list(ds)
        assert len(got) == len(ds)  # what Lightning counts as the epoch
        per_rank.append(got)
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    a, b = set(keys(per_rank[0])), set(keys(per_rank[1]))
    assert not a & b
    assert len(keys(per_rank[0])) == len(a)


def test_datamodule_and_workers_train_on_bucketed_shards(mixed, tmp_path):
    train = {"target": "ldm.data.default.image_dataset",
             "params": {"shards": mixed, "size": 32, "buckets": BUCKETS, "shuffle_buffer": 4}}
    data = DataModuleFromConfig(batch_size=2, train=train, num_workers=2)
    data.setup("fit")
    loader = data.train_dataloader()
    assert loader.batch_size is None  # the dataset hands over whole batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert len(batches) == len(loader) == 6 // 2 + 7 // 2  # 13 samples: 6 + 7 per worker
    for batch in batches:
        assert len({tuple(x.shape) for x in batch["image"]}) == 1 and batch["image"].shape[0] <= 2
    seen = keys(batches)
    assert len(seen) == len(set(seen))  # no sample twice: the two workers read disjoint ranges


def test_too_few_samples_for_one_bucket_batch_is_a_clear_error(mixed):
    ds = ShardDataset(mixed[:1], size=32, buckets=BUCKETS)
    with pytest.raises(ConfigError, match=r"4 samples per rank, split over 2 DataLoader worker\(s\), do not make one "
                                          r"bucket batch of 3"):
        ds.batch_by_bucket(batch_size=3, num_workers=2)
    with pytest.raises(ValueError, match="needs `buckets`"):
        ShardDataset(mixed, size=32).batch_by_bucket(2, 1)


def test_worker_count_must_match(mixed):
    ds = ShardDataset(mixed, size=32, buckets=BUCKETS)
    ds.batch_by_bucket(batch_size=2, num_workers=2)
    with pytest.raises(RuntimeError, match="told 2 DataLoader worker"):
        next(iter(DataLoader(ds, batch_size=None, num_workers=0)))
