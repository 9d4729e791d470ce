"""ModelCheckpoint that counts training batches and owns `last.ckpt`: periodic, final, on request, and on a crash."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ldm.trainer.finite_guard import NonFiniteGuard, NonFiniteTrainingError, nonfinite_tensors
from ldm.util import batches_seen

# Default checkpoint file name: `epoch=000003-batch=000012000.ckpt` (CompVis used `{epoch:06}`; batches are added
# because step-based saves happen several times per epoch).
DEFAULT_FILENAME = "{epoch:06}-{batch:09}"
# Top-k kept when the model names a `monitor` metric (CompVis: 3).
DEFAULT_TOP_K = 3
# Cadence of periodic checkpoints, in training batches, for models without a `monitor` metric.
DEFAULT_EVERY_N_BATCHES = 5000


class LDMModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with CompVis step semantics and a reliable `last.ckpt`.

    - `every_n_train_steps` counts training batches (as `max_steps` does in CompVis configs), not optimizer steps,
      so a GAN autoencoder that steps two optimizers per batch still saves every N batches.
    - `last.ckpt` is always overwritten in place (never `last-v1.ckpt`) and written once more when training ends.
    - `save_last_now(trainer)` writes `last.ckpt` on request (SIGUSR1); all ranks must call it.
    - On an exception during fit (including KeyboardInterrupt and SIGTERM) rank 0 writes `last.ckpt` without any
      collective call, if at least one training batch ran in this process; the exception itself is not touched.
    - `{batch}` is available in `filename`.
    - Nothing non-finite is ever written: before each save the `NonFiniteGuard` record is checked and the weights
      are scanned; either one stops training with NonFiniteTrainingError instead of replacing a good file.
    """

    def __init__(self, dirpath: str | None = None, filename: str | None = None, monitor: str | None = None,
                 verbose: bool = False, save_last: bool | None = None, save_top_k: int = 1,
                 save_on_exception: bool = True, save_weights_only: bool = False, mode: str = "min",
                 auto_insert_metric_name: bool = True, every_n_train_steps: int | None = None,
                 train_time_interval: Any = None, every_n_epochs: int | None = None,
                 save_on_train_epoch_end: bool | None = None, enable_version_counter: bool = True):
        # Lightning's own step trigger stays off: the batch cadence is handled in on_train_batch_end.
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
                         save_top_k=save_top_k, save_weights_only=save_weights_only, mode=mode,
                         auto_insert_metric_name=auto_insert_metric_name, every_n_train_steps=None,
                         train_time_interval=train_time_interval, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=save_on_train_epoch_end,
                         enable_version_counter=enable_version_counter)
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_batches = int(every_n_train_steps or 0)
        self.save_last_on_exception = save_on_exception
        self._last_batch_saved: int | None = None
        self._batches_this_process = 0

    # ---------------------------------------------------------------------------------------------- helpers
    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["batch"] = torch.tensor(batches_seen(trainer))
        return candidates

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.refuse_nonfinite(trainer)
        super()._save_checkpoint(trainer, filepath)
        self._last_batch_saved = batches_seen(trainer)

    def refuse_nonfinite(self, trainer: pl.Trainer) -> None:
        """Raise NonFiniteTrainingError if the guard saw a bad batch or any weight / EMA / buffer is not finite."""
        guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), None)
        if guard is not None:
            guard.raise_if_bad(trainer)
        state = trainer.lightning_module.state_dict()
        bad = nonfinite_tensors(state)
        if bad:
            raise NonFiniteTrainingError(
                f"{len(bad)} of {len(state)} tensors of the model are not finite (e.g. {bad[0]}) after training "
                f"batch {batches_seen(trainer)}; checkpoint not written, training stopped")

    @property
    def last_good(self) -> tuple[str | None, int | None]:
        """(path of last.ckpt if it exists, the batch count it was written at by this process or None)."""
        path = self.last_path
        if path is None or not os.path.isfile(path):
            return None, None
        return path, self._last_batch_saved

    @property
    def last_path(self) -> str | None:
        """Where `last.ckpt` goes (None before `setup` resolved the folder)."""
        if self.dirpath is None:
            return None
        return os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def _can_save(self, trainer: pl.Trainer) -> bool:
        return (not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking)

    # ------------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count this process's batches from zero; overwrite an existing last.ckpt in place."""
        super().on_train_start(trainer, pl_module)
        self._batches_this_process = 0
        # Overwrite an existing last.ckpt (e.g. the one being resumed from) instead of writing last-v1.ckpt.
        last = self.last_path
        if self.save_last and last is not None and os.path.isfile(last):
            self.last_model_path = last

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Save top-k (without a monitor) and last.ckpt every `every_n_batches` training batches."""
        self._batches_this_process += 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.every_n_batches < 1 or not self._can_save(trainer):
            return
        done = batches_seen(trainer) + 1  # this batch is not yet counted as completed inside the hook
        if done % self.every_n_batches != 0 or self._last_batch_saved == done:
            return
        candidates = self._monitor_candidates(trainer)
        candidates["batch"] = torch.tensor(done)
        if self.monitor is None or self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_batch_saved = done

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write `last.ckpt` for the final state unless it was just written."""
        if self.save_last and self._can_save(trainer) and self._last_batch_saved != batches_seen(trainer):
            self.save_last_now(trainer)

    def save_last_now(self, trainer: pl.Trainer) -> str | None:
        """Write `last.ckpt` now (collective under DDP: every rank calls it, rank 0 writes)."""
        if not self._can_save(trainer):
            return None
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_batch_saved = batches_seen(trainer)
        return self.last_model_path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Rank 0 writes `last.ckpt` of the state at the failure; never raises, so the original error surfaces."""
        if not (self.save_last_on_exception and self._batches_this_process > 0 and self._can_save(trainer)):
            return
        path = self.last_path
        if path is None or isinstance(exception, NonFiniteTrainingError):
            return
        try:  # local check only: other ranks may be dead, so no collective here
            bad = nonfinite_tensors(trainer.lightning_module.state_dict())
        except Exception:
            bad = ["<unreadable>"]
        if bad:
            rank_zero_warn(f"not saving {path} after {type(exception).__name__}: {len(bad)} model tensors are not "
                           f"finite (e.g. {bad[0]}); the previous {os.path.basename(path)} is kept")
            return
        try:
            previous, self.last_model_path = self.last_model_path, path
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            # strategy.save_checkpoint writes on rank 0 only and, unlike trainer.save_checkpoint, has no barrier:
            # the other ranks may be dead or stuck in a collective.
            trainer.strategy.save_checkpoint(checkpoint, path)
            self._last_batch_saved = batches_seen(trainer)
            if trainer.is_global_zero:
                rank_zero_info(f"{type(exception).__name__} during training: saved {path} "
                               f"(after {batches_seen(trainer)} training batches)")
        except Exception as err:  # the original exception matters more than this save
            self.last_model_path = previous
            rank_zero_warn(f"could not save {path} after {type(exception).__name__}: {err!r}")
