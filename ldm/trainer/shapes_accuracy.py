"""ShapesAccuracy: every N training batches, sample balanced shapes captions and log the checker's accuracy.

This is the accuracy-vs-time curve of a text- or class-conditional model trained on the shapes data: each point is
written to `<logdir>/shapes_accuracy.csv` (batch, seconds of training so far, accuracy per attribute with its 95%
interval) and to every logger as `shapes/<attribute>`. Only rank 0 samples (no collective calls, so other DDP ranks
simply wait at their next synchronisation); the model is put back in its previous mode afterwards.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ldm.data.shapes import ShapesDataset
from ldm.files import atomic_write
from ldm.util import batches_seen

log = logging.getLogger(__name__)

CURVE_FILE = "shapes_accuracy.csv"


def read_curve(logdir: str) -> list[dict[str, float]]:
    """The rows of `<logdir>/shapes_accuracy.csv` as floats, oldest first (empty if there is none)."""
    path = os.path.join(logdir, CURVE_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def training_shapes(trainer: pl.Trainer) -> ShapesDataset | None:
    """The training set when it is the shapes data (unwrapped), else None."""
    datasets = getattr(trainer.datamodule, "datasets", None) or {}
    dataset = datasets.get("train")
    dataset = getattr(dataset, "data", dataset)  # WrappedDataset
    return dataset if isinstance(dataset, ShapesDataset) else None


class ShapesAccuracy(Callback):
    """Checker accuracy of `n` balanced captions sampled with `sampler` / `steps` / guidance `scale` (EMA weights)
    after every `every_n_batches` training batches and after the last one; `seed` fixes captions and noise, so
    the points of one run differ only by the weights. Captions name as many objects as the training images hold.
    Switches itself off (with a log line) unless the model trains on the shapes data with captions or labels."""

    def __init__(self, every_n_batches: int = 500, n: int = 64, sampler: str = "ddim", steps: int = 20,
                 scale: float = 3.0, seed: int = 0, batch_size: int = 64):
        super().__init__()
        if int(every_n_batches) < 1 or int(n) < 1:
            raise ValueError(f"ShapesAccuracy: every_n_batches and n must be >= 1, got {every_n_batches}, {n}")
        self.every, self.n, self.sampler, self.steps = int(every_n_batches), int(n), sampler, int(steps)
        self.scale, self.seed, self.batch_size = float(scale), int(seed), int(batch_size)
        self._train_seconds = 0.0
        self._since: float | None = None
        self._last_batch = -1
        self.num_objects: int | None = None  # None: off

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = training_shapes(trainer)
        if data is None or getattr(pl_module, "cond_stage_key", None) not in ("caption", "class_label"):
            log.info("ShapesAccuracy is off: it needs a caption- or class-conditional model on the shapes data")
            self.num_objects = None
            return
        self.num_objects = data.num_objects if pl_module.cond_stage_key == "caption" else 1
        earlier = [r for r in read_curve(trainer.default_root_dir) if r["batch"] <= batches_seen(trainer)]
        self._train_seconds = earlier[-1]["train_seconds"] if earlier else 0.0  # a resumed run continues the clock

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        done = batches_seen(trainer) + 1
        if self.num_objects and done % self.every == 0:
            self._evaluate(trainer, pl_module, done)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = batches_seen(trainer)
        if self.num_objects and done != self._last_batch and done > 0:
            self._evaluate(trainer, pl_module, done)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, done: int) -> None:
        if self._since is not None:  # training time only: the evaluations themselves are not counted
            self._train_seconds += time.perf_counter() - self._since
        self._last_batch = done
        if trainer.is_global_zero:
            self._evaluate_rank_zero(trainer, pl_module, done)
        self._since = time.perf_counter()

    def _evaluate_rank_zero(self, trainer: pl.Trainer, pl_module: pl.LightningModule, done: int) -> None:
        from ldm.eval.shapes_model import evaluate

        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                _, _, checked = evaluate(pl_module, n=self.n, seed=self.seed, sampler=self.sampler,
                                         steps=self.steps, scale=self.scale, batch_size=self.batch_size,
                                         num_objects=self.num_objects)
        finally:
            pl_module.train(was_training)
        acc, ci = checked["accuracy"], checked["ci95"]
        row: dict[str, Any] = {"batch": done, "train_seconds": round(self._train_seconds, 1),
                               "eval_seconds": round(time.perf_counter() - start, 1), "n": self.n}
        for name in ci:  # the accuracies that have intervals: the attributes and "all" (or the scene metrics)
            row[name] = round(acc[name], 4)
            row[f"{name}_ci95_low"], row[f"{name}_ci95_high"] = (round(v, 4) for v in ci[name])
        self._append(trainer, row)
        for logger in trainer.loggers:
            logger.log_metrics({f"shapes/{name}": acc[name] for name in ci}, step=trainer.global_step)
        rank_zero_info(f"shapes accuracy after {done} batches ({self._train_seconds:.0f} s of training): " +
                       ", ".join(f"{name} {acc[name]:.2f}" for name in ci))

    @staticmethod
    def _append(trainer: pl.Trainer, row: dict[str, Any]) -> None:
        """Rewrite the curve file with the new row (atomic; a resumed run keeps its earlier rows)."""
        logdir = trainer.default_root_dir
        rows = [r for r in read_curve(logdir) if r["batch"] < row["batch"]]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (int(v) if k in ("batch", "n") else v) for k, v in r.items() if k in row})
        writer.writerow(row)
        atomic_write(os.path.join(logdir, CURVE_FILE), lambda f: f.write(buffer.getvalue().encode()))
