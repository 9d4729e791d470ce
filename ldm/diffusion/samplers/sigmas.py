"""Noise-level (sigma) grids for the samplers that work in sigma space: Karras, exponential, or DDPM timesteps.

sigma = sqrt((1 - abar) / abar) is the variance-exploding noise level of x_t / sqrt(abar) (Karras et al. 2022). A grid
is a descending list of Python floats, one per step start, followed by a final 0 (the clean sample); Python floats
keep per-step scalars off the device, so sampling loops need no host syncs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldm.diffusion.samplers.timesteps import TIMESTEP_SPACINGS, make_timesteps
from ldm.diffusion.schedule import DiffusionSchedule

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5 / Table 1
SIGMA_SPACINGS = ("karras", "exponential") + TIMESTEP_SPACINGS


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """n float64 levels (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (Karras eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n float64 levels evenly spaced in log sigma (uniform in logSNR, as DPM-Solver's "logSNR" skip type)."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def schedule_sigma_range(schedule: DiffusionSchedule, sigma_min: float | None = None,
                         sigma_max: float | None = None) -> tuple[float, float]:
    """(sigma_min, sigma_max) defaulting to the schedule's sigma at t = 0 and t = T - 1, checked finite and ordered."""
    sigmas = schedule.sigmas
    lo = float(sigmas[0]) if sigma_min is None else float(sigma_min)
    hi = float(sigmas[-1]) if sigma_max is None else float(sigma_max)
    if not math.isfinite(hi):
        raise ValueError("the schedule's sigma at t = T - 1 is infinite (zero terminal SNR): sigma-space samplers "
                         "need a finite start; pass sigma_max=... or use ddim/plms with trailing spacing")
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


def make_sigmas(schedule: DiffusionSchedule, steps: int, spacing: str = "karras", rho: float = KARRAS_RHO,
                sigma_min: float | None = None, sigma_max: float | None = None,
                sigmas: Sequence[float] | torch.Tensor | None = None) -> list[float]:
    """Descending sigma grid of `steps` levels plus the final 0, as Python floats.

    karras / exponential span [sigma_min, sigma_max] (default: the schedule's ends); a DDPM timestep spacing
    (uniform, quad, trailing, leading, linspace; see `make_timesteps`) takes the schedule's sigmas at those indices,
    so a sigma-space sampler sees the same noise levels as DDIM with that spacing. Explicit `sigmas` (descending, a
    trailing 0 optional) win over everything.
    """
    if sigmas is not None:
        grid = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
        if not grid or any(b >= a for a, b in zip(grid, grid[1:])) or grid[-1] < 0:
            raise ValueError(f"sigmas must be non-negative and strictly descending, got {grid}")
        if not math.isfinite(grid[0]):
            raise ValueError("sigmas must be finite")
        return grid if grid[-1] == 0 else grid + [0.0]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if spacing in ("karras", "exponential"):
        lo, hi = schedule_sigma_range(schedule, sigma_min, sigma_max)
        if steps == 1:
            levels = torch.tensor([hi], dtype=torch.float64)
        elif spacing == "karras":
            levels = karras_sigmas(steps, lo, hi, rho)
        else:
            levels = exponential_sigmas(steps, lo, hi)
    elif spacing in TIMESTEP_SPACINGS:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError(f"sigma_min / sigma_max apply to karras and exponential spacing, not {spacing!r}")
        ts = make_timesteps(spacing, steps, schedule.num_timesteps)
        levels = schedule.sigmas[torch.tensor(ts[::-1])]
        if not bool(torch.isfinite(levels).all()):
            schedule_sigma_range(schedule)  # raises the zero-terminal-SNR message
    else:
        raise ValueError(f"unknown sigma spacing {spacing!r}; expected one of {SIGMA_SPACINGS}")
    return levels.tolist() + [0.0]
