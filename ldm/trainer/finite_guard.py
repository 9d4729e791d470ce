"""Stop a diverged run before it overwrites good checkpoints: non-finite loss / gradient detection without host syncs.

A NaN learning step poisons every weight it touches, and from then on each periodic save would replace `last.ckpt`
and the top-k files with NaN weights. `NonFiniteGuard` records, on the device, the first training batch whose loss or
gradient norm was not finite (no `.item()` per step) and looks at that record only every `check_every_n_batches`
batches, at the end of training and right before every checkpoint save (`LDMModelCheckpoint` asks it). Training then
stops with `NonFiniteTrainingError`, which names the batch; no checkpoint is written after the first bad batch.

With `max_skipped_batches > 0` the guard instead drops the update of a batch whose gradients are not finite (its
gradients are set to None, so the optimizer leaves the weights and moments alone) up to that many times, then stops.
That mode reads one flag per optimizer step from the device (a host sync), which is why it is off by default.
Under fp16 mixed precision the GradScaler owns non-finite gradients (it skips those steps and lowers the scale), so
only the loss is checked there.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ldm.util import batches_seen

DEFAULT_CHECK_EVERY_N_BATCHES = 25


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; the message names the batch."""


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `tensors` that hold a NaN or an infinity (one host sync)."""
    names = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(tensors[k]).all().to("cpu", non_blocking=True) for k in names])
    return [k for k, ok in zip(names, finite.tolist()) if not ok]


def _loss_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class NonFiniteGuard(Callback):
    """Records the first batch with a non-finite loss or gradient norm on the device; stops training when seen."""

    def __init__(self, check_every_n_batches: int = DEFAULT_CHECK_EVERY_N_BATCHES, check_gradients: bool = True,
                 max_skipped_batches: int = 0):
        super().__init__()
        if int(check_every_n_batches) < 1:
            raise ValueError(f"check_every_n_batches must be >= 1, got {check_every_n_batches}")
        if int(max_skipped_batches) < 0:
            raise ValueError(f"max_skipped_batches must be >= 0, got {max_skipped_batches}")
        self.check_every_n_batches = int(check_every_n_batches)
        self.check_gradients = bool(check_gradients)
        self.max_skipped_batches = int(max_skipped_batches)
        self.skipped: list[int] = []
        self._first_bad: torch.Tensor | None = None  # batch index on the device, -1 while all is finite
        self._what: torch.Tensor | None = None  # bits: 1 = loss, 2 = gradient norm

    # --------------------------------------------------------------------------------------------- recording
    def _record(self, bad: torch.Tensor, batch: int, what: int) -> None:
        if self._first_bad is None or self._first_bad.device != bad.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
            self._what = torch.zeros((), dtype=torch.long, device=bad.device)
        new = bad & (self._first_bad < 0)
        self._first_bad = torch.where(new, torch.full_like(self._first_bad, batch), self._first_bad)
        same_batch = bad & (self._first_bad == batch)  # loss and gradient of the first bad batch both count
        self._what = torch.where(same_batch, self._what | what, self._what)

    def _scaler_owns_gradients(self, trainer: pl.Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Gradient norm check (device flag); in skip mode, drop this update when it is not finite."""
        if not self.check_gradients or self._scaler_owns_gradients(trainer):
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        bad = ~torch.isfinite(norm)
        if self.max_skipped_batches == 0:
            self._record(bad, batches_seen(trainer), 2)
            return
        if bool(bad):  # skip mode: one host sync per optimizer step, by choice
            batch = batches_seen(trainer)
            if not self.skipped or self.skipped[-1] != batch:
                self.skipped.append(batch)
            if len(self.skipped) > self.max_skipped_batches:
                self._record(bad, batch, 2)
                self.raise_if_bad(trainer)
            rank_zero_warn(f"non-finite gradient norm at training batch {batch}: update skipped "
                           f"({len(self.skipped)} of at most {self.max_skipped_batches} skipped batches)")
            for p in params:
                p.grad = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Loss check (device flag); every `check_every_n_batches` batches, stop if anything was non-finite."""
        done = batches_seen(trainer)  # index of this batch (not yet counted as completed)
        loss = _loss_of(outputs)
        if loss is not None and self.max_skipped_batches == 0:
            self._record(~torch.isfinite(loss.detach()).all(), done, 1)
        if (done + 1) % self.check_every_n_batches == 0:
            self.raise_if_bad(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final check, so a run whose last batches diverged does not end with status 0."""
        self.raise_if_bad(trainer)

    # ----------------------------------------------------------------------------------------------- checking
    def first_bad_batch(self) -> int | None:
        """Index of the first training batch with a non-finite loss / gradient, or None (one host sync)."""
        if self._first_bad is None:
            return None
        value = int(self._first_bad)
        return None if value < 0 else value

    def raise_if_bad(self, trainer: pl.Trainer) -> None:
        """Raise NonFiniteTrainingError if a non-finite loss or gradient norm was recorded on any rank."""
        first = self.first_bad_batch()
        if trainer.world_size > 1:  # every rank must stop together; the earliest bad batch wins
            flag = torch.tensor([first if first is not None else -1], device=trainer.strategy.root_device)
            gathered = trainer.strategy.all_gather(flag).flatten().tolist()
            bad = [b for b in gathered if b >= 0]
            first = min(bad) if bad else None
        if first is None:
            return
        kinds = int(self._what) if self._what is not None else 1
        what = {1: "loss", 2: "gradient norm", 3: "loss and gradient norm"}.get(kinds, "loss")
        raise NonFiniteTrainingError(
            f"non-finite {what} at training batch {first} (NaN or inf; lower model.base_learning_rate, check the "
            "data, or use gradient clipping via lightning.trainer.gradient_clip_val); no checkpoint was written "
            "after it")
