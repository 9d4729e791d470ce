"""A latent cache for stage-2 training: the frozen first stage's encoding of every training image (and of its
horizontal flip), plus the outputs of a frozen text / class encoder, read back as a map-style dataset.

Layout of a cache folder (written by `scripts/cache_latents.py`, see `ldm.data.latent_cache_write`):
`index.json` (format, what was cached and from what, one entry per item) and `latents-NNNNN.safetensors` shards.
In a shard, item i's tensors are `{i}.mean.{v}` / `{i}.logvar.{v}` (a KL first stage: the posterior's mean and
clamped log-variance, so stage 2 still samples z every step) or `{i}.latent.{v}` (a first stage whose encoder gives
a tensor: VQ's latent before quantization, as LatentDiffusion trains on it), with v = 0 for the image and 1 for its
flip; and `cond.{j}`: the encoder output of row j of the shard's distinct conditioning values (items name their
rows).

A cached item carries the cached tensors under the `CACHED_*` keys below (no `image`), and `caption` /
`class_label` / `file_path_` as the source dataset gives them. `LatentDiffusion` uses these keys instead of encoding.

What the cache was made from is recorded and checked: the dataset listing, resolution and flips when the dataset
is built (`CachedLatentDataset`), the first stage's weights, scale_factor and the conditioner's weights when
training starts (`LatentCache.check_model`). A mismatch is a `LatentCacheError` naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ldm.data.batch_keys import CLASS_KEY, TEXT_KEYS
from ldm.data.captions import choose_caption
from ldm.data.transforms import torch_seeded_rng
from ldm.util import ConfigError

INDEX_NAME = "index.json"
SHARD_PATTERN = "latents-{:05d}.safetensors"
CACHE_FORMAT = 1
# The dataset config key that switches a split to its cache: data.params.train.params.latent_cache: DIR
CONFIG_KEY = "latent_cache"
# Batch keys of a cached item.
CACHED_MEAN = "cached_latent_mean"        # KL posterior mean (B, C, h, w), unscaled
CACHED_LOGVAR = "cached_latent_logvar"    # KL posterior log-variance, clamped as DiagonalGaussianDistribution does
CACHED_LATENT = "cached_latent"           # the encoder's tensor output (VQ before quantization, identity)
CACHED_COND = "cached_cond"               # the frozen conditioner's output for this item's caption / class label
# Field names inside the shards, per kind of first stage.
KINDS = {"posterior": ("mean", "logvar"), "tensor": ("latent",)}
FIELD_KEYS = {"mean": CACHED_MEAN, "logvar": CACHED_LOGVAR, "latent": CACHED_LATENT}
# Conditioning keys whose frozen-encoder outputs can be cached (the raw value is a caption or a class label).
CACHEABLE_COND_KEYS = (*TEXT_KEYS, CLASS_KEY)
SCALE_TOLERANCE = 1e-6
# Entries every index.json has (written by ldm.data.latent_cache_write).
INDEX_KEYS = ("kind", "fingerprint", "items", "shards", "flip", "listing", "resolution")


class LatentCacheError(ConfigError):
    """A latent cache cannot be used: missing, unreadable, or made from other weights / data / settings."""


def sha256_text(lines: list[str]) -> str:
    """sha256 of lines joined by newlines (the listing fingerprint)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheFingerprint:
    """What a cache's tensors depend on outside the data: the first stage's weights (sha256 of its state_dict),
    the stage-2 latent scale (`scale_factor`, or `scale_by_std`: set from the data at training start) and the
    weights of the frozen conditioner whose outputs are cached (None when none are)."""

    first_stage_sha256: str
    scale_factor: float
    scale_by_std: bool
    cond_stage_sha256: str | None = None

    def mismatches(self, model: CacheFingerprint) -> list[str]:
        """Human-readable differences between this (the cache's) and a model's fingerprint; [] when they agree."""
        out = []
        if self.first_stage_sha256 != model.first_stage_sha256:
            out.append(f"first-stage checkpoint: the cache was encoded with weights sha256 "
                       f"{self.first_stage_sha256[:12]}..., the model's first stage has {model.first_stage_sha256[:12]}...")
        if self.scale_by_std != model.scale_by_std:
            out.append(f"scale_factor: the cache was made for scale_by_std={self.scale_by_std}, the model has "
                       f"scale_by_std={model.scale_by_std}")
        elif not self.scale_by_std and not math.isclose(self.scale_factor, model.scale_factor,
                                                        rel_tol=SCALE_TOLERANCE):
            out.append(f"scale_factor: the cache records {self.scale_factor:g}, the model has {model.scale_factor:g}")
        # Compared only when the model reads the cached conditioning (a trained conditioner encodes live instead).
        if None not in (self.cond_stage_sha256, model.cond_stage_sha256) \
                and self.cond_stage_sha256 != model.cond_stage_sha256:
            out.append(f"conditioning encoder: the cache holds outputs of weights sha256 "
                       f"{self.cond_stage_sha256[:12]}..., the model's frozen conditioner has "
                       f"{model.cond_stage_sha256[:12]}...")
        return out


