"""Reference image sets for the metrics (an image folder, WebDataset shards, or a dataset such as a run's validation
data) and their cached features.

The features of a reference set are computed once per (set, extractor, image size) and cached in a safetensors file
named by a hash of: the set's identity (a folder: every file's relative path, size and mtime; shards: the urls, local
sizes and mtimes and the manifest; a dataset: its config and length), the extractor's name and weights id, and the
image size. Any change to one of them gives a new key, so a stale file is never used. Default cache folder:
`$XDG_CACHE_HOME/ldm/fid_stats` (~/.cache/ldm/fid_stats); the training callback keeps its own in the run folder.
Files are written atomically and read through `ldm.checkpoint` (safetensors).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.data.transforms import ImageTransform
from ldm.util import ConfigError

CACHE_VERSION = 2  # 2: images cropped by ImageTransform (any PIL mode converted as in training)
CENTRE_CROP = ImageTransform(size=None, interpolation="bicubic")  # `out` gives each call its size


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/ldm/fid_stats` (default ~/.cache/ldm/fid_stats)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ldm", "fid_stats")


@dataclass
class Reference:
    """A reference set: `identity` (JSON-able, decides the cache key), a description, its size and a reader of
    its images as PIL RGB (in a fixed order)."""

    description: str
    identity: dict[str, Any]
    count: int
    images: Callable[[], Iterator[Image.Image]]


def centre_crop_uint8(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A reference image as the training data sees it: any PIL mode to RGB, scaled to cover (height, width) and
    centre-cropped (bicubic, `ImageTransform`'s crop): uint8 (3, H, W)."""
    array = np.array(CENTRE_CROP.crop_image(image, out=size), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1)


