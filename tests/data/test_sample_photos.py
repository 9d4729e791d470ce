"""Tests for SamplePhotos: crops of the photos bundled in installed packages."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data import sample_photos
from ldm.data.sample_photos import PHOTO_LOADERS, TRAIN_PHOTOS, VALIDATION_PHOTOS, SamplePhotos, load_photo


def test_all_bundled_photos_load():
    for name in PHOTO_LOADERS:
        photo = load_photo(name)
        assert photo is not None and photo.mode == "RGB" and min(photo.size) >= 300, name


def test_shape_range_and_variety():
    ds = SamplePhotos(size=32, length=20)
    assert len(ds) == 20 and ds.photo_names == list(TRAIN_PHOTOS)
    items = [ds[i]["image"] for i in range(len(ds))]
    for image in items:
        assert image.shape == (32, 32, 3) and image.dtype == np.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
    assert len({x.tobytes() for x in items}) == len(items)
    assert np.std([x.mean() for x in items]) > 0.02  # different content, not one flat colour
    # train crops are fresh every read
    assert not np.array_equal(ds[0]["image"], ds[0]["image"])
    with pytest.raises(IndexError):
        ds[20]


def test_validation_is_deterministic_and_held_out():
    a = SamplePhotos(size=32, length=6, split="validation")
    b = SamplePhotos(size=32, length=6, split="val")
    assert a.photo_names == list(VALIDATION_PHOTOS)
    assert not set(VALIDATION_PHOTOS) & set(TRAIN_PHOTOS)
    for i in range(6):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        np.testing.assert_array_equal(a[i]["image"], a[i]["image"])
    assert not np.array_equal(a[0]["image"], a[2]["image"])  # same photo, different crop
    c = SamplePhotos(size=32, length=6, split="validation", seed=1)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_crop_scales_follow_fractions():
    ds = SamplePhotos(size=16, photos=["astronaut"], min_crop_fraction=0.1, max_crop_fraction=0.5)
    rng = np.random.default_rng(0)
    sides = []
    for _ in range(200):
        x0, y0, x1, y1 = ds.crop_box(512, 512, rng)
        assert x1 - x0 == pytest.approx(y1 - y0)
        assert 0 <= x0 and x1 <= 512 and 0 <= y0 and y1 <= 512
        sides.append(x1 - x0)
    assert 51.2 - 1e-6 <= min(sides) and max(sides) <= 256 + 1e-6
    assert max(sides) / min(sides) > 3  # multi-scale
    # never fewer source pixels than output pixels
    big = SamplePhotos(size=128, photos=["astronaut"], min_crop_fraction=0.01)
    boxes = [big.crop_box(512, 512, rng) for _ in range(50)]
    assert min(b[2] - b[0] for b in boxes) >= 128 - 1e-6


def test_workers_draw_different_crops():
    ds = SamplePhotos(size=16, length=4, photos=["astronaut"], flip=False)
    torch.manual_seed(0)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (4, 16, 16, 3) and images.dtype == torch.float32
    assert len({img.numpy().tobytes() for img in images}) == 4


def test_unavailable_source_is_skipped_and_none_is_an_error(monkeypatch):
    def broken():
        raise OSError("needs a download")

    monkeypatch.setitem(PHOTO_LOADERS, "broken_photo", broken)
    sample_photos.load_photo.cache_clear()
    try:
        with pytest.warns(UserWarning, match="broken_photo"):
            ds = SamplePhotos(size=8, photos=["broken_photo", "chelsea"])
        assert ds.photo_names == ["chelsea"]
        with pytest.raises(RuntimeError, match="broken_photo"):
            SamplePhotos(size=8, photos=["broken_photo"])
    finally:
        sample_photos.load_photo.cache_clear()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SamplePhotos(split="test")
    with pytest.raises(ValueError, match="crop_fraction"):
        SamplePhotos(min_crop_fraction=0.8, max_crop_fraction=0.5)
    with pytest.raises(ValueError, match="unknown sample photo"):
        SamplePhotos(photos=["lena"])
