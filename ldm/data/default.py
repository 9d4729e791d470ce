"""The dataset the first-stage configs use: your image folder when `root` is set, else the embedded sample photos."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from ldm.targets import config_target

log = logging.getLogger(__name__)

# Share of a single folder held out for validation when train and validation point at the same root.
DEFAULT_VALIDATION_FRACTION = 0.05
# Items per "epoch" of the embedded photos (they are random crops, so any length works).
SAMPLE_PHOTOS_LENGTH = {"train": 2000, "validation": 64}


# Embedded sources used when no root is given.
SOURCES = ("photos", "shapes")


@config_target
def image_dataset(root: str | None = None, size: int = 256, split: str = "train",
                  validation_fraction: float = DEFAULT_VALIDATION_FRACTION, random_crop: bool | None = None,
                  flip: bool | None = None, length: int | None = None, source: str = "photos",
                  **folder_kwargs) -> Dataset:
    """Images for autoencoder training as {"image": HWC float32 in [-1, 1]}.

    root=None, source="photos": random multi-scale crops of the photos shipped in scikit-image / scikit-learn /
    matplotlib (no download). root=None, source="shapes": the procedural shapes images (`ldm.data.shapes`), so a
    first stage can be trained on the data the text-to-image demo uses.
    root=<folder>: `ImageFolder` with random crops and flips for training, center crops for validation; when
    `validation_fraction` > 0 the folder is split deterministically so train and validation do not overlap (set it to
    0 when validation has a folder of its own).
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    training = split == "train"
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if root is None and source == "shapes":
        from ldm.data.shapes import ShapesDataset

        return ShapesDataset(size=size, split=split, **({"length": length} if length else {}))
    if root is None:
        from ldm.data.sample_photos import SamplePhotos

        if folder_kwargs:
            raise ValueError(f"{sorted(folder_kwargs)} only apply to an image folder; set `root` or remove them")
        return SamplePhotos(size=size, length=length or SAMPLE_PHOTOS_LENGTH[split], split=split,
                            flip=training if flip is None else flip)
    from ldm.data.image_folder import ImageFolder

    return ImageFolder(root, size=size, random_crop=training if random_crop is None else random_crop,
                       flip=training if flip is None else flip,
                       split=split if validation_fraction > 0 else None, validation_fraction=validation_fraction,
                       **folder_kwargs)
