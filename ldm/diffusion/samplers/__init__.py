"""Samplers by name: `get_sampler("ddim")(model_fn, schedule, x_T, steps, ...)`; each family lives in its own file.

DDPM-timestep samplers: ddpm, ddim, plms. Sigma-space samplers (Karras grids by default, see `sigma_space` for how
x_T is scaled): euler, euler_a, heun, dpmpp_2m, dpmpp_2s, dpmpp_3m, dpmpp_2m_sde, unipc. Each one is an algorithm
over a ready denoiser and a grid (`context`), made a public function with the shared signature by `signature`;
`registry` maps names to them without importing torch, and so does this package: its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ldm.diffusion.samplers.registry import (
    BUILTIN_SAMPLERS,
    available_samplers,
    get_sampler,
    register_sampler,
)

# Public name -> defining module, imported on first access (module-level __getattr__), so that
# `from ldm.diffusion.samplers import available_samplers` stays torch-free.
_LAZY = {
    "Sampler": "ldm.diffusion.samplers.signature", "make_timesteps": "ldm.diffusion.samplers.timesteps",
    "threshold_x0": "ldm.diffusion.samplers.denoising", "karras_sigmas": "ldm.diffusion.samplers.sigmas",
    "make_sigmas": "ldm.diffusion.samplers.sigmas", "SamplingContext": "ldm.diffusion.samplers.context",
    **{spec.split(":")[1]: spec.split(":")[0] for spec in BUILTIN_SAMPLERS.values()},
}

__all__ = ["available_samplers", "get_sampler", "register_sampler", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
