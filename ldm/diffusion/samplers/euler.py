"""Karras et al. 2022 samplers on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma: Euler, Euler
ancestral and Heun (Algorithm 1, deterministic), by default on Karras sigmas (see `sigma_space` for x_T's scale)."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.parameterization import ModelFn
from ldm.diffusion.samplers.base import StepCallback
from ldm.diffusion.samplers.registry import register_sampler
from ldm.diffusion.samplers.sigma_space import SigmaRun, ancestral_step, check_eta
from ldm.diffusion.schedule import DiffusionSchedule


@register_sampler("euler")
@torch.no_grad()
def sample_euler(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = 25,
                 cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                 mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None,
                 parameterization: str = "eps", **opts: Any) -> torch.Tensor:
    """First-order Euler steps x += (sigma_next - sigma) (x - D) / sigma; one model call per step.

    Options (`SIGMA_OPTIONS`): spacing ("karras" default, "exponential" or a DDPM timestep spacing), rho, sigma_min,
    sigma_max, sigmas, quantize, guidance_rescale, thresholding / clip_denoised, log_every_t, intermediates.
    """
    check_eta("euler", eta, stochastic=False)
    run = SigmaRun("euler", model_fn, schedule, x_T, steps, cond, uncond, guidance_scale, mask, x0, callback,
                   generator, parameterization, **opts)
    s, x = run.sigmas, run.start()
    for i in range(run.num_steps):
        x = run.begin(i, x)
        denoised = run.denoise(x, s[i])
        x = run.end(i, x + (s[i + 1] - s[i]) / s[i] * (x - denoised), denoised)
    return run.finish(x)


@register_sampler("euler_a")
@torch.no_grad()
def sample_euler_ancestral(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor,
                           steps: int | None = 25, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                           eta: float | None = None, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                           callback: StepCallback | None = None, generator: torch.Generator | None = None,
                           parameterization: str = "eps", *, s_noise: float = 1.0, **opts: Any) -> torch.Tensor:
    """Euler down to sigma_down, then fresh noise of std sigma_up (`ancestral_step`); eta (None = 1) scales the noise,
    eta = 1 matching the DDPM posterior and eta = 0 being plain Euler. `s_noise` scales the added noise only."""
    eta = check_eta("euler_a", eta, default=1.0)
    run = SigmaRun("euler_a", model_fn, schedule, x_T, steps, cond, uncond, guidance_scale, mask, x0, callback,
                   generator, parameterization, **opts)
    s, x = run.sigmas, run.start()
    for i in range(run.num_steps):
        x = run.begin(i, x)
        denoised = run.denoise(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = x + (down - s[i]) / s[i] * (x - denoised)
        if up > 0:
            x = x + run.noise(x) * (up * s_noise)
        x = run.end(i, x, denoised)
    return run.finish(x)


@register_sampler("heun")
@torch.no_grad()
def sample_heun(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = 25,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                callback: StepCallback | None = None, generator: torch.Generator | None = None,
                parameterization: str = "eps", **opts: Any) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1): an Euler step, then the average of the slopes at
    both ends; the last step to sigma = 0 stays Euler. 2 * steps - 1 model calls."""
    check_eta("heun", eta, stochastic=False)
    run = SigmaRun("heun", model_fn, schedule, x_T, steps, cond, uncond, guidance_scale, mask, x0, callback,
                   generator, parameterization, **opts)
    s, x = run.sigmas, run.start()
    for i in range(run.num_steps):
        x = run.begin(i, x)
        denoised = run.denoise(x, s[i])
        d = (x - denoised) / s[i]
        x_next = x + (s[i + 1] - s[i]) * d
        if s[i + 1] > 0:
            d_next = (x_next - run.denoise(x_next, s[i + 1])) / s[i + 1]
            x_next = x + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
        x = run.end(i, x_next, denoised)
    return run.finish(x)
