"""ImageLogger: calls `model.log_images` every N training batches and writes PNG grids plus logger images (wandb:
`wandb.Image` with the items' captions; TensorBoard: images)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ldm.util import batches_seen

# Images per row of a grid (CompVis: 4).
GRID_ROWS = 4


def image_grid(images: torch.Tensor, clamp: bool = True, rescale: bool = True, nrow: int = GRID_ROWS) -> np.ndarray:
    """B,C,H,W in [-1, 1] -> H,W,3 uint8 grid (1-channel images are shown grey)."""
    import torchvision

    x = images.detach().float().cpu()
    if clamp:
        x = x.clamp(-1.0, 1.0)
    grid = torchvision.utils.make_grid(x, nrow=nrow)  # repeats 1-channel inputs to 3 channels
    if rescale:
        grid = (grid + 1.0) / 2.0
    grid = grid.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return (grid * 255.0).round().astype(np.uint8)


def batch_captions(batch: Any, key: str | None = None) -> list[str]:
    """Per-item text of a batch for image captions: `batch[key]` (the model's cond_stage_key) or `caption` when a
    list of strings, else `class_label` as "class N"; empty when the batch has none."""
    if not isinstance(batch, dict):
        return []
    for name in (key, "caption"):
        value = batch.get(name) if name else None
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return list(value)
    labels = batch.get("class_label")
    if isinstance(labels, torch.Tensor) and labels.ndim == 1:
        return [f"class {int(v)}" for v in labels.tolist()]
    return []


def grid_caption(tag: str, step: int, n_images: int, captions: list[str]) -> str:
    """`<tag> at batch <step>`, plus the items' captions in grid order when the grid shows one image per item."""
    title = f"{tag} at batch {step}"
    if captions and n_images <= len(captions) and (n_images > 1 or len(captions) == 1):
        return title + ": " + "; ".join(f"{i + 1}) {c}" for i, c in enumerate(captions[:n_images]))
    return title


def image_filename(key: str, step: int, epoch: int, batch_idx: int) -> str:
    """CompVis grid file name: `<key>_gs-000100_e-000001_b-000004.png`."""
    return f"{key}_gs-{step:06}_e-{epoch:06}_b-{batch_idx:06}.png"


class ImageLogger(Callback):
    """Logs `pl_module.log_images(batch, split=...)` as PNG grids under `<logdir>/images/<split>/` and to the logger.

    Training images are logged after batch indices 1, 2, 4, ... up to `batch_frequency` (with `increase_log_steps`)
    and then every `batch_frequency` training batches (counted with `ldm.util.batches_seen`, not optimizer steps);
    index 0 only with `log_first_step`. Validation images are logged once per validation run, from its first batch.
    Only rank 0 computes and writes. The model runs in eval mode under no_grad (and the trainer's precision
    context) while logging and is put back in its previous mode afterwards.
    """

    def __init__(self, batch_frequency: int = 750, max_images: int = 4, clamp: bool = True,
                 increase_log_steps: bool = True, rescale: bool = True, disabled: bool = False,
                 log_on_batch_idx: bool = False, log_first_step: bool = False,
                 log_images_kwargs: dict[str, Any] | None = None, log_val: bool = True):
        super().__init__()
        if int(batch_frequency) < 1:
            raise ValueError(f"ImageLogger: batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = int(batch_frequency)
        self.max_images = int(max_images)
        self.clamp = clamp
        self.increase_log_steps = increase_log_steps
        self.rescale = rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.log_val = log_val
        self._warned: set[str] = set()

    # --------------------------------------------------------------------------------------------- schedule
    def should_log(self, index: int) -> bool:
        """True for the batch indices at which training images are logged (see the class docstring)."""
        if self.disabled:
            return False
        if index == 0:
            return self.log_first_step
        if index % self.batch_freq == 0:
            return True
        return self.increase_log_steps and index < self.batch_freq and (index & (index - 1)) == 0

    # -------------------------------------------------------------------------------------------------- hooks
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Log training images when the schedule says so."""
        index = batch_idx if self.log_on_batch_idx else batches_seen(trainer)
        if self.should_log(index):
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log validation images from the first batch of each validation run."""
        first = batch_idx == 0 and dataloader_idx == 0
        if self.log_val and not self.disabled and first and not trainer.sanity_checking:
            self.log_img(trainer, pl_module, batch, batch_idx, split="val")

    # ---------------------------------------------------------------------------------------------- logging
    def log_img(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                split: str = "train") -> dict[str, str]:
        """Compute and write one set of images; returns {key: png path} (empty on ranks > 0)."""
        if not trainer.is_global_zero or not callable(getattr(pl_module, "log_images", None)) or self.max_images <= 0:
            return {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        finally:
            pl_module.train(was_training)
        step = batches_seen(trainer)
        folder = os.path.join(trainer.default_root_dir, "images", split)
        os.makedirs(folder, exist_ok=True)
        written: dict[str, str] = {}
        captions = batch_captions(batch, getattr(pl_module, "cond_stage_key", None))
        for key, value in images.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 4:
                if key not in self._warned:
                    self._warned.add(key)
                    rank_zero_warn(f"ImageLogger: log_images()['{key}'] is not a B,C,H,W tensor; not logged")
                continue
            shown = value[: self.max_images]
            grid = image_grid(shown, clamp=self.clamp, rescale=self.rescale)
            path = os.path.join(folder, image_filename(key, step, trainer.current_epoch, batch_idx))
            from PIL import Image

            Image.fromarray(grid).save(path)
            written[key] = path
            tag = f"{split}/{key}"
            self._to_loggers(trainer, tag, grid, step, grid_caption(tag, step, shown.shape[0], captions))
        return written

    @staticmethod
    def _to_loggers(trainer: pl.Trainer, tag: str, grid: np.ndarray, step: int, caption: str | None = None) -> None:
        """Send the grid to wandb (a `wandb.Image` with `caption`) / TensorBoard loggers (CSV has no images)."""
        for logger in trainer.loggers:
            name = type(logger).__name__
            if name == "WandbLogger":
                logger.log_image(key=tag, images=[grid], step=step, caption=[caption or tag])
            elif name == "TensorBoardLogger":
                logger.experiment.add_image(tag, grid, global_step=step, dataformats="HWC")
