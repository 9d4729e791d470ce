"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) through the posterior q(x_{t-1} | x_t, x0_pred)."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import ModelFn, as_schedule
from ldm.diffusion.samplers.base import (Intermediates, StepCallback, blend_known, check_inputs, check_timesteps,
                                         make_denoiser, make_timesteps, start_timesteps, step_alphas, timestep_batch,
                                         to_like)
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
    sched = as_schedule(schedule)
    mask, x0 = check_inputs(x_T, mask, x0)
    T = sched.num_timesteps
    if timesteps is not None:
        ts = check_timesteps(timesteps, T)
    elif steps is None or steps == T:
        ts = list(range(T))
    else:
        ts = make_timesteps("uniform", steps, T, offset=0)
    ts, x_start = start_timesteps(sched, ts, x_T, x_init, strength)
    abar, abar_prev = step_alphas(sched, ts)
    post = posterior_coefficients(1 - abar / abar_prev, abar, abar_prev, sched.v_posterior)
    coef_x0 = to_like(post["posterior_mean_coef1"], x_T)
    coef_xt = to_like(post["posterior_mean_coef2"], x_T)
    std = to_like((0.5 * post["posterior_log_variance_clipped"]).exp() * temperature, x_T)
    sqrt_abar, sqrt_1m_abar = to_like(abar.sqrt(), x_T), to_like((1 - abar).sqrt(), x_T)

    denoiser = make_denoiser(model_fn, sched, parameterization, uncond, guidance_scale, guidance_rescale)
    log = Intermediates(intermediates, x_start, len(ts), log_every_t)
    x = x_start
    for i, k in enumerate(reversed(range(len(ts)))):
        t = ts[k]
        if mask is not None:
            x = blend_known(x, mask, x0, sqrt_abar[k], sqrt_1m_abar[k], generator)
        _, x0_pred = denoiser(x, timestep_batch(x, t), cond)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        x = coef_x0[k] * x0_pred + coef_xt[k] * x
        if t != 0:
            x = x + std[k] * randn_like(x, generator)
        if callback is not None:
            callback(i, t, x, x0_pred)
        log(i, x, x0_pred)
    if mask is not None:
        x = mask * x0 + (1 - mask) * x
    return x
