"""Checks main.py runs before training starts, so a run fails in its first second, not after its first hour."""

from __future__ import annotations

import math
import os
from typing import Any

import pytorch_lightning as pl

from ldm.trainer.cli import UsageError


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
    batches = math.ceil(math.ceil(n / max(1, trainer.world_size)) / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return batches


def fit_intervals_to_epoch(trainer: pl.Trainer, data: Any) -> list[str]:
    """An int `val_check_interval` longer than an epoch (a small folder) validates every N batches across epochs
    instead of failing; returns the notes to print."""
    interval = trainer.val_check_interval
    batches = train_batches_per_epoch(trainer, data)
    if batches is None or not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
        return []
    if interval <= batches:
        return []
    trainer.check_val_every_n_epoch = None
    return [f"lightning.trainer.val_check_interval={interval} is longer than an epoch ({batches} training batches): "
            f"validating every {interval} batches across epochs (check_val_every_n_epoch=None)"]
