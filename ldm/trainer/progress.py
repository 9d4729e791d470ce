"""Training throughput (images/s from host wall time, no device sync), skipped-file count, a progress bar with both."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

from ldm.util import batches_seen

log = logging.getLogger(__name__)

# Smoothing of the images/s estimate: exponential moving average over roughly 1 / (1 - decay) batches.
THROUGHPUT_EMA_DECAY = 0.9


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (dict / list / tensor), read from shapes only (never from device values)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        for value in batch.values():
            n = batch_size_of(value)
            if n:
                return n
        return 0
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if batch and isinstance(batch[0], (torch.Tensor, Mapping)):
            return batch_size_of(batch[0])
        return len(batch)
    return 0


class TrainingStats(Callback):
    """Measures images/s across all ranks and reads `datamodule.skipped_files()`; logs both every `log_every_n_steps`.

    Throughput is the wall time between consecutive training batch ends on the host, so no device synchronisation
    is added; over a window it matches the device's rate because the queue of launched kernels is bounded. Logged as
    `perf/images_per_sec` (and `data/skipped_files` when the data module has `skipped_files()`) on rank 0.
    """

    def __init__(self, log_every_n_batches: int | None = None):
        super().__init__()
        self.log_every_n_batches = log_every_n_batches
        self.images_per_sec: float | None = None
        self.skipped_files: int | None = None
        self._last_time: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restart the clock: the epoch boundary is not training time."""
        self._last_time = None  # the gap across validation / epoch boundaries is not training time

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restart the clock: validation is not training time."""
        self._last_time = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Update images/s; log it and the skipped-file count every N batches."""
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:
            rate = batch_size_of(batch) * trainer.world_size / (now - self._last_time)
            ema = self.images_per_sec
            decay = THROUGHPUT_EMA_DECAY
            self.images_per_sec = rate if ema is None else decay * ema + (1 - decay) * rate
        self._last_time = now
        every = self.log_every_n_batches or trainer.log_every_n_steps or 50
        if (batches_seen(trainer) + 1) % every == 0:
            self._read_skipped(trainer)
            self._log(trainer, batches_seen(trainer))  # the step index Lightning logs this batch's metrics under

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refresh the skipped-file count."""
        self._read_skipped(trainer)

    def _read_skipped(self, trainer: pl.Trainer) -> None:
        counter = getattr(trainer.datamodule, "skipped_files", None)
        if callable(counter):
            try:
                self.skipped_files = int(counter())
            except Exception:  # a counter must never stop training
                self.skipped_files = None

    def _log(self, trainer: pl.Trainer, step: int) -> None:
        if not trainer.is_global_zero:
            return
        metrics: dict[str, float] = {}
        if self.images_per_sec is not None:
            metrics["perf/images_per_sec"] = float(self.images_per_sec)
        if self.skipped_files is not None:
            metrics["data/skipped_files"] = float(self.skipped_files)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report skipped files once training is over."""
        self._read_skipped(trainer)
        if trainer.is_global_zero and self.skipped_files:
            log.warning("data: %d unreadable files were skipped during training", self.skipped_files)


class ThroughputProgressBar(TQDMProgressBar):
    """TQDM progress bar that adds `img/s` and, when non-zero, the skipped-file count to the shown metrics.

    With `max_batches` (the config's `lightning.trainer.max_steps`, which counts batches) the bar's total is capped
    at that many batches: Lightning caps it at its optimizer-step `max_steps`, which is twice as many for a GAN
    autoencoder that steps two optimizers per batch, so the bar would otherwise end half full.
    """

    def __init__(self, stats: TrainingStats, refresh_rate: int = 1, process_position: int = 0,
                 max_batches: int | None = None):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.stats = stats
        self.max_batches = int(max_batches) if max_batches else None

    @property
    def total_train_batches(self) -> int | float:
        """Batches in this epoch's bar: Lightning's count, capped at `max_batches`."""
        total = super().total_train_batches
        return total if self.max_batches is None else min(total, self.max_batches)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float]:
        """Lightning's bar metrics plus `img/s` and `skipped`."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if self.stats.images_per_sec is not None:
            metrics["img/s"] = f"{self.stats.images_per_sec:.1f}"
        if self.stats.skipped_files:
            metrics["skipped"] = self.stats.skipped_files
        return metrics
