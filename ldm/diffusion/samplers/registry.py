"""Name -> sampler function registry; `register_sampler` is how each sampler file makes itself available."""

from __future__ import annotations

from collections.abc import Callable

from ldm.diffusion.samplers.base import Sampler

_SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    """Decorator: register a sampler function under `name` (names are unique)."""
    def decorate(fn: Sampler) -> Sampler:
        if name in _SAMPLERS and _SAMPLERS[name] is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered ({_SAMPLERS[name].__module__})")
        _SAMPLERS[name] = fn
        return fn
    return decorate


def get_sampler(name: str) -> Sampler:
    """The sampler registered under `name`; the error lists the available names."""
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}") from None


def available_samplers() -> list[str]:
    """Sorted names of all registered samplers."""
    return sorted(_SAMPLERS)
