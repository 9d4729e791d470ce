"""Inpainting and super-resolution data: any image dataset, with the task's batch keys added to every item.

The base images come from `dataset` (any `{target, params}` config whose items have `image` HWC float32 in [-1, 1]:
`ldm.data.image_folder.ImageFolder`, `ldm.data.shapes.ShapesTrain`, ...) or, when it is not given, from
`ldm.data.default.image_dataset(root, size, split, ...)`: your folder when `root` is set, else the embedded photos
(or `source: shapes`). Training items draw fresh masks / degradations every time they are read; validation items are
fixed by (`seed`, index), so every validation run sees the same inputs (`fixed` overrides this).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ldm.data.degradation import LR_KEY, Degradation
from ldm.data.masks import MASK_KEY, MASKED_IMAGE_KEY, MixedMasks, apply_mask
from ldm.data.transforms import torch_seeded_rng
from ldm.util import instantiate_from_config

IMAGE_KEY = "image"


class TaskDataset(Dataset):
    """Base of the task datasets: builds the image dataset, draws a generator per item, calls `add_keys`."""

    def __init__(self, dataset: Any = None, root: str | None = None, size: int = 256, split: str = "train",
                 seed: int = 0, fixed: bool | None = None, **image_kwargs: Any):
        if dataset is not None:
            if root is not None or image_kwargs:
                raise ValueError(f"give either `dataset` (a {{target, params}} config) or the image_dataset "
                                 f"arguments (root, {', '.join(sorted(image_kwargs)) or 'source, ...'}), not both")
            self.data = instantiate_from_config(dataset, key_path=f"data.params.{split}.params.dataset")
        else:
            from ldm.data.default import image_dataset

            self.data = image_dataset(root=root, size=size, split=split, **image_kwargs)
        self.split = split
        self.seed = int(seed)
        self.fixed = (split != "train") if fixed is None else bool(fixed)

    def __len__(self) -> int:
        return len(self.data)

    def rng(self, index: int) -> np.random.Generator:
        """The item's generator: fixed by (seed, index), or fresh from torch's per-worker RNG when training."""
        return np.random.default_rng([self.seed, int(index)]) if self.fixed else torch_seeded_rng()

    def add_keys(self, item: dict[str, Any], rng: np.random.Generator) -> None:
        """Add the task's keys to `item` in place."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.data[index])
        if IMAGE_KEY not in item:
            raise KeyError(f"{type(self.data).__name__} items have no '{IMAGE_KEY}' key (keys: {sorted(item)})")
        item[IMAGE_KEY] = np.asarray(item[IMAGE_KEY], dtype=np.float32)
        self.add_keys(item, self.rng(index))
        return item


class InpaintingDataset(TaskDataset):
    """Adds `mask` (H, W, 1) float32, 1 in the hole, and `masked_image` = (1 - mask) * image (HWC in [-1, 1]).

    `mask_config` is a `{target, params}` mask maker from `ldm.data.masks` (default: MixedMasks, boxes or strokes).
    """

    def __init__(self, mask_config: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if mask_config is None:
            self.masks = MixedMasks()
        else:
            self.masks = instantiate_from_config(mask_config, key_path=f"data.params.{self.split}.params.mask_config")

    def add_keys(self, item: dict[str, Any], rng: np.random.Generator) -> None:
        image = item[IMAGE_KEY]
        mask = self.masks(image.shape[:2], rng)
        item[MASK_KEY] = mask
        item[MASKED_IMAGE_KEY] = apply_mask(image, mask).astype(np.float32)


class SuperResolutionDataset(TaskDataset):
    """Adds `LR_image` (H / factor, W / factor, 3) float32 in [-1, 1] from `ldm.data.degradation.Degradation`.

    `degradation` holds the Degradation arguments (factor, interpolation, blur/noise/jpeg probabilities and ranges).
    """

    def __init__(self, degradation: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.degradation = Degradation(**dict(degradation or {}))

    def add_keys(self, item: dict[str, Any], rng: np.random.Generator) -> None:
        item[LR_KEY] = self.degradation.degrade_array(item[IMAGE_KEY], rng)
