"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) through the posterior q(x_{t-1} | x_t, x0_pred)."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import ModelFn
from ldm.diffusion.samplers.base import StepCallback, TimestepRun, make_denoiser, timestep_batch, to_like
from ldm.diffusion.samplers.registry import register_sampler
from ldm.diffusion.schedule import DiffusionSchedule, posterior_coefficients


@register_sampler("ddpm")
@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = None,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                callback: StepCallback | None = None, generator: torch.Generator | None = None,
                parameterization: str = "eps", *, guidance_rescale: float = 0.0, timesteps: list[int] | None = None,
                clip_denoised: bool = False, temperature: float = 1.0, log_every_t: int = 100,
                intermediates: dict | None = None, x_init: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
    """Ancestral sampling x_{t-1} = mu~(x_t, x0_pred) + sigma~_t z with the fixed posterior variance (the original's
    `p_sample_loop`); no noise is added at t = 0. `eta` does not apply (ancestral sampling is eta = 1).

    steps=None (or T) walks all T steps; fewer steps walk range(0, T, T // steps) with the posterior of the respaced
    chain (betas 1 - abar_t / abar_prev, as in Nichol & Dhariwal's respacing). `clip_denoised` clamps x0_pred to
    [-1, 1] (the original DDPM default is True; latents usually want False). `x_init` / `strength`: img2img
    (`start_timesteps`).
    """
    del eta  # part of the shared signature; ancestral DDPM has no eta
    # uniform spacing without offset: steps None (or T) is all T steps, fewer the respaced chain
    run = TimestepRun(schedule, x_T, steps, "uniform", timesteps, mask, x0, callback, generator, intermediates,
                      log_every_t, x_init, strength, offset=0)
    abar, abar_prev = run.abar, run.abar_prev
    post = posterior_coefficients(1 - abar / abar_prev, abar, abar_prev, run.schedule.v_posterior)
    coef_x0 = to_like(post["posterior_mean_coef1"], x_T)
    coef_xt = to_like(post["posterior_mean_coef2"], x_T)
    std = to_like((0.5 * post["posterior_log_variance_clipped"]).exp() * temperature, x_T)

    denoiser = make_denoiser(model_fn, run.schedule, parameterization, uncond, guidance_scale, guidance_rescale)
    x = run.x_start
    for i, k, t in run.steps():
        x = run.begin(k, x)
        _, x0_pred = denoiser(x, timestep_batch(x, t), cond)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        x = coef_x0[k] * x0_pred + coef_xt[k] * x
        if t != 0:
            x = x + std[k] * randn_like(x, generator)
        run.end(i, t, x, x0_pred)
    return run.finish(x)
