"""Samplers by name, without importing torch: a name -> "module:function" table imported on `get_sampler`.

CLIs list `available_samplers()` in --help before torch loads. Built-in samplers are the `BUILTIN_SAMPLERS` table;
`register_sampler(name)` adds any callable with the shared signature (see `signature.Sampler`) under a new name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> "module:attribute" of every built-in sampler; the module is imported when the sampler is first asked for.
BUILTIN_SAMPLERS = {
    "ddim": "ldm.diffusion.samplers.ddim:sample_ddim",
    "ddpm": "ldm.diffusion.samplers.ddpm:sample_ddpm",
    "plms": "ldm.diffusion.samplers.plms:sample_plms",
    "euler": "ldm.diffusion.samplers.euler:sample_euler",
    "euler_a": "ldm.diffusion.samplers.euler:sample_euler_ancestral",
    "heun": "ldm.diffusion.samplers.euler:sample_heun",
    "dpmpp_2m": "ldm.diffusion.samplers.dpm_solver:sample_dpmpp_2m",
    "dpmpp_2s": "ldm.diffusion.samplers.dpm_solver:sample_dpmpp_2s",
    "dpmpp_3m": "ldm.diffusion.samplers.dpm_solver:sample_dpmpp_3m",
    "dpmpp_2m_sde": "ldm.diffusion.samplers.dpm_solver:sample_dpmpp_2m_sde",
    "unipc": "ldm.diffusion.samplers.unipc:sample_unipc",
}

_REGISTERED: dict[str, Callable[..., Any]] = {}  # samplers added at run time with `register_sampler`


def _load(name: str) -> Callable[..., Any]:
    """The built-in sampler `name`, importing its module."""
    module, attribute = BUILTIN_SAMPLERS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def register_sampler(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a sampler callable under `name` (names are unique; the same callable again is a no-op)."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTERED.get(name) or (_load(name) if name in BUILTIN_SAMPLERS else None)
        if existing is not None and existing is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered ({existing.__module__})")
        _REGISTERED[name] = fn
        return fn
    return decorate


def get_sampler(name: str) -> Callable[..., Any]:
    """The sampler registered under `name`; the error lists the available names."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTIN_SAMPLERS:
        return _load(name)
    raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")


def available_samplers() -> list[str]:
    """Sorted names of all samplers (built-in and registered)."""
    return sorted(set(BUILTIN_SAMPLERS) | set(_REGISTERED))
