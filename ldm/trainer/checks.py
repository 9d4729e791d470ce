"""Checks main.py runs before training starts, so a run fails in its first second, not after its first hour."""

from __future__ import annotations

import math
import os
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import IterableDataset

from ldm.errors import UsageError


def check_writable_logdir(logdir: str) -> None:
    """UsageError unless the run folder (or the nearest existing folder above it) is writable."""
    folder = os.path.abspath(logdir)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not os.path.isdir(folder):
        raise UsageError(f"-l/--logdir: {folder} exists and is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"-l/--logdir: cannot write {logdir}: {folder} is not writable (permission denied or "
                         "read-only file system); pass -l <a writable folder>")


def train_batches_per_epoch(trainer: pl.Trainer, data: Any) -> int | None:
    """Training batches per epoch on each rank (after limit_train_batches), or None when the data has no length."""
    dataset = (getattr(data, "datasets", None) or {}).get("train")
    batch_size = getattr(data, "batch_size", None)
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    if not batch_size:
        return None
    # a map-style dataset is split across ranks by the sampler; an iterable one (shards) reports its per-rank length
    per_rank = n if isinstance(dataset, IterableDataset) else math.ceil(n / max(1, trainer.world_size))
    batches = math.ceil(per_rank / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return batches


def fit_intervals_to_epoch(trainer: pl.Trainer, data: Any) -> list[str]:
    """An int `val_check_interval` longer than an epoch (a small folder) becomes "every k epochs", k the number of
    epochs closest to the interval, instead of failing; returns the notes to print. (Not Lightning's
    `check_val_every_n_epoch=None`: with it, a run resumed from the end of an epoch runs a one-batch epoch.)"""
    interval = trainer.val_check_interval
    batches = train_batches_per_epoch(trainer, data)
    if batches is None or not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
        return []
    if interval <= batches:
        return []
    every = max(1, round(interval / batches))
    trainer.val_check_interval = 1.0
    trainer.check_val_every_n_epoch = every
    return [f"lightning.trainer.val_check_interval={interval} is longer than an epoch ({batches} training batches): "
            f"validating every {every} epoch(s) ({every * batches} batches) instead"]


def _folders(dataset: Any) -> Any:
    """The ImageFolder or ShardDataset inside `dataset` (wrappers and task datasets keep theirs in `.data`), or
    None."""
    from ldm.data.image_folder import ImageFolder
    from ldm.data.shards import ShardDataset

    for _ in range(4):
        if isinstance(dataset, (ImageFolder, ShardDataset)):
            return dataset
        dataset = getattr(dataset, "data", None)
    return None


def check_data_for_model(model: Any, data: Any) -> list[str]:
    """Before training: a text model gets captioned images, a class model labels it can embed. ConfigError naming
    the split and what was found otherwise; returns notes (e.g. how many images without a caption were skipped)."""
    from ldm.data.captions import no_captions_message
    from ldm.util import ConfigError

    key = getattr(model, "cond_stage_key", None)
    encoder = getattr(model, "cond_stage_model", None)
    notes = []
    for split, dataset in (getattr(data, "datasets", None) or {}).items():
        folder = _folders(dataset)
        if folder is None:
            continue
        root = getattr(folder, "root", None)
        where = f"data.params.{split}.params." + (f"root={root}" if root else f"shards={folder.urls[0]}...")
        if key in ("caption", "txt"):
            if not folder.has_captions:
                raise ConfigError(no_captions_message(where, len(folder)))
            missing = getattr(folder, "missing_captions", "empty")  # shards: make_shards.py decided when packing
            if folder.num_uncaptioned and missing is None:
                raise ConfigError(f"{where}: {folder.num_uncaptioned} of {len(folder)} images have no caption; set "
                                  f"data.params.{split}.params.missing_captions=skip (leave them out) or =empty "
                                  "(train them with an empty caption)")
            if folder.num_uncaptioned:
                done = "skipped" if missing == "skip" else "trained with an empty caption"
                notes.append(f"data: {split}: {folder.num_uncaptioned} images without a caption {done}")
        elif key in ("class_label", "class"):
            if folder.class_names is None:
                raise ConfigError(f"{where}: no class labels for a class-conditional model: put each class's images "
                                  f"in a sub-folder of the root, or name a metadata column with "
                                  f"data.params.{split}.params.label_key")
            usable = getattr(encoder, "null_label", None) or getattr(encoder, "n_classes", None)
            if usable is not None and len(folder.class_names) > usable:
                raise ConfigError(f"{where}: {len(folder.class_names)} classes, but the model embeds {usable} "
                                  f"(model.params.cond_stage_config.params.n_classes); raise n_classes")
    return notes


def model_size_multiple(config: Any) -> int:
    """What image sides must be multiples of: a diffusion model's `ModelInfo.size_multiple` (first stage x UNet
    downsampling, defaults included), or an autoencoder's own downsampling."""
    from omegaconf import OmegaConf

    from ldm.inference.model_info import argument_default, describe_model
    from ldm.modules.diffusionmodules.model import Encoder

    if OmegaConf.select(config, "model.params.unet_config", default=None) is not None:
        return describe_model(config).size_multiple
    levels = OmegaConf.select(config, "model.params.ddconfig.ch_mult", default=None)
    if levels is None:
        levels = argument_default(Encoder, "ch_mult")
    return 2 ** (len(levels) - 1)


def check_buckets(config: Any, data: Any) -> None:
    """Every aspect-ratio bucket must be divisible by the model's total downsampling (first stage x UNet), else
    the first odd-sized batch fails deep inside the network; ConfigError naming the split otherwise."""
    from ldm.data.buckets import check_bucket_multiple
    from ldm.util import ConfigError

    factor = model_size_multiple(config)
    for split, dataset in (getattr(data, "datasets", None) or {}).items():
        folder = _folders(dataset)
        sizes = getattr(folder, "bucket_sizes", None)
        if sizes:
            try:
                check_bucket_multiple(sizes, factor)
            except ConfigError as err:
                raise ConfigError(f"data.params.{split}.params.buckets: {err}") from None