def unwrap(dataset: Any) -> Any:
    """The dataset inside a WrappedDataset (`wrap: true`)."""
    inner = getattr(dataset, "data", None)
    return inner if isinstance(inner, Dataset) else dataset


def find_cache(dataset: Any) -> LatentCache | None:
    """The LatentCache a (possibly WrappedDataset- or Subset-wrapped) dataset reads, or None."""
    for _ in range(8):
        cache = getattr(dataset, "cache", None)
        if isinstance(cache, LatentCache):
            return cache
        inner = getattr(dataset, "dataset", None) or unwrap(dataset)  # Subset.dataset, WrappedDataset.data
        if inner is None or inner is dataset:
            return None
        dataset = inner
    return None


def source_kind(dataset: Any) -> str:
    """"folder" or "shards": the sources a cache can be made from; anything else is a LatentCacheError."""
    from ldm.data.image_folder import ImageFolder
    from ldm.data.shards import ShardDataset

    dataset = unwrap(dataset)
    if isinstance(dataset, ImageFolder):
        return "folder"
    if isinstance(dataset, ShardDataset):
        return "shards"
    raise LatentCacheError(f"latent cache: the dataset is a {type(dataset).__name__}; only image folders "
                           "(`root`) and shards (`shards`) can be cached, since other sources (the shapes, the "
                           "sample photos) draw new images or crops every time")


def dataset_listing(dataset: Any) -> dict[str, Any]:
    """{"kind", "count", "sha256"}: the ordered file list (folder) or shard list with manifest counts (shards)."""
    kind = source_kind(dataset)
    dataset = unwrap(dataset)
    if kind == "folder":
        return {"kind": kind, "count": len(dataset.paths), "sha256": sha256_text(list(dataset.paths))}
    from ldm.data.shards import shard_name

    names = [shard_name(u) for u in dataset.urls]
    counts = dataset.counts if dataset.counts is not None else [None] * len(names)
    return {"kind": kind, "count": dataset.total if dataset.counts is not None else None,
            "sha256": sha256_text([f"{n}\t{c}" for n, c in zip(names, counts)])}


def dataset_resolution(dataset: Any) -> dict[str, Any]:
    """{"size", "buckets", "interpolation"} of the dataset's transform: what the cached latents were made at."""
    dataset = unwrap(dataset)
    buckets = getattr(dataset, "bucket_sizes", None)
    return {"size": dataset.transform.size, "buckets": [list(b) for b in buckets] if buckets else None,
            "interpolation": str(dataset.transform.interpolation)}


def read_index(folder: str) -> dict[str, Any]:
    """The parsed index.json of a cache folder (clear errors for a missing or foreign folder)."""
    path = os.path.join(folder, INDEX_NAME)
    if not os.path.isdir(folder):
        raise LatentCacheError(f"latent cache {folder} does not exist; write it with `python scripts/cache_latents.py "
                               f"-r <stage-1 run> --config <stage-2 config> --out {folder}`")
    if not os.path.isfile(path):
        raise LatentCacheError(f"latent cache {folder} has no {INDEX_NAME} (not a cache, or its writing did not "
                               "finish); write it again with scripts/cache_latents.py")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise LatentCacheError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        raise LatentCacheError(f"{path}: not a latent cache of format {CACHE_FORMAT} "
                               f"(found {index.get('format') if isinstance(index, dict) else index!r})")
    missing = [key for key in INDEX_KEYS if key not in index]
    if missing or index["kind"] not in KINDS or not isinstance(index["fingerprint"], dict):
        problem = f"lacks {', '.join(missing)}" if missing else f"has an unknown kind {index['kind']!r}" \
            if index["kind"] not in KINDS else "has a malformed fingerprint"
        raise LatentCacheError(f"{path} {problem} (damaged or edited); write the cache again with "
                               "scripts/cache_latents.py")
    return index


