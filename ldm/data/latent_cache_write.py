"""Writing a latent cache (see `ldm.data.latent_cache` for the layout): every item of an image folder or of shards
is decoded once, transformed deterministically (and flipped when the dataset flips), encoded in batches of one
shape by the caller's `encode_images`, and stored in safetensors shards written to temporary names and renamed;
index.json is written last, so a folder with an index is a complete cache.

The data layer does not know the model: the caller (scripts/cache_latents.py) passes `encode_images(x) ->
{field: tensor}` for B,C,H,W images in [-1, 1] and, for a frozen conditioner, `encode_conditioning(values) ->
tensor` for a list of captions or a long tensor of class labels.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldm.data.buckets import decode_side, nearest_bucket
from ldm.data.latent_cache import (CACHE_FORMAT, CACHEABLE_COND_KEYS, INDEX_NAME, KINDS, SHARD_PATTERN,
                                   CacheFingerprint, LatentCacheError, dataset_listing, dataset_resolution,
                                   fingerprint_dict, source_kind, unwrap)
from ldm.data.skipped_images import BadImageWarning
from ldm.data.transforms import ImageTransform, load_image
from ldm.files import atomic_write

log = logging.getLogger(__name__)

ImageEncoder = Callable[[torch.Tensor], dict[str, torch.Tensor]]
CondEncoder = Callable[[Any], torch.Tensor]


@dataclass
class SourceItem:
    """One decoded source image with what the model reads besides it."""

    path: str
    image: Any  # PIL RGB image
    captions: list[str] | None
    class_label: int | None
    human_label: str | None


def crop_is_fixed(transform: ImageTransform, width: int, height: int, out: tuple[int, int] | None) -> bool:
    """Whether the transform's crop of a width x height image has one position only (so a random crop is not)."""
    oh, ow = out if out is not None else (transform.size, transform.size)
    if oh is None:
        return True
    return transform.resized_size(width, height, out) == (ow, oh)


def _folder_items(dataset: Any) -> Iterator[SourceItem | str]:
    """Items of an ImageFolder in listing order (an unreadable file yields its error message instead)."""
    side = decode_side(dataset.transform.size, dataset.bucket_sizes)
    for i, rel in enumerate(dataset.paths):
        path = os.path.join(dataset.root, rel)
        try:
            image = load_image(path, min_side=side)
        except Exception as err:  # PIL raises many types for bad data
            yield f"{path}: {type(err).__name__}: {err}"
            continue
        label = dataset.class_label(i)
        human = None if label is None else dataset.class_names[label]
        captions = dataset.caption_choices(i) if dataset.has_captions else None
        yield SourceItem(path, image, captions, label, human)


def _shard_items(dataset: Any) -> Iterator[SourceItem | str]:
    """Samples of a ShardDataset, shard by shard in listing order (not split by rank: the cache holds them all)."""
    from ldm.data.image_folder import DEFAULT_EXTENSIONS
    from ldm.data.shards import read_shard

    side = decode_side(dataset.transform.size, dataset.bucket_sizes)
    for url in dataset.urls:
        for sample in read_shard(url):
            path = f"{url}#{sample['__key__']}"
            ext = next((e for e in DEFAULT_EXTENSIONS if e in sample), None)
            try:
                if ext is None:
                    raise ValueError("no image in the sample")
                image = load_image(io.BytesIO(sample[ext]), min_side=side)
                captions = dataset._captions(sample) if dataset.has_captions else None
                label = int(sample["cls"].decode("utf-8").strip()) if "cls" in sample else None
            except Exception as err:
                yield f"{path}: {type(err).__name__}: {err}"
                continue
            names = dataset.class_names
            human = names[label] if names is not None and label is not None and 0 <= label < len(names) else None
            yield SourceItem(path, image, captions, label, human)


def source_items(dataset: Any) -> Iterator[SourceItem | str]:
    """Decoded items of a folder or shard dataset, in listing order."""
    dataset = unwrap(dataset)
    return _folder_items(dataset) if source_kind(dataset) == "folder" else _shard_items(dataset)


