"""Karras et al. 2022 samplers on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma: Euler, Euler
ancestral and Heun (Algorithm 1, deterministic), by default on Karras sigmas (see `sigma_space` for x_T's scale).

Options of every sigma-space sampler: spacing ("karras" default, "exponential" or a DDPM timestep spacing), rho,
sigma_min, sigma_max, sigmas, quantize (`context.SIGMA_GRID_OPTIONS`), and the context's guidance_rescale,
thresholding / clip_denoised, log_every_t, intermediates, x_init / strength.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from ldm.diffusion.samplers.context import Noise, SigmaDenoise, Step
from ldm.diffusion.samplers.sigma_space import ancestral_step
from ldm.diffusion.samplers.signature import sigma_sampler


def euler(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise) -> torch.Tensor:
    """First-order Euler steps x += (sigma_next - sigma) (x - D) / sigma; one model call per step."""
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        x = step(i, x + (s_next - s) / s * (x - denoised), denoised)
    return x


def euler_ancestral(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise, *,
                    eta: float, s_noise: float = 1.0) -> torch.Tensor:
    """Euler down to sigma_down, then fresh noise of std sigma_up (`ancestral_step`); eta (None = 1) scales the noise,
    eta = 1 matching the DDPM posterior and eta = 0 being plain Euler. `s_noise` scales the added noise only."""
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        down, up = ancestral_step(s, s_next, eta)
        x = x + (down - s) / s * (x - denoised)
        if up > 0:
            x = x + noise(x) * (up * s_noise)
        x = step(i, x, denoised)
    return x


def heun(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1): an Euler step, then the average of the slopes at
    both ends; the last step to sigma = 0 stays Euler. 2 * steps - 1 model calls."""
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = step(i, x_next, denoised)
    return x


sample_euler = sigma_sampler("euler", euler, steps=25)
sample_euler_ancestral = sigma_sampler("euler_a", euler_ancestral, steps=25, eta=None)
sample_heun = sigma_sampler("heun", heun, steps=25)
