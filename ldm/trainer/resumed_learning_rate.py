"""On resume, train at the learning rate the config gives now, not the one saved with the optimizer.

Lightning restores each optimizer's param groups (and each scheduler's `base_lrs`) from the checkpoint, after
`configure_optimizers` built them at the configured rate: a changed `model.base_learning_rate` (lowered after a
divergence, as the non-finite guard suggests) or a new device count would be printed by main.py and then silently
ignored. This callback records the configured rates before the restore and re-applies them after it, keeping the
schedule's progress: a group that the checkpoint left at `saved * f` (f = the scheduler's current factor) continues at
`configured * f`, and the scheduler's base rate becomes the configured one.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info


def _base_rate(group: dict[str, Any]) -> float:
    """A param group's rate before any schedule factor: `initial_lr` once a scheduler is attached, else `lr`."""
    return float(group.get("initial_lr", group["lr"]))


def _set_lr(group: dict[str, Any], value: float) -> None:
    if isinstance(group["lr"], torch.Tensor):  # capturable / fused optimizers may keep lr as a tensor
        group["lr"].fill_(value)
    else:
        group["lr"] = value


class ResumedLearningRate(pl.Callback):
    """Re-applies the configured learning rate of every optimizer param group after Lightning's resume.

    Recorded at `on_fit_start` (optimizers and schedulers exist, nothing is restored yet) and applied at
    `on_train_start` (the checkpoint's optimizer and scheduler states are loaded). A fresh run is left alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.configured: list[list[float]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.configured = [[_base_rate(g) for g in opt.param_groups] for opt in trainer.optimizers]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None or not self.configured:
            return
        changes = []
        for index, (optimizer, rates) in enumerate(zip(trainer.optimizers, self.configured)):
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
            for g, (group, configured) in enumerate(zip(optimizer.param_groups, rates)):
                saved = _base_rate(group)
                if math.isclose(saved, configured, rel_tol=1e-9, abs_tol=0.0):
                    continue
                factor = float(group["lr"]) / saved if saved else 1.0  # where the schedule stands
                if "initial_lr" in group:
                    group["initial_lr"] = configured
                _set_lr(group, configured * factor)
                for scheduler in schedulers:
                    if g < len(getattr(scheduler, "base_lrs", ())):
                        scheduler.base_lrs[g] = configured
                    last = getattr(scheduler, "_last_lr", None)
                    if last is not None and g < len(last):
                        last[g] = configured * factor
                name = f"optimizer {index}" + (f" group {g}" if len(optimizer.param_groups) > 1 else "")
                changes.append(f"{name}: {saved:.3e} -> {configured:.3e}")
        if changes:
            rank_zero_info("learning rate: the checkpoint was training at a different rate than the config now "
                           "gives; continuing at the configured one, the schedule keeps its place "
                           f"({'; '.join(changes)})")
