"""DDIM sampling (Song et al. 2021, eq. 12) over a subsequence of DDPM steps, with eta-controlled stochasticity."""

from __future__ import annotations

import torch

from ldm.diffusion.samplers.timesteps import to_like
from ldm.diffusion.samplers.context import Noise, Step, TimestepDenoiser, TimestepGrid
from ldm.diffusion.samplers.signature import timestep_sampler


def ddim_sigmas(abar: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)) (Song et al. 2021, eq. 16)."""
    return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()


def ddim(denoise: TimestepDenoiser, x: torch.Tensor, grid: TimestepGrid, step: Step, noise: Noise, *, eta: float,
         temperature: float = 1.0) -> torch.Tensor:
    """DDIM from x_T: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.

    `ddim_discretize` picks the indices ("uniform"/"quad" with the original +1 offset, or "trailing"); `timesteps`
    overrides them. With eta = 1 over all T steps this is ancestral DDPM sampling. `clip_denoised` clamps x0 to
    [-1, 1] and recomputes eps from it; `intermediates`, if a dict, receives 'x_inter' / 'pred_x0' lists.
    `x_init` / `strength`: img2img (`start_timesteps`). `temperature` scales the added noise.
    """
    sigmas = ddim_sigmas(grid.abar, grid.abar_prev, eta)
    # float64 per-step coefficients, cast once to x's dtype/device; indexed by Python ints below (no host syncs).
    coef_x0 = to_like(grid.abar_prev.sqrt(), x)
    coef_eps = to_like((1 - grid.abar_prev - sigmas ** 2).clamp(min=0).sqrt(), x)
    coef_noise = to_like(sigmas * temperature, x)
    for i, t in enumerate(grid.timesteps):
        eps, x0_pred = denoise(x, t)
        x = coef_x0[i] * x0_pred + coef_eps[i] * eps
        if eta > 0:
            x = x + coef_noise[i] * noise(x)
        x = step(i, x, x0_pred)
    return x


sample_ddim = timestep_sampler("ddim", ddim, steps=50, spacing_option="ddim_discretize")
