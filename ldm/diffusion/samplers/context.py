"""One sampling run's context, built once from the shared sampler arguments; the algorithm in between sees only a
ready denoiser, its grid, a step hook and a noise source (the k-diffusion / sgm split).

`SamplingContext` holds what is the same for every sampler: the denoiser (`make_denoiser`: classifier-free guidance
+ rescale, the eps/x0/v conversion, x0 thresholding) with the run's conditioning, the inpainting mask, the noise
generator, img2img inputs and the step reports. `run_timesteps` / `run_sigmas` add the grid (after img2img
trimming), the starting x, and call the algorithm as

    x = algorithm(denoise, x, grid, step, noise, **options)

with `denoise(x, t) -> (eps, x0)` at a DDPM index (`TimestepDenoiser`) or `denoise(x, sigma) -> x0` at a VE noise
level, `grid` a `TimestepGrid` or a descending sigma list ending in the final level, `step(i, x, x0_pred) -> x`
called after every step (it reports the step and takes the known region of an inpainting mask back for the next
one) and `noise(x)` standard normal draws from the run's generator. Sigma-space algorithms work on the VE state
x = x_t / sqrt(abar) (see `sigma_space`); the context converts at both ends and for reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import ModelFn, as_schedule, sigma_to_t
from ldm.diffusion.samplers.denoising import (DYNAMIC_THRESHOLD_RATIO, THRESHOLD_MAX_VALUE, blend_known, check_inputs,
                                              make_denoiser, resolve_thresholding, restore_known)
from ldm.diffusion.samplers.reporting import StepCallback, StepReport
from ldm.diffusion.samplers.sigma_space import start_sigmas
from ldm.diffusion.samplers.sigmas import KARRAS_RHO, make_sigmas
from ldm.diffusion.samplers.timesteps import select_timesteps, start_timesteps, step_alphas, timestep_batch, to_like

# Options every sampler takes (keyword-only), handled here, with their defaults.
CONTEXT_OPTIONS: dict[str, Any] = {
    "guidance_rescale": 0.0, "thresholding": None, "clip_denoised": False,
    "threshold_ratio": DYNAMIC_THRESHOLD_RATIO, "max_value": THRESHOLD_MAX_VALUE,
    "log_every_t": 100, "intermediates": None, "x_init": None, "strength": 1.0,
}
# Grid options of the sigma-space samplers (`make_sigmas`, and `quantize` for the model's timestep).
SIGMA_GRID_OPTIONS: dict[str, Any] = {"spacing": "karras", "rho": KARRAS_RHO, "sigma_min": None, "sigma_max": None,
                                      "sigmas": None, "quantize": False}

Step = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # step(i, x, x0_pred) -> x for the next step
Noise = Callable[[torch.Tensor], torch.Tensor]  # noise(x): standard normal draws like x
SigmaDenoise = Callable[[torch.Tensor, float], torch.Tensor]  # denoise(x, sigma) -> x0 on the VE state


@dataclass(frozen=True)
class TimestepGrid:
    """A DDPM-index run in sampling order (noisiest first): the indices, abar at each and at its predecessor
    (float64, CPU; `step_alphas`), and the schedule's `v_posterior` (for the DDPM posterior)."""

    timesteps: list[int]
    abar: torch.Tensor
    abar_prev: torch.Tensor
    v_posterior: float = 0.0


class TimestepDenoiser:
    """`denoise(x, t) -> (eps, x0)` at one DDPM index t for the whole batch, with the run's conditioning; `threshold`
    applies the run's x0 thresholding again (PLMS does, to the x0 of its combined eps)."""

    def __init__(self, denoiser: Any, cond: Any):
        self.denoiser = denoiser
        self.cond = cond

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) predicted at x = x_t for DDPM index t."""
        return self.denoiser(x, timestep_batch(x, t), self.cond)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 through the run's thresholding (unchanged when there is none)."""
        threshold = getattr(self.denoiser, "threshold", None)
        return x0 if threshold is None else threshold(x0)