def _raw_cond(item: SourceItem, cond_key: str) -> list:
    """The raw conditioning values of an item whose encodings are cached: its captions ([""] without one), or
    its class label."""
    if cond_key == "class_label":
        if item.class_label is None:
            raise LatentCacheError(f"{item.path} has no class label, but the model conditions on class_label")
        return [int(item.class_label)]
    if item.captions is None:
        raise LatentCacheError(f"{item.path}: the dataset has no captions, but the model conditions on "
                               f"'{cond_key}' with a frozen encoder")
    return list(item.captions) or [""]


class _ShardWriter:
    """Collects one shard's tensors: images grouped by shape and encoded a batch at a time, distinct conditioning
    values encoded once."""

    def __init__(self, encode_images: ImageEncoder, encode_conditioning: CondEncoder | None, batch_size: int,
                 kind: dict[str, str]):
        self.encode_images, self.encode_conditioning = encode_images, encode_conditioning
        self.batch_size, self.kind = batch_size, kind  # kind["kind"]: set by the first encoded batch
        self.tensors: dict[str, torch.Tensor] = {}
        self.pending: dict[tuple, list[tuple[tuple[int, int], np.ndarray]]] = {}
        self.cond_rows: dict[Any, int] = {}
        self.cond_pending: list[Any] = []

    def add_image(self, row: int, variant: int, array: np.ndarray) -> None:
        group = self.pending.setdefault(array.shape, [])
        group.append(((row, variant), array))
        if len(group) >= self.batch_size:
            self._encode(array.shape)

    def _encode(self, shape: tuple) -> None:
        group = self.pending.pop(shape, [])
        if not group:
            return
        x = torch.from_numpy(np.stack([a for _, a in group])).permute(0, 3, 1, 2).contiguous()
        fields = self.encode_images(x)
        found = next((k for k, names in KINDS.items() if set(names) == set(fields)), None)
        if found is None or self.kind.setdefault("kind", found) != found:
            raise LatentCacheError(f"the first stage gave {sorted(fields)}; expected one of {list(KINDS.values())}, "
                                   "the same for every batch")
        for field, value in fields.items():
            value = value.detach().float().cpu()
            for k, ((row, variant), _) in enumerate(group):
                self.tensors[f"{row}.{field}.{variant}"] = value[k].clone()

    def cond_row(self, value: Any) -> int:
        if value not in self.cond_rows:
            self.cond_rows[value] = len(self.cond_rows)
            self.cond_pending.append(value)
            if len(self.cond_pending) >= self.batch_size:
                self._encode_cond()
        return self.cond_rows[value]

    def _encode_cond(self) -> None:
        values, self.cond_pending = self.cond_pending, []
        if not values:
            return
        first = len(self.cond_rows) - len(values)
        raw = torch.tensor(values, dtype=torch.long) if isinstance(values[0], int) else values
        out = self.encode_conditioning(raw)
        if not isinstance(out, torch.Tensor) or out.shape[0] != len(values):
            raise LatentCacheError(f"the conditioning encoder must give one tensor row per value; got "
                                   f"{type(out).__name__} {getattr(out, 'shape', '')} for {len(values)} values")
        out = out.detach().float().cpu()
        for k in range(len(values)):
            self.tensors[f"cond.{first + k}"] = out[k].clone()

    def finish(self) -> dict[str, torch.Tensor]:
        for shape in list(self.pending):
            self._encode(shape)
        self._encode_cond()
        return self.tensors


def _prepare_folder(out: str, overwrite: bool) -> None:
    """Create `out`; an existing cache there is removed only with `overwrite` (only its own files), and any other
    non-empty folder is refused."""
    if os.path.isfile(out):
        raise LatentCacheError(f"--out {out} is a file; give a folder for the cache")
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, INDEX_NAME)):
            raise LatentCacheError(f"--out {out} is a non-empty folder that holds no latent cache; give a new or "
                                   "empty folder")
        if not overwrite:
            raise LatentCacheError(f"{out} already holds a latent cache; pass --overwrite to replace it")
        os.remove(os.path.join(out, INDEX_NAME))  # first: an interrupted removal leaves no index naming lost shards
        for name in os.listdir(out):
            if name.startswith("latents-") and ".safetensors" in name:  # shards and stale temporary shard files
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)


