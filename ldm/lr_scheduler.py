"""LR multiplier schedules with the CompVis config interface (used through `torch.optim.lr_scheduler.LambdaLR`)."""

from __future__ import annotations

import math
from collections.abc import Sequence


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from lr_start to lr_max over warm_up_steps, then cosine decay to lr_min at max_decay_steps."""

    def __init__(self, warm_up_steps: int, lr_min: float, lr_max: float, lr_start: float, max_decay_steps: int,
                 verbosity_interval: int = 0):
        if max_decay_steps <= warm_up_steps:
            raise ValueError(f"max_decay_steps ({max_decay_steps}) must exceed warm_up_steps ({warm_up_steps})")
        self.warm_up_steps = warm_up_steps
        self.lr_start, self.lr_min, self.lr_max = lr_start, lr_min, lr_max
        self.max_decay_steps = max_decay_steps
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        """Multiplier at step n."""
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"step {n}: lr multiplier {self._value(n):.3e}")
        return self._value(n)

    def _value(self, n: int) -> float:
        if n < self.warm_up_steps:
            return (self.lr_max - self.lr_start) / self.warm_up_steps * n + self.lr_start
        t = min((n - self.warm_up_steps) / (self.max_decay_steps - self.warm_up_steps), 1.0)
        return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles (lengths `cycle_lengths`), each a linear warm-up f_start -> f_max then a cosine f_max -> f_min."""

    def __init__(self, warm_up_steps: Sequence[int], f_min: Sequence[float], f_max: Sequence[float],
                 f_start: Sequence[float], cycle_lengths: Sequence[int], verbosity_interval: int = 0):
        lengths = {len(warm_up_steps), len(f_min), len(f_max), len(f_start), len(cycle_lengths)}
        if len(lengths) != 1:
            raise ValueError("warm_up_steps, f_min, f_max, f_start and cycle_lengths must be lists of equal length")
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start, self.f_min, self.f_max = list(f_start), list(f_min), list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = [0]
        for length in self.cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + length)
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle containing step n (the last cycle for steps past the end)."""
        for cycle, end in enumerate(self.cum_cycles[1:]):
            if n <= end:
                return cycle
        return len(self.cycle_lengths) - 1

    def _after_warm_up(self, cycle: int, n: int) -> float:
        t = min((n - self.lr_warm_up_steps[cycle]) / (self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle]), 1.0)
        return self.f_min[cycle] + 0.5 * (self.f_max[cycle] - self.f_min[cycle]) * (1 + math.cos(t * math.pi))

    def schedule(self, n: int, **kwargs) -> float:
        """Multiplier at step n."""
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            print(f"step {n} of cycle {cycle}")
        if n < self.lr_warm_up_steps[cycle]:
            return (self.f_max[cycle] - self.f_start[cycle]) / self.lr_warm_up_steps[cycle] * n + self.f_start[cycle]
        return self._after_warm_up(cycle, n)

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """Like LambdaWarmUpCosineScheduler2 but decays linearly from f_max towards f_min over each cycle after warm-up."""

    def _after_warm_up(self, cycle: int, n: int) -> float:
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
