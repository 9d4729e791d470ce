"""On resume, follow a changed learning rate instead of the one saved with the optimizer.

Lightning restores each optimizer's param groups and each scheduler's state from the checkpoint, after
`configure_optimizers` built them at the configured rate: a changed `model.base_learning_rate` (lowered after a
divergence, as the non-finite guard suggests), batch size or device count would be printed by main.py and then silently
ignored. This callback saves the configured rates with the checkpoint and, when a resumed run's configured rate of a
param group differs from the saved one, scales every rate of that group by new / old: its current lr (so the schedule
keeps its place: a group at `old * f` continues at `new * f`), and the absolute rates that schedulers hold
(`initial_lr`, `base_lrs`, OneCycleLR's `max_lr` / `min_lr`, CyclicLR's `max_lrs`, the cosine schedules' `eta_min`,
ReduceLROnPlateau's `min_lrs`, and those of the schedulers inside SequentialLR / ChainedScheduler). A group whose
configured rate did not change is left exactly as restored (a ReduceLROnPlateau reduction stays).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

GROUP_RATES = ("lr", "initial_lr", "max_lr", "min_lr")  # absolute rates a param group may hold
LIST_RATES = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")  # per-group rates a scheduler may hold
SCALAR_RATES = ("eta_min",)  # one rate a scheduler holds for all its groups


def _configured_rate(group: dict[str, Any]) -> float:
    """The rate `configure_optimizers` gave a group: `initial_lr` once a scheduler is attached (lr may already carry
    the schedule's first factor), else `lr`."""
    return float(group.get("initial_lr", group["lr"]))


def _scale_group(group: dict[str, Any], ratio: float) -> None:
    for key in GROUP_RATES:
        value = group.get(key)
        if isinstance(value, torch.Tensor):  # capturable / fused optimizers may keep lr as a tensor
            value.mul_(ratio)
        elif isinstance(value, (int, float)):
            group[key] = value * ratio


def _schedulers_within(scheduler: Any) -> list[Any]:
    """A scheduler and those it drives (SequentialLR / ChainedScheduler), depth first."""
    children = getattr(scheduler, "_schedulers", None) or ()
    return [scheduler, *(inner for child in children for inner in _schedulers_within(child))]


def _scale_scheduler(scheduler: Any, ratios: dict[int, float], whole: float | None) -> None:
    """Scale the rates `scheduler` (and the schedulers inside it) holds: per-group lists at the changed groups'
    indices; one-for-all scalars only when every group changed by the same ratio (`whole`)."""
    seen: set[int] = set()  # a parent may hold the very list of a child (SequentialLR's _last_lr)
    for each in _schedulers_within(scheduler):
        for name in LIST_RATES:
            values = getattr(each, name, None)
            if isinstance(values, list) and id(values) not in seen:
                seen.add(id(values))
                for index, ratio in ratios.items():
                    if index < len(values) and isinstance(values[index], (int, float)):
                        values[index] = values[index] * ratio
        for name in SCALAR_RATES if whole is not None else ():
            value = getattr(each, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(each, name, value * whole)


class ResumedLearningRate(pl.Callback):
    """Scales the restored rates of every param group whose configured learning rate changed since the checkpoint.

    Configured rates are recorded at `on_fit_start` (optimizers exist, nothing is restored yet), saved with each
    checkpoint, and compared at `on_train_start` of a resumed run (the checkpoint's optimizer and scheduler states are
    loaded by then). A checkpoint written before this callback existed holds no configured rates: its groups'
    `initial_lr` (or `lr` where no scheduler is attached) stand in for them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.configured: list[list[float]] = []
        self.saved: list[list[float]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"configured": self.configured}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = state_dict.get("configured")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.configured = [[_configured_rate(g) for g in opt.param_groups] for opt in trainer.optimizers]

    def _saved_rates(self, trainer: pl.Trainer, index: int, optimizer: Any) -> list[float] | None:
        if self.saved is not None:
            return self.saved[index] if index < len(self.saved) else None
        scheduled = any(c.scheduler.optimizer is optimizer for c in trainer.lr_scheduler_configs)
        groups = optimizer.param_groups
        if scheduled and not all("initial_lr" in g for g in groups):
            return None  # e.g. ReduceLROnPlateau: lr alone does not tell the configured rate
        return [_configured_rate(g) for g in groups]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        changes = []
        for index, (optimizer, configured) in enumerate(zip(trainer.optimizers, self.configured)):
            saved = self._saved_rates(trainer, index, optimizer)
            if saved is None:
                continue
            if len(saved) != len(configured) or len(configured) != len(optimizer.param_groups):
                rank_zero_warn(f"learning rate: optimizer {index} has {len(optimizer.param_groups)} param groups, the "
                               f"checkpoint {len(saved)}: its restored rates are kept")
                continue
            ratios = [new / old if old else 1.0 for old, new in zip(saved, configured)]
            changed = [g for g, r in enumerate(ratios) if not math.isclose(r, 1.0, rel_tol=1e-9)]
            if not changed:
                continue
            same = len(changed) == len(ratios) and all(math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios)
            for g in changed:
                _scale_group(optimizer.param_groups[g], ratios[g])
                name = f"optimizer {index}" + (f" group {g}" if len(ratios) > 1 else "")
                changes.append(f"{name}: {saved[g]:.3e} -> {configured[g]:.3e}")
            for config in trainer.lr_scheduler_configs:
                if config.scheduler.optimizer is optimizer:
                    _scale_scheduler(config.scheduler, {g: ratios[g] for g in changed}, ratios[0] if same else None)
        if changes:
            rank_zero_info("learning rate: the config now gives a different rate than the checkpoint's run; the "
                           f"schedule keeps its place at the new rate ({'; '.join(changes)})")
