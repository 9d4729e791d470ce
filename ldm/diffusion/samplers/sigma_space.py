"""Set-up and bookkeeping shared by the samplers that integrate in sigma (variance-exploding) space.

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
from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import ModelFn, as_schedule, sigma_to_t
from ldm.diffusion.samplers.base import (DYNAMIC_THRESHOLD_RATIO, THRESHOLD_MAX_VALUE, StepCallback, StepReport,
                                         check_init, check_inputs, make_denoiser, noised_init, resolve_thresholding,
                                         restore_known, strength_steps)
from ldm.diffusion.samplers.sigmas import KARRAS_RHO, make_sigmas
from ldm.diffusion.schedule import DiffusionSchedule

# Options every sigma-space sampler accepts (keyword-only, after the shared signature), with their defaults.
SIGMA_OPTIONS: dict[str, Any] = {
    "spacing": "karras", "rho": KARRAS_RHO, "sigma_min": None, "sigma_max": None, "sigmas": None, "quantize": False,
    "guidance_rescale": 0.0, "thresholding": None, "clip_denoised": False,
    "threshold_ratio": DYNAMIC_THRESHOLD_RATIO, "max_value": THRESHOLD_MAX_VALUE,
    "log_every_t": 100, "intermediates": None, "x_init": None, "strength": 1.0,
}


def start_sigmas(sigmas: list[float], x_T: torch.Tensor, x_init: torch.Tensor | None,
                 strength: float = 1.0) -> tuple[list[float], torch.Tensor]:
    """img2img on a sigma grid: (the kept grid, the VP start), the sigma-space twin of `base.start_timesteps`.

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


class SigmaRun:
    """One sampling run in sigma space: the grid, the guided / converted / thresholded denoiser, masks and logs.

    A sampler loops `for i in range(run.num_steps)`: `x = run.begin(i, x)` (mask blend), model calls through
    `run.denoise(x, sigma)`, then `x = run.end(i, x, x0_pred)` (callback, logs), and returns `run.finish(x)`.
    """

    def __init__(self, name: str, model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor,
                 steps: int | None, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                 mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None,
                 parameterization: str = "eps", **opts: Any):
        unknown = sorted(set(opts) - set(SIGMA_OPTIONS))
        if unknown:
            raise TypeError(f"{name} got unexpected option(s) {unknown}; it accepts {sorted(SIGMA_OPTIONS)}")
        o = {**SIGMA_OPTIONS, **opts}
        sched = as_schedule(schedule)
        self.mask, self.x0 = check_inputs(x_T, mask, x0)
        sigmas = make_sigmas(sched, sched.num_timesteps if steps is None else steps, o["spacing"], o["rho"],
                             o["sigma_min"], o["sigma_max"], o["sigmas"])
        self.sigmas, self.x_T = start_sigmas(sigmas, x_T, o["x_init"], o["strength"])
        # fractional DDPM index of every level (callbacks only); float64 on the CPU, once, so no syncs later
        levels = torch.tensor(self.sigmas[:-1], dtype=torch.float64)
        self.timesteps = sigma_to_t(levels, sched.sigmas.log()).tolist()
        thresholding = resolve_thresholding(o["thresholding"], o["clip_denoised"])
        self.denoiser = make_denoiser(model_fn, sched, parameterization, uncond, guidance_scale,
                                      o["guidance_rescale"], thresholding, o["threshold_ratio"], o["max_value"])
        self.cond, self.generator, self.quantize = cond, generator, bool(o["quantize"])
        self.report = StepReport(callback, o["intermediates"], self.x_T, self.num_steps, o["log_every_t"])

    @property
    def num_steps(self) -> int:
        """Number of steps (levels before the final one)."""
        return len(self.sigmas) - 1

    def start(self) -> torch.Tensor:
        """The VE state at the first level: x_T sqrt(1 + sigma_0^2) (x_T, or the img2img start, is the VP sample
        there)."""
        return self.x_T * math.sqrt(1 + self.sigmas[0] ** 2)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0 predicted at VE state x and level sigma (guidance, parameterization and thresholding applied)."""
        level = torch.full((x.shape[0],), sigma, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        return self.denoiser.denoise_sigma(x, level, self.cond, quantize=self.quantize)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise like x from the run's generator."""
        return randn_like(x, self.generator)

    def begin(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Before step i: where mask == 1 take x0 noised to level sigma_i, x0 + sigma_i z (the VE q(x_t | x0))."""
        if self.mask is None:
            return x
        return self.mask * (self.x0 + self.sigmas[i] * self.noise(x)) + (1 - self.mask) * x

    def end(self, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
        """After step i: report x (VP scale at sigma_{i+1}) and the step's x0 prediction; returns x unchanged."""
        if self.report.active:
            self.report(i, self.timesteps[i], x / math.sqrt(1 + self.sigmas[i + 1] ** 2), x0_pred)
        return x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The VP sample at the last level (x itself at sigma = 0) with the known region restored exactly."""
        return restore_known(x / math.sqrt(1 + self.sigmas[-1] ** 2), self.mask, self.x0)
