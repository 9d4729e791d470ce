"""DDIM sampling (Song et al. 2021, eq. 12) over a subsequence of DDPM steps, with eta-controlled stochasticity."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import ModelFn, eps_from_x0
from ldm.diffusion.samplers.base import StepCallback, TimestepRun, make_denoiser, timestep_batch, to_like
from ldm.diffusion.samplers.registry import register_sampler
from ldm.diffusion.schedule import DiffusionSchedule


def ddim_sigmas(abar: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)) (Song et al. 2021, eq. 16)."""
    return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()


@register_sampler("ddim")
@torch.no_grad()
def sample_ddim(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = 50,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                callback: StepCallback | None = None, generator: torch.Generator | None = None,
                parameterization: str = "eps", *, guidance_rescale: float = 0.0, ddim_discretize: str = "uniform",
                timesteps: list[int] | None = None, clip_denoised: bool = False, temperature: float = 1.0,
                log_every_t: int = 100, intermediates: dict | None = None, x_init: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
    """DDIM from x_T: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.

    `ddim_discretize` picks the indices ("uniform"/"quad" with the original +1 offset, or "trailing"); `timesteps`
    overrides them. With eta = 1 over all T steps this is ancestral DDPM sampling. `clip_denoised` clamps x0 to
    [-1, 1] and recomputes eps from it; `intermediates`, if a dict, receives 'x_inter' / 'pred_x0' lists.
    `x_init` / `strength`: img2img (`start_timesteps`).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    run = TimestepRun(schedule, x_T, steps, ddim_discretize, timesteps, mask, x0, callback, generator, intermediates,
                      log_every_t, x_init, strength)
    sigmas = ddim_sigmas(run.abar, run.abar_prev, eta)
    # float64 per-step coefficients, cast once to x's dtype/device; indexed by Python ints below (no host syncs).
    coef_x0 = to_like(run.abar_prev.sqrt(), x_T)
    coef_eps = to_like((1 - run.abar_prev - sigmas ** 2).clamp(min=0).sqrt(), x_T)
    coef_noise = to_like(sigmas * temperature, x_T)

    denoiser = make_denoiser(model_fn, run.schedule, parameterization, uncond, guidance_scale, guidance_rescale)
    x = run.x_start
    for i, k, t in run.steps():
        x = run.begin(k, x)
        eps, x0_pred = denoiser(x, timestep_batch(x, t), cond)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
            eps = eps_from_x0(x, x0_pred, run.sqrt_abar[k], run.sqrt_1m_abar[k])
        x = coef_x0[k] * x0_pred + coef_eps[k] * eps
        if eta > 0:
            x = x + coef_noise[k] * randn_like(x, generator)
        run.end(i, t, x, x0_pred)
    return run.finish(x)