def from_model_range(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> uint8, rounded as the PNGs are written."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()


def folder_reference(root: str) -> Reference:
    """The images under `root` (recursive, sorted; the image-folder extensions)."""
    from ldm.data.image_folder import DEFAULT_EXTENSIONS, scan_folder

    paths, _, _ = scan_folder(root, DEFAULT_EXTENSIONS)
    if not paths:
        raise ConfigError(f"--ref {root}: no images found (extensions {', '.join(DEFAULT_EXTENSIONS)})")
    listing = []
    for rel in paths:
        stat = os.stat(os.path.join(root, rel))
        listing.append([rel, stat.st_size, stat.st_mtime_ns])

    def images() -> Iterator[Image.Image]:
        for rel in paths:
            with Image.open(os.path.join(root, rel)) as image:
                yield image.convert("RGB")

    return Reference(f"folder {root} ({len(paths)} images)", {"kind": "folder", "root": os.path.abspath(root),
                                                              "files": listing}, len(paths), images)


def shard_reference(urls: str) -> Reference:
    """The images of WebDataset shards (brace patterns and `::` lists as for training), in shard order."""
    from ldm.data.shards import (
        MANIFEST_NAME,
        expand_urls,
        local_path,
        read_manifest,
        read_shard,
    )

    expanded = expand_urls(urls)
    files = []
    for url in expanded:
        path = local_path(url)
        stat = os.stat(path) if path is not None and os.path.isfile(path) else None
        files.append([url, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    first = local_path(expanded[0])
    manifest_path = os.path.join(os.path.dirname(first), MANIFEST_NAME) if first is not None else None
    manifest = read_manifest(manifest_path) if manifest_path and os.path.isfile(manifest_path) else None
    count = int(manifest["total"]) if manifest and "total" in manifest else -1

    def images() -> Iterator[Image.Image]:
        for url in expanded:
            for sample in read_shard(url):
                data = next((sample[k] for k in ("jpg", "jpeg", "png", "webp", "bmp") if k in sample), None)
                if data is not None:
                    with Image.open(io.BytesIO(data)) as image:
                        yield image.convert("RGB")

    return Reference(f"shards {urls}", {"kind": "shards", "files": files, "manifest": manifest}, count, images)


def open_reference(spec: str) -> Reference:
    """--ref: a folder of images, or shard urls (`x/{000000..000009}.tar`, a .tar file, http/pipe urls)."""
    if os.path.isdir(spec):
        return folder_reference(spec)
    if ".tar" in spec or "://" in spec or spec.startswith("pipe:"):
        return shard_reference(spec)
    raise ConfigError(f"--ref {spec}: not a folder of images or shard urls (.tar)")


def dataset_items(dataset: Any, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The first `limit` items (all when None) of a map-style dataset, or of a streamed one (e.g. shards) in the
    order it yields them."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return itertools.islice(iter(dataset), limit)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return (dataset[i] for i in range(count))


def _known_length(dataset: Any, limit: int | None) -> int:
    """min(len, limit) when the dataset has a length, else `limit` or -1 (unknown)."""
    try:
        return len(dataset) if limit is None else min(limit, len(dataset))
    except TypeError:
        return -1 if limit is None else limit


def dataset_reference(dataset: Any, identity: dict[str, Any], limit: int | None = None,
                      description: str = "validation data") -> Reference:
    """The images of a dataset of {"image": HWC in [-1, 1]} items (the first `limit`); `identity` names it."""
    count = _known_length(dataset, limit)

    def images() -> Iterator[Image.Image]:
        for item in dataset_items(dataset, limit):
            array = from_model_range(torch.as_tensor(np.asarray(item["image"])).permute(2, 0, 1)[None])[0]
            yield Image.fromarray(array.permute(1, 2, 0).numpy())

    return Reference(f"{description} ({count if count >= 0 else 'all'} images)",
                     {"kind": "dataset", "count": count, **identity}, count, images)


def image_batches(reference: Reference, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor]:
    """The reference images as uint8 (B, 3, H, W) batches at `size`."""
    batch: list[torch.Tensor] = []
    for image in reference.images():
        batch.append(centre_crop_uint8(image, size))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def cache_key(reference: Reference, extractor: Any, size: tuple[int, int]) -> str:
    """SHA-256 of the set's identity, the extractor's name and weights, and the image size."""
    material = {"version": CACHE_VERSION, "reference": reference.identity, "features": extractor.name,
                "weights": extractor.weights_id, "size": list(size)}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cache_dir: str, reference: Reference, extractor: Any, size: tuple[int, int]) -> str:
    """`<cache_dir>/<extractor>-<key[:20]>.safetensors`."""
    return os.path.join(cache_dir, f"{extractor.name}-{cache_key(reference, extractor, size)[:20]}.safetensors")


def reference_features(reference: Reference, extractor: Any, size: tuple[int, int], cache_dir: str | None,
                       batch_size: int = 64, write: bool = True,
                       progress: Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]] | None = None
                       ) -> tuple[dict[str, torch.Tensor], str | None, bool]:
    """(features {"features", "logits"}, cache file, reused) of the reference set: read from the cache when its key
    matches, else computed (and cached when `write`; `cache_dir` None: no cache)."""
    from ldm.eval.features import extract

    path = cache_path(cache_dir, reference, extractor, size) if cache_dir else None
    if path and os.path.isfile(path):
        from ldm.checkpoint import load_state_dict

        return dict(load_state_dict(path)), path, True
    parts: dict[str, list[torch.Tensor]] = {}
    batches = image_batches(reference, size, batch_size)
    for batch in (progress(batches) if progress else batches):
        for key, value in extract(extractor, batch, batch_size).items():
            parts.setdefault(key, []).append(value)
    if not parts:
        raise ConfigError(f"reference {reference.description}: no images could be read")
    features = {key: torch.cat(values).contiguous() for key, values in parts.items()}
    if path and write:
        from safetensors.torch import save

        from ldm.files import atomic_write

        data = save(features, metadata={"reference": reference.description, "features": extractor.name,
                                        "weights": extractor.weights_id, "size": f"{size[0]}x{size[1]}"})
        atomic_write(path, lambda f: f.write(data))
    return features, path, False
