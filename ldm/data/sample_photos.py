"""The default dataset that needs no download: random multi-scale square crops of the natural photos that ship inside
installed packages (scikit-image, scikit-learn, matplotlib)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.transforms import resized_crop, to_float_array, torch_seeded_rng


def _skimage(name: str) -> Callable[[], np.ndarray]:
    """Loader of one bundled scikit-image photo."""
    def load() -> np.ndarray:
        import skimage.data
        return getattr(skimage.data, name)()
    return load


def _motorcycle(view: int) -> Callable[[], np.ndarray]:
    """Loader of one view (0 left, 1 right) of scikit-image's stereo pair."""
    def load() -> np.ndarray:
        import skimage.data
        return skimage.data.stereo_motorcycle()[view]
    return load


def _sklearn(file_name: str) -> Callable[[], np.ndarray]:
    """Loader of one of scikit-learn's two sample images."""
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image
        return load_sample_image(file_name)
    return load


def _grace_hopper() -> Image.Image:
    """matplotlib's bundled portrait of Grace Hopper."""
    from matplotlib import cbook
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return img.convert("RGB")


# The photos, by name. All ship inside the packages (no download); each has a shorter side of at least 300 px.
PHOTO_LOADERS: dict[str, Callable[[], np.ndarray | Image.Image]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}
# Held out of training so validation measures generalisation to unseen photos: a cat and a cup of coffee, whose
# content no training photo shares (the two stereo views are near duplicates, so both stay in training).
VALIDATION_PHOTOS = ("chelsea", "coffee")
TRAIN_PHOTOS = tuple(name for name in PHOTO_LOADERS if name not in VALIDATION_PHOTOS)
SPLIT_PHOTOS = {"train": TRAIN_PHOTOS, "validation": VALIDATION_PHOTOS, "val": VALIDATION_PHOTOS,
                "all": tuple(PHOTO_LOADERS)}


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> Image.Image | None:
    """One bundled photo as an RGB PIL image, cached per process; None (with a warning) when its package fails."""
    if name not in PHOTO_LOADERS:
        raise ValueError(f"unknown sample photo '{name}'; available: {', '.join(PHOTO_LOADERS)}")
    try:
        photo = PHOTO_LOADERS[name]()
        if isinstance(photo, np.ndarray):
            photo = Image.fromarray(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
        return photo.convert("RGB")
    except Exception as err:  # a missing package, a data file that would need a download, ...
        warnings.warn(f"sample photo '{name}' is unavailable and is skipped: {type(err).__name__}: {err}",
                      stacklevel=2)
        return None


class SamplePhotos(Dataset):
    """`length` square crops of the bundled photos resized to `size` x `size`, as {"image": HWC float32 in [-1, 1]}.

    Crop sides are log-uniform between `min_crop_fraction` and `max_crop_fraction` of the photo's shorter side (never
    fewer than `size` source pixels, so crops are not upsampled), at a uniform position, flipped half the time when
    `flip`. Item i comes from photo i mod (number of photos). Split "train" uses TRAIN_PHOTOS with fresh random crops
    each time an item is read; "validation" uses the held-out VALIDATION_PHOTOS with crops fixed by (`seed`, index).
    `photos` overrides the split's photo list; `fixed_crops` overrides the per-split default.
    """

    def __init__(self, size: int = 64, length: int = 2000, split: str = "train", min_crop_fraction: float = 0.2,
                 max_crop_fraction: float = 1.0, flip: bool = True, seed: int = 0,
                 photos: Sequence[str] | None = None, fixed_crops: bool | None = None,
                 interpolation: str = "bicubic"):
        if split not in SPLIT_PHOTOS:
            raise ValueError(f"split must be one of {', '.join(SPLIT_PHOTOS)}, got {split!r}")
        if int(size) <= 0 or int(length) <= 0:
            raise ValueError(f"size and length must be positive, got size={size}, length={length}")
        if not 0.0 < min_crop_fraction <= max_crop_fraction <= 1.0:
            raise ValueError("need 0 < min_crop_fraction <= max_crop_fraction <= 1, got "
                             f"{min_crop_fraction}, {max_crop_fraction}")
        self.size = int(size)
        self.length = int(length)
        self.split = "validation" if split == "val" else split
        self.min_crop_fraction = float(min_crop_fraction)
        self.max_crop_fraction = float(max_crop_fraction)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.fixed_crops = (self.split != "train") if fixed_crops is None else bool(fixed_crops)
        self.interpolation = interpolation

        wanted = tuple(photos) if photos is not None else SPLIT_PHOTOS[split]
        loaded = [(name, load_photo(name)) for name in wanted]
        self.photo_names = [name for name, img in loaded if img is not None]
        self._photos = [img for _, img in loaded if img is not None]
        if not self._photos:
            raise RuntimeError(f"none of the sample photos {', '.join(wanted)} could be loaded; install "
                               "scikit-image, scikit-learn and matplotlib, or use another dataset")

    def __len__(self) -> int:
        return self.length

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """A square source box: log-uniform side within the crop fractions, uniform position."""
        short = min(width, height)
        lo = max(self.min_crop_fraction * short, min(self.size, short))
        hi = max(lo, self.max_crop_fraction * short)
        side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        x = rng.uniform(0.0, width - side)
        y = rng.uniform(0.0, height - side)
        return (x, y, x + side, y + side)

    def __getitem__(self, index: int) -> dict:
        """Crop number `index` (random, or fixed by (seed, index) for validation)."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} crops")
        index %= self.length
        rng = np.random.default_rng((self.seed, index)) if self.fixed_crops else torch_seeded_rng()
        photo = self._photos[index % len(self._photos)]
        crop = resized_crop(photo, self.crop_box(*photo.size, rng), self.size, self.interpolation)
        if self.flip and rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"image": to_float_array(crop)}

    def __repr__(self) -> str:
        return (f"SamplePhotos(split={self.split}, size={self.size}, length={self.length}, "
                f"photos={self.photo_names}, fixed_crops={self.fixed_crops})")
