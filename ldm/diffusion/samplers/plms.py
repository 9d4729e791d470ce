"""PLMS (Liu et al. 2022, PNDM): DDIM's deterministic transfer with eps from a linear multistep (Adams-Bashforth)
combination of past predictions, warmed up as the LDM `PLMSSampler` does (a pseudo-improved-Euler first step, then
orders 2 and 3 before the 4-step formula)."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.parameterization import ModelFn
from ldm.diffusion.samplers.base import (DYNAMIC_THRESHOLD_RATIO, THRESHOLD_MAX_VALUE, StepCallback, TimestepRun,
                                         make_denoiser, resolve_thresholding, threshold_x0, timestep_batch, to_like)
from ldm.diffusion.samplers.registry import register_sampler
from ldm.diffusion.schedule import DiffusionSchedule

# Adams-Bashforth weights for eps_t, eps_{t+1}, ... by the number of past predictions available (PNDM eq. 12).
ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register_sampler("plms")
@torch.no_grad()
def sample_plms(model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = 50,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                callback: StepCallback | None = None, generator: torch.Generator | None = None,
                parameterization: str = "eps", *, spacing: str = "uniform", timesteps: list[int] | None = None,
                guidance_rescale: float = 0.0, thresholding: str | None = None, clip_denoised: bool = False,
                threshold_ratio: float = DYNAMIC_THRESHOLD_RATIO, max_value: float = THRESHOLD_MAX_VALUE,
                log_every_t: int = 100, intermediates: dict | None = None, x_init: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
    """PLMS from x_T over the DDIM timesteps of `spacing` (the original's "uniform" with its +1 offset by default):
    x_prev = sqrt(abar_prev) x0(e') + sqrt(1 - abar_prev) e' with e' the multistep eps. The first step averages eps
    at t and at the DDIM-predicted next point, so `steps` steps make steps + 1 model calls. eta must be 0. The
    Adams-Bashforth weights assume equal strides: uniform / leading / trailing with T % steps == 0 are exact, while
    the rounded strides of linspace (or quad) make the multistep formula only approximately right.
    `thresholding` ("clip" / "dynamic", or `clip_denoised`) applies to every model x0 prediction (`make_denoiser`) and
    to the x0 of the combined eps (where the original PLMS applies it). `x_init` / `strength`: img2img
    (`start_timesteps`).
    """
    if eta != 0:
        raise ValueError(f"plms is deterministic and takes eta = 0 only, got {eta} (the original raises too)")
    run = TimestepRun(schedule, x_T, steps, spacing, timesteps, mask, x0, callback, generator, intermediates,
                      log_every_t, x_init, strength)
    ts, sqrt_abar, sqrt_1m_abar = run.timesteps, run.sqrt_abar, run.sqrt_1m_abar
    coef_x0, coef_eps = to_like(run.abar_prev.sqrt(), x_T), to_like((1 - run.abar_prev).sqrt(), x_T)
    thresholding = resolve_thresholding(thresholding, clip_denoised)
    denoiser = make_denoiser(model_fn, run.schedule, parameterization, uncond, guidance_scale, guidance_rescale,
                             thresholding, threshold_ratio, max_value)

    def transfer(x: torch.Tensor, eps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM (eta = 0) step from ts[k] to its predecessor with a given eps; returns (x_prev, x0_pred)."""
        # the multistep eps need not match a thresholded x0: threshold again here, as the original PLMS does
        x0_pred = threshold_x0((x - sqrt_1m_abar[k] * eps) / sqrt_abar[k], thresholding, threshold_ratio, max_value)
        return coef_x0[k] * x0_pred + coef_eps[k] * eps, x0_pred

    x, old_eps = run.x_start, []  # old_eps: newest first, at most 3
    for i, k, t in run.steps():
        x = run.begin(k, x)
        eps, _ = denoiser(x, timestep_batch(x, t), cond)
        if not old_eps and k > 0:
            # pseudo improved Euler: average eps here and at the DDIM-predicted point of the next timestep
            x_next, _ = transfer(x, eps, k)
            eps_next, _ = denoiser(x_next, timestep_batch(x, ts[k - 1]), cond)
            eps_prime = (eps + eps_next) / 2
        elif old_eps:
            weights = ADAMS_BASHFORTH[len(old_eps)]
            eps_prime = sum((w * e for w, e in zip(weights[1:], old_eps)), weights[0] * eps)
        else:  # a single step: plain DDIM
            eps_prime = eps
        x, x0_pred = transfer(x, eps_prime, k)
        old_eps = [eps] + old_eps[:2]
        run.end(i, t, x, x0_pred)
    return run.finish(x)