class _Strings:
    """Strings packed into one byte buffer with offsets: no per-string Python objects, so DataLoader workers that
    read them never copy the pages they share with the main process (a list of dicts would, via refcounts)."""

    def __init__(self, values: list[str]):
        encoded = [v.encode("utf-8") for v in values]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")


def _ragged(lists: list[list[int] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of int lists; None counts as empty."""
    lengths = [len(v or ()) for v in lists]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.fromiter((x for v in lists for x in (v or ())), dtype=np.int64, count=int(offsets[-1])), offsets


class ItemTable:
    """The cache index's items (path, shard, row, bucket, captions, class_label, human_label, cond_rows) as
    columns of numpy arrays; `table[i]` gives item i as the dict the index stores."""

    def __init__(self, items: list[dict[str, Any]]):
        self.n = len(items)
        column = lambda key: np.array([-1 if it.get(key) is None else int(it[key]) for it in items],  # noqa: E731
                                      dtype=np.int64)
        self.shard, self.row, self.bucket, self.class_label = (column(k) for k in
                                                               ("shard", "row", "bucket", "class_label"))
        self.path = _Strings([it["path"] for it in items])
        self.human_label = _Strings([it.get("human_label") or "" for it in items])
        self.has_captions = np.array([it.get("captions") is not None for it in items], dtype=bool)
        captions = [it.get("captions") or [] for it in items]
        self.caption_text = _Strings([c for cs in captions for c in cs])
        self.caption_offsets = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum([len(cs) for cs in captions], out=self.caption_offsets[1:])
        self.cond_rows, self.cond_offsets = _ragged([it.get("cond_rows") for it in items])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, end = self.caption_offsets[i], self.caption_offsets[i + 1]
        label = int(self.class_label[i])
        return {"path": self.path[i], "shard": int(self.shard[i]), "row": int(self.row[i]),
                "bucket": None if self.bucket[i] < 0 else int(self.bucket[i]),
                "captions": [self.caption_text[j] for j in range(start, end)] if self.has_captions[i] else None,
                "class_label": None if label < 0 else label,
                "human_label": (self.human_label[i] or None) if label >= 0 else None,
                "cond_rows": self.cond_rows[self.cond_offsets[i]:self.cond_offsets[i + 1]].tolist()}


class LatentCache:
    """A cache folder's index: what it holds and what it was made from, with the checks against a dataset config
    and a model."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        self.index = read_index(self.folder)
        self.kind = self.index["kind"]
        self.fields = KINDS[self.kind]
        self.fingerprint = CacheFingerprint(**self.index["fingerprint"])
        self.items = ItemTable(self.index.pop("items"))  # columns, not a list of dicts: see ItemTable
        self.shards: list[str] = self.index["shards"]
        self.flip = bool(self.index["flip"])
        self.cond_key: str | None = self.index.get("cond_key")

    def check_source(self, dataset: Any, flip: bool) -> None:
        """Raise a LatentCacheError when the configured dataset is not the one cached: listing, resolution, flips."""
        problems = []
        listing, cached = dataset_listing(dataset), self.index["listing"]
        if listing["kind"] != cached["kind"]:
            problems.append(f"dataset listing: the cache was made from {cached['kind']}, the config reads "
                            f"{listing['kind']}")
        elif listing["sha256"] != cached["sha256"]:
            problems.append(f"dataset listing: the configured {listing['kind']} ({listing['count']} entries) differs "
                            f"from the cached one ({cached['count']} entries): files added, removed or renamed")
        resolution, cached_res = dataset_resolution(dataset), self.index["resolution"]
        if resolution != cached_res:
            problems.append(f"resolution: the config has {_describe(resolution)}, the cache {_describe(cached_res)}")
        if flip and not self.flip:
            problems.append("flip: the config flips images but the cache holds no flipped copies (write it again "
                            "with the flips on, or set flip: false)")
        if problems:
            raise LatentCacheError(f"latent cache {self.folder} does not match data.params.train: "
                                   + "; ".join(problems) + " (write it again with scripts/cache_latents.py)")

    def check_model(self, model_fingerprint: CacheFingerprint) -> None:
        """Raise a LatentCacheError naming every difference between the cache's and the model's fingerprint."""
        problems = self.fingerprint.mismatches(model_fingerprint)
        if problems:
            raise LatentCacheError(f"latent cache {self.folder} does not match the model: " + "; ".join(problems)
                                   + " (write it again with scripts/cache_latents.py for this model)")


def _describe(resolution: dict) -> str:
    if resolution.get("buckets"):
        return f"buckets {resolution['buckets']} ({resolution['interpolation']})"
    return f"size {resolution['size']} ({resolution['interpolation']})"


class CachedLatentDataset(Dataset):
    """Items of a latent cache: `CACHED_*` tensors (a random one of the image and its flip when `flip`), and the
    item's `caption` (a random one of several when `training`), `class_label`, `human_label`, `file_path_`.

    `source` (the dataset config's dataset, scanned but never decoded) is checked against the cache. Map-style, so
    the data module's resumable / DDP / bucket loaders apply as to a folder: with buckets, `bucket_of(i)` is the
    item's bucket and batches keep one latent shape.
    """

    def __init__(self, folder: str, source: Any = None, flip: bool | None = None, training: bool = True):
        self.cache = LatentCache(folder)
        src = unwrap(source) if source is not None else None
        self.flip = bool(flip if flip is not None else (src.transform.flip if src is not None else False))
        if source is not None:
            self.cache.check_source(source, self.flip)
        elif self.flip and not self.cache.flip:
            raise LatentCacheError(f"latent cache {self.cache.folder} holds no flipped copies; flip=True needs them")
        self.training = bool(training)
        buckets = self.cache.index["resolution"].get("buckets")
        self.bucket_sizes = [tuple(b) for b in buckets] if buckets else None
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.cache.items)

    def bucket_of(self, index: int) -> int:
        """Aspect-ratio bucket of item `index` (as recorded when it was cached)."""
        return int(self.cache.items[index]["bucket"] or 0)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open shard files stay in the process that opened them
        return state

    def _shard(self, number: int) -> Any:
        """The shard file, opened once per process (memory-mapped: reading an item reads only its bytes)."""
        handle = self._handles.get(number)
        if handle is None:
            from safetensors import safe_open

            path = os.path.join(self.cache.folder, self.cache.shards[number])
            try:
                handle = safe_open(path, framework="pt", device="cpu")
            except Exception as err:
                raise LatentCacheError(f"cannot read latent cache shard {path}: {type(err).__name__}: {err}") from None
            self._handles[number] = handle
        return handle

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a latent cache of {n} items")
        index %= n
        item = self.cache.items[index]
        shard = self._shard(item["shard"])
        variant = int(self.flip and torch_seeded_rng().random() < 0.5)
        out: dict[str, Any] = {"file_path_": item["path"]}
        for field in self.cache.fields:
            out[FIELD_KEYS[field]] = shard.get_tensor(f"{item['row']}.{field}.{variant}")
        choice = 0
        if item.get("captions") is not None:
            captions = item["captions"]
            caption = choose_caption(captions, self.training)
            out["caption"] = caption
            if self.cache.cond_key in TEXT_KEYS:  # also under the model's key (e.g. SD's "txt")
                out[self.cache.cond_key] = caption
            choice = captions.index(caption) if captions else 0
        if item.get("class_label") is not None:
            out["class_label"] = int(item["class_label"])
            if item.get("human_label") is not None:
                out["human_label"] = item["human_label"]
        if item.get("cond_rows"):  # one row per caption for text conditioning, one for a class label
            row = item["cond_rows"][choice if self.cache.cond_key in TEXT_KEYS else 0]
            out[CACHED_COND] = shard.get_tensor(f"cond.{row}")
        return out

    def __repr__(self) -> str:
        return (f"CachedLatentDataset('{self.cache.folder}', n={len(self)}, kind={self.cache.kind}, "
                f"flip={self.flip}, cond={self.cache.cond_key})")


def fingerprint_dict(fingerprint: CacheFingerprint) -> dict[str, Any]:
    """The fingerprint as stored in index.json."""
    return asdict(fingerprint)