class SamplingContext:
    """What surrounds a sampler's algorithm in one run (see the module docstring); `run_timesteps` / `run_sigmas`
    build the grid and run the algorithm."""

    def __init__(self, model_fn: ModelFn, schedule: Any, x_T: torch.Tensor, *, cond: Any = None, uncond: Any = None,
                 guidance_scale: float = 1.0, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None,
                 parameterization: str = "eps", guidance_rescale: float = 0.0, thresholding: str | None = None,
                 clip_denoised: bool = False, threshold_ratio: float = DYNAMIC_THRESHOLD_RATIO,
                 max_value: float = THRESHOLD_MAX_VALUE, log_every_t: int = 100, intermediates: dict | None = None,
                 x_init: torch.Tensor | None = None, strength: float = 1.0):
        self.schedule = as_schedule(schedule)
        self.x_T = x_T
        self.mask, self.x0 = check_inputs(x_T, mask, x0)
        self.x_init, self.strength = x_init, strength
        thresholding = resolve_thresholding(thresholding, clip_denoised)
        self.denoiser = make_denoiser(model_fn, self.schedule, parameterization, uncond, guidance_scale,
                                      guidance_rescale, thresholding, threshold_ratio, max_value)
        self.cond, self.generator = cond, generator
        self.callback, self.intermediates, self.log_every_t = callback, intermediates, log_every_t

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise like x from the run's generator."""
        return randn_like(x, self.generator)

    def run_timesteps(self, algorithm: Callable[..., torch.Tensor], steps: int | None, options: dict[str, Any],
                      spacing: str = "uniform", timesteps: Sequence[int] | None = None,
                      offset: int = 1) -> torch.Tensor:
        """Run a DDPM-index algorithm on the grid `select_timesteps(T, steps, spacing, timesteps, offset)` (img2img:
        its lowest `strength` part, `start_timesteps`); the mask blend uses q(x_t | x0) at each step's index."""
        ascending = select_timesteps(self.schedule.num_timesteps, steps, spacing, timesteps, offset)
        kept, x = start_timesteps(self.schedule, ascending, self.x_T, self.x_init, self.strength)
        abar, abar_prev = step_alphas(self.schedule, kept)
        grid = TimestepGrid(kept[::-1], abar.flip(0), abar_prev.flip(0), self.schedule.v_posterior)
        sqrt_abar, sqrt_1m_abar = to_like(grid.abar.sqrt(), x), to_like((1 - grid.abar).sqrt(), x)

        def blend(i: int, x: torch.Tensor) -> torch.Tensor:
            return blend_known(x, self.mask, self.x0, sqrt_abar[i], sqrt_1m_abar[i], self.generator)

        step = self._step_hook(x, grid.timesteps, blend, lambda i, x: x)
        if grid.timesteps:  # img2img at strength 0 runs no step (and no model call)
            x = algorithm(TimestepDenoiser(self.denoiser, self.cond), self._blended(blend, x), grid, step,
                          self.noise, **options)
        return restore_known(x, self.mask, self.x0)

    def run_sigmas(self, algorithm: Callable[..., torch.Tensor], steps: int | None, options: dict[str, Any],
                   spacing: str = "karras", rho: float = KARRAS_RHO, sigma_min: float | None = None,
                   sigma_max: float | None = None, sigmas: Sequence[float] | torch.Tensor | None = None,
                   quantize: bool = False) -> torch.Tensor:
        """Run a sigma-space algorithm on `make_sigmas(...)` (img2img: its last `strength` part, `start_sigmas`) in
        the VE state: x_T (or the img2img start), the VP sample at sigma_0, enters as x_T sqrt(1 + sigma_0^2); the
        result at the last level (0: x itself) leaves as x / sqrt(1 + sigma^2). The mask blend is x0 + sigma_i z."""
        num_timesteps = self.schedule.num_timesteps
        grid = make_sigmas(self.schedule, num_timesteps if steps is None else steps, spacing, rho, sigma_min,
                           sigma_max, sigmas)
        grid, x_vp = start_sigmas(grid, self.x_T, self.x_init, self.strength)
        # fractional DDPM index of every level (reports only); float64 on the CPU, once, so no syncs later
        report_t = sigma_to_t(torch.tensor(grid[:-1], dtype=torch.float64), self.schedule.sigmas.log()).tolist()

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            level = torch.full((x.shape[0],), sigma, dtype=torch.promote_types(x.dtype, torch.float32),
                               device=x.device)
            return self.denoiser.denoise_sigma(x, level, self.cond, quantize=bool(quantize))

        def blend(i: int, x: torch.Tensor) -> torch.Tensor:
            return self.mask * (self.x0 + grid[i] * self.noise(x)) + (1 - self.mask) * x

        step = self._step_hook(x_vp, report_t, blend, lambda i, x: x / math.sqrt(1 + grid[i + 1] ** 2))
        x = x_vp * math.sqrt(1 + grid[0] ** 2)
        if len(grid) > 1:
            x = algorithm(denoise, self._blended(blend, x), grid, step, self.noise, **options)
        return restore_known(x / math.sqrt(1 + grid[-1] ** 2), self.mask, self.x0)

    def _blended(self, blend: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """x before the first step: the known region taken from x0 at the first level (x itself without a mask)."""
        return x if self.mask is None else blend(0, x)

    def _step_hook(self, x_start: torch.Tensor, report_t: Sequence[Any], blend: Callable[[int, torch.Tensor], Any],
                   to_vp: Callable[[int, torch.Tensor], torch.Tensor]) -> Step:
        """`step(i, x, x0_pred) -> x`: report step i (x in the VP scale, the model's timestep of the step), then
        blend the known region in for step i + 1. The report announces the number of steps first."""
        n = len(report_t)
        report = StepReport(self.callback, self.intermediates, x_start, n, self.log_every_t)

        def step(i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
            if report.active:
                report(i, report_t[i], to_vp(i, x), x0_pred)
            return x if self.mask is None or i + 1 == n else blend(i + 1, x)
        return step
