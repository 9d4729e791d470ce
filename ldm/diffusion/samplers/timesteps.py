"""Which DDPM steps a sampler visits: spacings (uniform, quad, trailing, leading, linspace), explicit lists, and the
img2img start (run only the last floor(strength * n) of n steps from x_init noised to the first of them, with x_T as
the noise; strength 1 is plain sampling from x_T, strength 0 returns x_init), plus the per-step abar tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldm.diffusion.schedule import DiffusionSchedule

TIMESTEP_SPACINGS = ("uniform", "quad", "trailing", "leading", "linspace")


def make_timesteps(spacing: str, steps: int, num_timesteps: int, offset: int = 1) -> list[int]:
    """Ascending DDPM indices for `steps` sampler steps (the original `make_ddim_timesteps`, plus Lin et al. trailing).

    uniform: range(0, T, T // steps) + offset (may give more than `steps` indices when T % steps != 0, as the
    original); quad: floor(linspace(0, sqrt(0.8 T), steps)^2) + offset; trailing: round(T - k T / steps) - 1, which
    always starts from T - 1 (Lin et al. 2023, Table 2) and takes no offset; leading: k * (T // steps) + offset for
    k < steps (exactly `steps` indices, the diffusers "leading" with steps_offset); linspace: round(linspace(0,
    T - 1, steps)), from T - 1 down to 0 (one step: [T - 1]), no offset. The offset is dropped where it would push
    the last index past T - 1 (e.g. steps == T).
    """
    if not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_timesteps}], got {steps!r}")
    if spacing == "uniform":
        base = torch.arange(0, num_timesteps, num_timesteps // steps)
    elif spacing == "quad":
        base = (torch.linspace(0, (num_timesteps * 0.8) ** 0.5, steps, dtype=torch.float64) ** 2).long()
    elif spacing == "trailing":
        k = torch.arange(steps, dtype=torch.float64)
        base = (num_timesteps - k * num_timesteps / steps).round().long() - 1
        return sorted(base.tolist())
    elif spacing == "leading":
        base = torch.arange(steps) * (num_timesteps // steps)
    elif spacing == "linspace":
        if steps == 1:  # linspace(0, T - 1, 1) would be [0]; one step starts from the noisiest index like the rest
            return [num_timesteps - 1]
        return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    if int(base[-1]) + offset <= num_timesteps - 1:
        base = base + offset
    return base.tolist()


def check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """Validate explicit DDPM indices: non-decreasing ints in [0, T-1]."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(b < a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be in ascending order, got {ts}")
    if ts[0] < 0 or ts[-1] >= num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_timesteps - 1}], got {ts[0]}..{ts[-1]}")
    return ts


def select_timesteps(num_timesteps: int, steps: int | None, spacing: str = "uniform",
                     timesteps: Sequence[int] | None = None, offset: int = 1) -> list[int]:
    """A DDPM-timestep sampler's ascending grid: explicit `timesteps` (checked), else `make_timesteps(spacing, steps,
    T, offset)` with steps None meaning all T."""
    if timesteps is not None:
        return check_timesteps(timesteps, num_timesteps)
    return make_timesteps(spacing, num_timesteps if steps is None else steps, num_timesteps, offset)


def check_strength(strength: float) -> float:
    """img2img strength as a float in [0, 1]."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1] (0 = the input back, 1 = pure noise), got {strength}")
    return strength


def strength_steps(num_steps: int, strength: float) -> int:
    """How many of a grid's `num_steps` steps img2img runs: floor(strength * num_steps), SD's `t_enc`."""
    return min(int(num_steps), int(math.floor(check_strength(strength) * num_steps + 1e-6)))


def noised_init(x_init: torch.Tensor, noise: torch.Tensor, abar: float) -> torch.Tensor:
    """x_init carried to VP level abar with the given noise: sqrt(abar) x_init + sqrt(1 - abar) noise (q(x_t | x0))."""
    return math.sqrt(abar) * x_init + math.sqrt(max(1.0 - abar, 0.0)) * noise


def check_init(x_T: torch.Tensor, x_init: torch.Tensor | None, strength: float) -> torch.Tensor | None:
    """Validate img2img inputs; returns x_init in x_T's dtype and device (None when there is none)."""
    if check_strength(strength) < 1.0 and x_init is None:
        raise ValueError(f"strength {strength} < 1 needs x_init (the clean sample to start from)")
    if x_init is None:
        return None
    if tuple(x_init.shape) != tuple(x_T.shape):
        raise ValueError(f"x_init shape {tuple(x_init.shape)} must equal x_T shape {tuple(x_T.shape)}")
    return x_init.to(device=x_T.device, dtype=x_T.dtype)


def start_timesteps(schedule: DiffusionSchedule, timesteps: list[int], x_T: torch.Tensor,
                    x_init: torch.Tensor | None, strength: float = 1.0) -> tuple[list[int], torch.Tensor]:
    """img2img on an ascending DDPM-index grid: (the kept indices, the starting x).

    Keeps the lowest floor(strength * len) indices and starts from x_init noised to the highest kept one with x_T as
    the noise (SD's `stochastic_encode` + `decode(t_start)`). All kept: x_T itself; none kept: x_init.
    """
    x_init = check_init(x_T, x_init, strength)
    n = strength_steps(len(timesteps), strength)
    if x_init is None or n == len(timesteps):
        return list(timesteps), x_T
    if n == 0:
        return [], x_init
    return list(timesteps[:n]), noised_init(x_init, x_T, float(schedule.alphas_cumprod[timesteps[n - 1]]))


def step_alphas(schedule: DiffusionSchedule, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 abar at each index and at its predecessor; the first one's predecessor is alphas_cumprod_prev[t_0].

    This is the original DDIM rule (alphas_prev[0] = abar[0] with its +1 offset) and gives abar_prev = 1 (clean) when
    the sequence starts at t = 0, so a full sequence reproduces the DDPM posterior chain.
    """
    idx = torch.tensor(list(timesteps), dtype=torch.long)
    abar = schedule.alphas_cumprod[idx]
    abar_prev = torch.cat([schedule.alphas_cumprod_prev[idx[:1]], abar[:-1]])
    return abar, abar_prev


def timestep_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) long tensor filled with DDPM index t on x's device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def to_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float64 per-step coefficients cast to `like`'s dtype (on the CPU first) and moved to its device."""
    return values.to(like.dtype).to(like.device)
