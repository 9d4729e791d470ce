"""Conventions and small helpers of the samplers that integrate in sigma (variance-exploding) space.

State convention. A VP sample x_t = sqrt(abar) x0 + sqrt(1 - abar) eps corresponds to the VE state
x = x_t / sqrt(abar) = x0 + sigma eps with sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, app. C.3). Every
sampler in this package takes the same unit-variance `x_T` and reads it as the VP sample at its first noise level
sigma_0 (as DDIM reads it at its first timestep), so a sigma-space sampler starts from x = x_T sqrt(1 + sigma_0^2).
(k-diffusion multiplies by sigma_0 instead; that reads x_T as pure noise and differs by sqrt(1 + 1/sigma_0^2), e.g.
0.2% at the LDM sigma_max of 14.6, more for schedules that end at lower noise.) With the same x_T and the same
first level, DDIM and these samplers integrate the same probability-flow ODE. At sigma = 0 both scales coincide.

Callbacks and logged intermediates get x in the VP scale, x / sqrt(1 + sigma^2), and t = the fractional DDPM index of
the step's input level, so `callback(i, t, x, x0_pred)` means the same for every sampler.
"""

from __future__ import annotations

import math

import torch

from ldm.diffusion.samplers.timesteps import check_init, noised_init, strength_steps


def start_sigmas(sigmas: list[float], x_T: torch.Tensor, x_init: torch.Tensor | None,
                 strength: float = 1.0) -> tuple[list[float], torch.Tensor]:
    """img2img on a sigma grid: (the kept grid, the VP start), the sigma-space twin of `timesteps.start_timesteps`.

    Keeps the last floor(strength * steps) steps (and the final 0) and starts from x_init noised to the first kept
    level sigma with x_T as the noise (abar = 1 / (1 + sigma^2)). All kept: x_T itself; none kept: x_init.
    """
    x_init = check_init(x_T, x_init, strength)
    n = strength_steps(len(sigmas) - 1, strength)
    if x_init is None or n == len(sigmas) - 1:
        return sigmas, x_T
    kept = sigmas[len(sigmas) - 1 - n:]
    return kept, noised_init(x_init, x_T, 1.0 / (1.0 + kept[0] ** 2))


def check_eta(name: str, eta: float | None, default: float = 0.0, stochastic: bool = True) -> float:
    """Resolve eta (None means the sampler's default); deterministic samplers reject eta != 0."""
    eta = default if eta is None else float(eta)
    if eta < 0:
        raise ValueError(f"{name}: eta must be >= 0, got {eta}")
    if not stochastic and eta != 0:
        raise ValueError(f"{name} is deterministic and takes eta = 0 only, got {eta}; for noise injection use "
                         "ddim, euler_a, dpmpp_2s or dpmpp_2m_sde")
    return eta


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) splitting a step into a deterministic part and fresh noise; eta = 1 gives the VE form of
    the DDPM posterior variance sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2 (DDIM eq. 16)."""
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    return math.sqrt(sigma_to ** 2 - up ** 2), up
