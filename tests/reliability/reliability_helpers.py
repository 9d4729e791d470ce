"""Faults to inject: callbacks named as config targets by the reliability tests, and a file on a full disk."""

from __future__ import annotations

import errno
import os
import signal

import torch
from pytorch_lightning.callbacks import Callback

from ldm.util import batches_seen


class SignalAtBatch(Callback):
    """Sends `signum` (default SIGTERM) to this process at the end of training batch `batch` (1-based count)."""

    def __init__(self, batch: int, signum: int = int(signal.SIGTERM)):
        super().__init__()
        self.batch = int(batch)
        self.signum = int(signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batches_seen(trainer) + 1 == self.batch:
            os.kill(os.getpid(), self.signum)


class PoisonWeightsAtBatch(Callback):
    """Writes a NaN into the first parameter at the start of training batch `batch` (0-based): a diverging step."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch = int(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batches_seen(trainer) == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two nested structures of tensors / numbers (inf if they differ in shape
    or keys)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        if a.numel() == 0:
            return 0.0
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")
        return float((a.double() - b.double()).abs().max())
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return float("inf")
        return max([max_abs_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max([max_abs_diff(x, y) for x, y in zip(a, b)] or [0.0])
    return 0.0 if a == b else float("inf")


class FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def flush(self):
        self.f.flush()
