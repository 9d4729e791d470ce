"""Samplers by name: `get_sampler("ddim")(model_fn, schedule, x_T, steps, ...)`; each family lives in its own file.

A new sampler file decorates its function with `@register_sampler(name)` and is imported below. DDPM-timestep
samplers: ddpm, ddim, plms. Sigma-space samplers (Karras grids by default, see `sigma_space` for how x_T is scaled):
euler, euler_a, heun, dpmpp_2m, dpmpp_2s, dpmpp_3m, dpmpp_2m_sde, unipc.
"""

from ldm.diffusion.samplers.base import Sampler, make_timesteps, threshold_x0
from ldm.diffusion.samplers.registry import available_samplers, get_sampler, register_sampler
from ldm.diffusion.samplers.sigmas import karras_sigmas, make_sigmas

# Importing registers them.
from ldm.diffusion.samplers.ddim import sample_ddim  # noqa: E402
from ldm.diffusion.samplers.ddpm import sample_ddpm  # noqa: E402
from ldm.diffusion.samplers.dpm_solver import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s,  # noqa: E402
                                               sample_dpmpp_3m)
from ldm.diffusion.samplers.euler import sample_euler, sample_euler_ancestral, sample_heun  # noqa: E402
from ldm.diffusion.samplers.plms import sample_plms  # noqa: E402
from ldm.diffusion.samplers.unipc import sample_unipc  # noqa: E402

__all__ = ["Sampler", "available_samplers", "get_sampler", "karras_sigmas", "make_sigmas", "make_timesteps",
           "register_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde",
           "sample_dpmpp_2s", "sample_dpmpp_3m", "sample_euler", "sample_euler_ancestral", "sample_heun",
           "sample_plms", "sample_unipc", "threshold_x0"]
