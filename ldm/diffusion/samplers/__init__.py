"""Samplers by name: `get_sampler("ddim")(model_fn, schedule, x_T, steps, ...)`; each family lives in its own file.

A new sampler file decorates its function with `@register_sampler(name)` and is imported below.
"""

from ldm.diffusion.samplers.base import Sampler, make_timesteps
from ldm.diffusion.samplers.registry import available_samplers, get_sampler, register_sampler

# Importing registers them.
from ldm.diffusion.samplers.ddim import sample_ddim  # noqa: E402
from ldm.diffusion.samplers.ddpm import sample_ddpm  # noqa: E402

__all__ = ["Sampler", "available_samplers", "get_sampler", "make_timesteps", "register_sampler", "sample_ddim",
           "sample_ddpm"]