def _save_shard(path: str, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save(tensors)
    atomic_write(path, lambda f: f.write(data), expected_bytes=len(data))


def write_cache(dataset: Any, out: str, encode_images: ImageEncoder, fingerprint: CacheFingerprint,
                cond_key: str | None = None, encode_conditioning: CondEncoder | None = None, batch_size: int = 16,
                items_per_shard: int = 1024, overwrite: bool = False, progress: Callable[[int], None] | None = None
                ) -> dict[str, Any]:
    """Encode every readable item of `dataset` (an ImageFolder or ShardDataset) into a cache at `out`; returns the
    index. `encode_images` gives {"mean", "logvar"} (a KL posterior) or {"latent"}; `cond_key` with
    `encode_conditioning` caches the frozen conditioner's output of each item's captions / class label.

    The dataset's transform must be deterministic apart from flips: a random crop is accepted only where the image
    already has the crop's shape (nothing to draw), else it is an error naming the file.
    """
    if cond_key is not None and cond_key not in CACHEABLE_COND_KEYS:
        raise LatentCacheError(f"cond_stage_key '{cond_key}': only the outputs of caption / class encoders "
                               f"({', '.join(CACHEABLE_COND_KEYS)}) can be cached")
    if (cond_key is None) != (encode_conditioning is None):
        raise ValueError("cond_key and encode_conditioning go together")
    if items_per_shard <= 0 or batch_size <= 0:
        raise ValueError("items_per_shard and batch_size must be positive")
    listing = dataset_listing(dataset)  # also rejects sources other than folders and shards
    source = unwrap(dataset)
    _prepare_folder(out, overwrite)
    transform = source.transform
    flip, random_crop = bool(transform.flip), bool(transform.random_crop)
    fixed = ImageTransform(transform.size, random_crop=False, flip=False, interpolation=transform.interpolation)
    buckets = source.bucket_sizes
    items: list[dict] = []
    shards: list[str] = []
    skipped: list[str] = []
    kind: dict[str, str] = {}
    writer = _ShardWriter(encode_images, encode_conditioning, batch_size, kind)

    def flush() -> None:
        nonlocal writer
        tensors = writer.finish()
        if tensors:
            name = SHARD_PATTERN.format(len(shards))
            _save_shard(os.path.join(out, name), tensors)
            shards.append(name)
        writer = _ShardWriter(encode_images, encode_conditioning, batch_size, kind)

    for found in source_items(source):
        if isinstance(found, str):
            warnings.warn(f"latent cache: skipping unreadable image {found}", BadImageWarning, stacklevel=2)
            skipped.append(found)
            continue
        w, h = found.image.size
        bucket = nearest_bucket(h, w, buckets) if buckets else None
        size = tuple(buckets[bucket]) if buckets else None
        if random_crop and not crop_is_fixed(transform, w, h, size):
            raise LatentCacheError(f"{found.path} ({w}x{h}) would be randomly cropped (random_crop is on), which a "
                                   "cache cannot hold: set random_crop: false in data.params.train.params (centre "
                                   "crops) or resize the images to the training shape; flips are cached")
        row = len(items)
        array = fixed(found.image, out=size)
        writer.add_image(row, 0, array)
        if flip:  # the flip of the transformed image is the transform of the flipped image
            writer.add_image(row, 1, np.ascontiguousarray(array[:, ::-1]))
        entry: dict[str, Any] = {"path": found.path, "shard": len(shards), "row": row, "bucket": bucket,
                                 "captions": found.captions, "class_label": found.class_label,
                                 "human_label": found.human_label}
        if cond_key is not None:
            entry["cond_rows"] = [writer.cond_row(v) for v in _raw_cond(found, cond_key)]
        items.append(entry)
        if progress is not None:
            progress(len(items))
        if len(items) % items_per_shard == 0:
            flush()
    flush()
    if not items:
        raise LatentCacheError(f"no readable image in the dataset ({len(skipped)} unreadable); nothing cached")
    index = {"format": CACHE_FORMAT, "kind": kind["kind"], "fingerprint": fingerprint_dict(fingerprint),
             "listing": listing, "resolution": dataset_resolution(source), "flip": flip, "cond_key": cond_key,
             "shards": shards, "skipped": skipped, "items": items}
    text = json.dumps(index) + "\n"
    atomic_write(os.path.join(out, INDEX_NAME), lambda f: f.write(text.encode("utf-8")))
    log.info("latent cache: %d items (%d unreadable skipped) in %d shard(s) at %s", len(items), len(skipped),
             len(shards), out)
    return index
