"""Throughput and skipped-file statistics, logged to the CSV file; the progress bar shows them."""

import csv
import os

import torch

from ldm.trainer.loggers import ResumableCSVLogger
from ldm.trainer.progress import ThroughputProgressBar, TrainingStats, batch_size_of
from trainer_dummies import TinyModel
from trainer_helpers import tiny_data, tiny_trainer


def test_batch_size_of():
    assert batch_size_of({"image": torch.zeros(5, 8, 8, 3), "caption": ["a"] * 5}) == 5
    assert batch_size_of({"caption": ["a", "b"]}) == 2
    assert batch_size_of([torch.zeros(3, 2), torch.zeros(3)]) == 3
    assert batch_size_of(torch.zeros(7, 1)) == 7


def test_stats_logged_and_shown(tmp_path):
    model = TinyModel()
    model.learning_rate = 1e-3
    stats = TrainingStats(log_every_n_batches=2)
    bar = ThroughputProgressBar(stats)
    trainer = tiny_trainer(tmp_path, [stats, bar], max_steps=4, logger=ResumableCSVLogger(str(tmp_path)),
                           enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(model, tiny_data(skipped=3))
    assert stats.images_per_sec is not None and stats.images_per_sec > 0
    assert stats.skipped_files == 3
    shown = bar.get_metrics(trainer, model)
    assert float(shown["img/s"]) > 0 and shown["skipped"] == 3
    with open(os.path.join(tmp_path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["data/skipped_files"] for r in rows if r.get("data/skipped_files")] == ["3.0", "3.0"]
    assert any(r.get("perf/images_per_sec") for r in rows)


def test_csv_logger_appends_on_resume(tmp_path):
    first = ResumableCSVLogger(str(tmp_path))
    first.log_metrics({"a": 1.0}, step=0)
    first.save()
    second = ResumableCSVLogger(str(tmp_path))
    second.log_metrics({"a": 2.0, "b": 5.0}, step=1)
    second.save()
    with open(os.path.join(tmp_path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [("0", "1.0", ""), ("1", "2.0", "5.0")]


def test_bar_total_counts_batches_not_optimizer_steps(tmp_path):
    """A GAN autoencoder steps 2 optimizers per batch; max_steps=3 batches is Trainer(max_steps=6): the bar says 3."""
    model = TinyModel()
    model.learning_rate = 1e-3
    stats = TrainingStats()
    bar = ThroughputProgressBar(stats, max_batches=3)
    trainer = tiny_trainer(tmp_path, [stats, bar], max_steps=6, enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(model, tiny_data(n=64))  # 16 batches an epoch
    assert bar.train_progress_bar.total == 3
    assert ThroughputProgressBar(stats).max_batches is None
