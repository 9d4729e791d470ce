"""What a sampler reports after each step: `callback(i, t, x, x0_pred)` after step i (0-based, sampling order) with the
new x and that step's x0 prediction, and the logged intermediates; a callback with a `set_total(n)` method is first
told how many steps the run makes (e.g. DDIM's uniform spacing may give more indices than `steps`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def announce_steps(callback: StepCallback | None, total: int) -> None:
    """Before the first step: tell `callback` the number of steps the run makes (the length of its timestep or sigma
    grid, after img2img trimming) by calling `callback.set_total(total)` when it has that method (a progress bar);
    plain functions are left alone."""
    set_total = getattr(callback, "set_total", None)
    if callable(set_total):
        set_total(int(total))


class Intermediates:
    """Collects x and x0 predictions every `log_every_t` steps into a dict {'x_inter': [...], 'pred_x0': [...]}."""

    def __init__(self, target: dict | None, x_T: torch.Tensor, total_steps: int, log_every_t: int = 100):
        self.target = target
        self.total = total_steps
        self.every = max(int(log_every_t), 1)
        if target is not None:
            target.setdefault("x_inter", []).append(x_T)
            target.setdefault("pred_x0", []).append(x_T)

    def __call__(self, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        """Record step i (sampling order) when its remaining-steps index is a multiple of log_every_t, or first."""
        index = self.total - i - 1
        if self.target is not None and (index % self.every == 0 or index == self.total - 1):
            self.target["x_inter"].append(x)
            self.target["pred_x0"].append(x0_pred)


class StepReport:
    """What a sampler reports after every step: `callback(i, t, x, x0_pred)` and the logged `Intermediates`. The
    callback is told the number of steps first (`announce_steps`), when the report is made."""

    def __init__(self, callback: StepCallback | None, intermediates: dict | None, x_start: torch.Tensor,
                 total_steps: int, log_every_t: int = 100):
        self.callback = callback
        self.log = Intermediates(intermediates, x_start, total_steps, log_every_t)
        announce_steps(callback, total_steps)

    @property
    def active(self) -> bool:
        """Whether anything listens (so a sampler can skip preparing what it would report)."""
        return self.callback is not None or self.log.target is not None

    def __call__(self, i: int, t: Any, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        """Report step i (sampling order) at model timestep t with the new x and the step's x0 prediction."""
        if self.callback is not None:
            self.callback(i, t, x, x0_pred)
        self.log(i, x, x0_pred)
