"""SIGUSR1 -> save `last.ckpt` and keep training (SIGTERM and Ctrl-C are handled by Lightning + LDMModelCheckpoint)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ldm.trainer.checkpointing import LDMModelCheckpoint


class CheckpointOnSignal(Callback):
    """Saves `last.ckpt` at the next batch boundary after SIGUSR1 (e.g. `kill -USR1 <pid>`), then trains on.

    The handler only sets a flag; the save happens between batches, where the state is consistent. Under DDP only
    rank 0's flag counts and is broadcast every `sync_every_n_batches` batches (a one-element collective), so all
    ranks save at the same batch even when the signal reached only the launching process. A handler that was
    installed before (e.g. Lightning's SLURM auto-requeue) is still called.

    SIGTERM: Lightning stops after the current batch and raises SIGTERMException; LDMModelCheckpoint.on_exception
    then writes `last.ckpt` and main.py exits with status 0.
    """

    def __init__(self, signum: int = getattr(signal, "SIGUSR1", 10), sync_every_n_batches: int = 1):
        super().__init__()
        self.signum = signum
        self.sync_every_n_batches = max(1, int(sync_every_n_batches))
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        previous = self._previous
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here, after Lightning registered its own handlers at the start of fit, so both run.
        """Install the SIGUSR1 handler, chaining to the one in place."""
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            self._previous = signal.getsignal(self.signum)
            signal.signal(self.signum, self._handler)
            self._installed = True

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the previous handler back."""
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Put the previous handler back."""
        self._restore()

    def _agreed(self, trainer: pl.Trainer) -> bool:
        """Rank 0's request, seen by every rank (no collective on a single process)."""
        if trainer.world_size <= 1:
            return self.requested
        if (trainer.fit_loop.epoch_loop.batch_progress.total.completed + 1) % self.sync_every_n_batches:
            return False
        flag = torch.tensor([1 if self.requested else 0], device=trainer.strategy.root_device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Save last.ckpt if a save was requested (agreed across ranks)."""
        if not self._agreed(trainer):
            return
        self.requested = False
        callback = trainer.checkpoint_callback
        if not isinstance(callback, LDMModelCheckpoint):
            rank_zero_warn(f"signal {self.signum} ignored: no LDMModelCheckpoint callback knows where last.ckpt goes")
            return
        path = callback.save_last_now(trainer)
        rank_zero_info(f"signal {self.signum}: saved {path}; training continues")
