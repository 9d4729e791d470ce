"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) through the posterior q(x_{t-1} | x_t, x0_pred)."""

from __future__ import annotations

import torch

from ldm.diffusion.samplers.timesteps import to_like
from ldm.diffusion.samplers.context import Noise, Step, TimestepDenoiser, TimestepGrid
from ldm.diffusion.samplers.signature import timestep_sampler
from ldm.diffusion.schedule import posterior_coefficients


def ddpm(denoise: TimestepDenoiser, x: torch.Tensor, grid: TimestepGrid, step: Step, noise: Noise, *,
         temperature: float = 1.0) -> torch.Tensor:
    """Ancestral sampling x_{t-1} = mu~(x_t, x0_pred) + sigma~_t z with the fixed posterior variance (the original's
    `p_sample_loop`); no noise is added at t = 0. `eta` does not apply (ancestral sampling is eta = 1).

    steps=None (or T) walks all T steps; fewer steps walk range(0, T, T // steps) with the posterior of the respaced
    chain (betas 1 - abar_t / abar_prev, as in Nichol & Dhariwal's respacing). `clip_denoised` clamps x0_pred to
    [-1, 1] (the original DDPM default is True; latents usually want False). `x_init` / `strength`: img2img
    (`start_timesteps`). `temperature` scales the added noise.
    """
    post = posterior_coefficients(1 - grid.abar / grid.abar_prev, grid.abar, grid.abar_prev, grid.v_posterior)
    coef_x0 = to_like(post["posterior_mean_coef1"], x)
    coef_xt = to_like(post["posterior_mean_coef2"], x)
    std = to_like((0.5 * post["posterior_log_variance_clipped"]).exp() * temperature, x)
    for i, t in enumerate(grid.timesteps):
        _, x0_pred = denoise(x, t)
        x = coef_x0[i] * x0_pred + coef_xt[i] * x
        if t != 0:
            x = x + std[i] * noise(x)
        x = step(i, x, x0_pred)
    return x


# uniform spacing without offset: steps None (or T) is all T steps, fewer the respaced chain
sample_ddpm = timestep_sampler("ddpm", ddpm, steps=None, spacing_option=None, offset=0, ignores_eta=True)
