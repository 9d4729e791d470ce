"""PLMS (Liu et al. 2022, PNDM): DDIM's deterministic transfer with eps from a linear multistep (Adams-Bashforth)
combination of past predictions, warmed up as the LDM `PLMSSampler` does (a pseudo-improved-Euler first step, then
orders 2 and 3 before the 4-step formula)."""

from __future__ import annotations

import torch

from ldm.diffusion.samplers.timesteps import to_like
from ldm.diffusion.samplers.context import Noise, Step, TimestepDenoiser, TimestepGrid
from ldm.diffusion.samplers.signature import timestep_sampler

# Adams-Bashforth weights for eps_t, eps_{t+1}, ... by the number of past predictions available (PNDM eq. 12).
ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def plms(denoise: TimestepDenoiser, x: torch.Tensor, grid: TimestepGrid, step: Step, noise: Noise) -> torch.Tensor:
    """PLMS from x_T over the DDIM timesteps of `spacing` (the original's "uniform" with its +1 offset by default):
    x_prev = sqrt(abar_prev) x0(e') + sqrt(1 - abar_prev) e' with e' the multistep eps. The first step averages eps
    at t and at the DDIM-predicted next point, so `steps` steps make steps + 1 model calls. eta must be 0. The
    Adams-Bashforth weights assume equal strides: uniform / leading / trailing with T % steps == 0 are exact, while
    the rounded strides of linspace (or quad) make the multistep formula only approximately right.
    `thresholding` ("clip" / "dynamic", or `clip_denoised`) applies to every model x0 prediction and to the x0 of
    the combined eps (where the original PLMS applies it). `x_init` / `strength`: img2img (`start_timesteps`).
    """
    ts, n = grid.timesteps, len(grid.timesteps)
    sqrt_abar, sqrt_1m_abar = to_like(grid.abar.sqrt(), x), to_like((1 - grid.abar).sqrt(), x)
    coef_x0, coef_eps = to_like(grid.abar_prev.sqrt(), x), to_like((1 - grid.abar_prev).sqrt(), x)

    def transfer(x: torch.Tensor, eps: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM (eta = 0) step i with a given eps; returns (x_prev, x0_pred)."""
        # the multistep eps need not match a thresholded x0: threshold again here, as the original PLMS does
        x0_pred = denoise.threshold((x - sqrt_1m_abar[i] * eps) / sqrt_abar[i])
        return coef_x0[i] * x0_pred + coef_eps[i] * eps, x0_pred

    old_eps = []  # newest first, at most 3
    for i, t in enumerate(ts):
        eps, _ = denoise(x, t)
        if not old_eps and i + 1 < n:
            # pseudo improved Euler: average eps here and at the DDIM-predicted point of the next timestep
            eps_prime = (eps + denoise(transfer(x, eps, i)[0], ts[i + 1])[0]) / 2
        elif old_eps:
            weights = ADAMS_BASHFORTH[len(old_eps)]
            eps_prime = sum((w * e for w, e in zip(weights[1:], old_eps)), weights[0] * eps)
        else:  # a single step: plain DDIM
            eps_prime = eps
        x, x0_pred = transfer(x, eps_prime, i)
        old_eps = [eps] + old_eps[:2]
        x = step(i, x, x0_pred)
    return x


sample_plms = timestep_sampler("plms", plms, steps=50)
