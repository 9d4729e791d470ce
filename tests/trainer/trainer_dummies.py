"""Tiny models and data for the trainer tests (importable as `trainer_dummies` from config targets)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ldm.util import batches_seen, instantiate_from_config


class RandomImages(Dataset):
    """`n` fixed random images, batch-dict convention: `image` H,W,C in [-1, 1]."""

    def __init__(self, n: int = 16, size: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, size, size, 3, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "caption": f"image {i}"}


class TinyDataModule(pl.LightningDataModule):
    """DataModuleFromConfig look-alike: `batch_size`, dataset configs per split, `skipped_files()`."""

    def __init__(self, batch_size: int, train: Any = None, validation: Any = None, test: Any = None,
                 num_workers: int = 0, skipped: int = 0, require_root: str | None = None):
        super().__init__()
        self.batch_size = batch_size
        self.configs = {k: v for k, v in (("train", train), ("validation", validation), ("test", test)) if v}
        self.num_workers = num_workers
        self.skipped = skipped
        self.require_root = require_root
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.require_root is not None and not os.path.isdir(self.require_root):
            raise FileNotFoundError(f"data root {self.require_root} does not exist")
        if not self.datasets:
            self.datasets = {k: instantiate_from_config(v) for k, v in self.configs.items()}

    def skipped_files(self) -> int:
        return self.skipped

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class TinyModel(pl.LightningModule):
    """One-conv "autoencoder" with the interface main.py expects (learning_rate, monitor, log_images)."""

    def __init__(self, channels: int = 4, monitor: str | None = None, fail_at_batch: int | None = None,
                 sleep_s: float = 0.0, test_step_enabled: bool = False, nan_at_batches: list[int] | None = None):
        super().__init__()
        self.nan_at_batches = set(nan_at_batches or ())
        self.enc = nn.Conv2d(3, channels, 3, padding=1)
        self.dec = nn.Conv2d(channels, 3, 3, padding=1)
        if monitor:
            self.monitor = monitor
        self.learning_rate: float | None = None
        self.fail_at_batch = fail_at_batch
        self.sleep_s = sleep_s
        self.seen_batches: list[int] = []
        self.log_images_calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dec(torch.relu(self.enc(x))))

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"].permute(0, 3, 1, 2)
        return torch.mean((self(x) - x) ** 2)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        index = batches_seen(self.trainer)
        if self.fail_at_batch is not None and index == self.fail_at_batch:
            raise RuntimeError(f"planned failure at batch {index}")
        if self.sleep_s:
            import time

            time.sleep(self.sleep_s)
        self.seen_batches.append(index)
        loss = self._loss(batch)
        if index in self.nan_at_batches:  # a diverging batch: NaN loss, NaN gradients
            loss = loss * float("nan")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], split: str = "train", **kwargs: Any) -> dict[str, torch.Tensor]:
        self.log_images_calls.append((self.training, torch.is_grad_enabled()))
        x = batch["image"].permute(0, 3, 1, 2)
        return {"inputs": x, "reconstructions": self(x)}


class TinyTestModel(TinyModel):
    """TinyModel with a test_step (for the after-training test run)."""

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))


class TinyGAN(pl.LightningModule):
    """Manual optimization with two optimizers per batch (like the GAN autoencoders): global_step += 2 per batch."""

    optimizer_steps_per_batch = 2

    def __init__(self, channels: int = 4):
        super().__init__()
        self.automatic_optimization = False
        self.gen = nn.Conv2d(3, 3, 3, padding=1)
        self.disc = nn.Conv2d(3, 1, 3, padding=1)
        self.learning_rate: float | None = None
        self.accumulate_grad_batches = 1
        self.monitor = "val/loss"

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["image"].permute(0, 3, 1, 2)
        opt_g, opt_d = self.optimizers()
        n = self.accumulate_grad_batches
        update = (batches_seen(self.trainer) + 1) % n == 0
        self.toggle_optimizer(opt_g)
        y = self.gen(x)
        loss_g = torch.mean((y - x) ** 2) - 0.01 * self.disc(y).mean()
        self.manual_backward(loss_g / n)
        if update:
            opt_g.step()
            opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)
        loss_d = torch.mean(torch.relu(1 - self.disc(x))) + torch.mean(torch.relu(1 + self.disc(y.detach())))
        self.manual_backward(loss_d / n)
        if update:
            opt_d.step()
            opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log("train/loss", loss_g, prog_bar=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["image"].permute(0, 3, 1, 2)
        self.log("val/loss", torch.mean((self.gen(x) - x) ** 2))

    def configure_optimizers(self):
        return [torch.optim.Adam(self.gen.parameters(), lr=self.learning_rate),
                torch.optim.Adam(self.disc.parameters(), lr=self.learning_rate)]

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, torch.Tensor]:
        x = batch["image"].permute(0, 3, 1, 2)
        return {"inputs": x, "reconstructions": self.gen(x)}


def tiny_config(model: str = "trainer_dummies.TinyModel", n: int = 16, batch_size: int = 4,
                **trainer: Any) -> dict[str, Any]:
    """A complete config dict (model, data, lightning) for the dummies."""
    dataset = {"target": "trainer_dummies.RandomImages", "params": {"n": n, "size": 8}}
    trainer_cfg = {"accelerator": "cpu", "devices": 1, "max_steps": 4, "log_every_n_steps": 1,
                   "enable_model_summary": False, "num_sanity_val_steps": 0}
    trainer_cfg.update(trainer)
    return {
        "model": {"base_learning_rate": 1.0e-3, "target": model, "params": {}},
        "data": {"target": "trainer_dummies.TinyDataModule",
                 "params": {"batch_size": batch_size, "train": dataset, "validation": dataset}},
        "lightning": {"trainer": trainer_cfg,
                      "callbacks": {"image_logger": {"params": {"batch_frequency": 2, "max_images": 2}}}},
    }


class RecordSeen(pl.Callback):
    """Appends the `file_path_` of every training item to `<folder>/seen_rank<global rank>.txt` (which data each
    DDP rank trained on)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"seen_rank{trainer.global_rank}.txt"), "a") as f:
            f.writelines(f"{path}\n" for path in batch["file_path_"])
