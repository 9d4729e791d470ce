"""The dataset the configs use: your image folder when `root` is set, else an embedded source (the sample photos for
the autoencoders, the procedural shapes for the stage-2 configs).

A config carries the options of both: setting `root` on a stage-2 config is all it takes to train on a folder, and
the shapes-only options it also holds (`paraphrase_prob`, ...) are then unused (and the folder-only ones, such as
`missing_captions`, when it trains on the shapes). Options that apply to neither are an error."""

from __future__ import annotations

import inspect
import logging

from torch.utils.data import Dataset

from ldm.targets import config_target
from ldm.util import ConfigError

log = logging.getLogger(__name__)

# Share of a single folder held out for validation when train and validation point at the same root.
DEFAULT_VALIDATION_FRACTION = 0.05
# Items per "epoch" of the embedded photos (they are random crops, so any length works).
SAMPLE_PHOTOS_LENGTH = {"train": 2000, "validation": 64}


# Embedded sources used when no root is given.
SOURCES = ("photos", "shapes")


def _options(cls: type) -> set[str]:
    """Keyword options of `cls.__init__` that `image_dataset` does not set itself."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    return names - {"root", "size", "split", "length", "random_crop", "flip", "validation_fraction"}


def _route(options: dict, source: str, folder: set[str], shapes: set[str], mine: set[str] | None = None) -> dict:
    """The options that apply to `source` ("folder", "shapes", or "shards" with `mine`); unknown ones raise,
    others' are dropped."""
    unknown = sorted(set(options) - folder - shapes)
    if unknown:
        raise ConfigError(f"image_dataset: unknown option(s) {unknown}; folder options: {sorted(folder)}; "
                          f"shapes options: {sorted(shapes)}")
    mine = mine if mine is not None else folder if source == "folder" else shapes
    unused = sorted(k for k in options if k not in mine)
    if unused:
        log.info("image_dataset: %s not used with the %s data", ", ".join(unused), source)
    return {k: v for k, v in options.items() if k in mine}


@config_target
def image_dataset(root: str | None = None, size: int = 256, split: str = "train",
                  validation_fraction: float = DEFAULT_VALIDATION_FRACTION, random_crop: bool | None = None,
                  flip: bool | None = None, length: int | None = None, source: str = "photos",
                  shards: str | list | None = None, **options) -> Dataset:
    """Images as {"image": HWC float32 in [-1, 1], and "caption" / "class_label" where the source has them}.

    root=None, source="photos": random multi-scale crops of the photos shipped in scikit-image / scikit-learn /
    matplotlib (no download). root=None, source="shapes": the procedural shapes images with captions and class
    labels (`ldm.data.shapes`; `options` may hold its paraphrase_prob, num_objects, ...).
    root=<folder>: `ImageFolder` (captions, class sub-folders or a label column; `options` may hold its
    caption_key, missing_captions, label_key, ...) with random crops and flips for training, center crops for
    validation; when `validation_fraction` > 0 the folder is split deterministically so train and validation do not
    overlap (set it to 0 when validation has a folder of its own).
    shards=<urls>: WebDataset shards (`ldm.data.shards.ShardDataset`: a brace pattern or a list; their manifest sets
    the epoch length, so `length` is not used; `options` may hold caption_key, shuffle_buffer, manifest, ...).
    """
    from ldm.data.image_folder import ImageFolder
    from ldm.data.shapes import ShapesDataset, ShapesTrain, ShapesValidation

    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    training = split == "train"
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    folder_options, shapes_options = _options(ImageFolder), _options(ShapesDataset)
    if shards is not None:
        from ldm.data.shards import ShardDataset

        if root is not None:
            raise ConfigError("image_dataset: give `root` (a folder) or `shards`, not both")
        shard_options = _options(ShardDataset) - {"urls"}
        kwargs = _route(options, "shards", folder_options | shard_options, shapes_options, mine=shard_options)
        return ShardDataset(shards, size=size, split=split, random_crop=random_crop, flip=flip, **kwargs)
    if root is None and source == "shapes":
        kwargs = _route(options, "shapes", folder_options, shapes_options)
        shapes = ShapesTrain if training else ShapesValidation
        return shapes(size=size, **({"length": length} if length else {}), **kwargs)
    if root is None:
        from ldm.data.sample_photos import SamplePhotos

        if options:
            raise ValueError(f"{sorted(options)} only apply to an image folder; set `root` or remove them")
        return SamplePhotos(size=size, length=length or SAMPLE_PHOTOS_LENGTH[split], split=split,
                            flip=training if flip is None else flip)
    kwargs = _route(options, "folder", folder_options, shapes_options)
    return ImageFolder(root, size=size, random_crop=training if random_crop is None else random_crop,
                       flip=training if flip is None else flip,
                       split=split if validation_fraction > 0 else None, validation_fraction=validation_fraction,
                       **kwargs)
