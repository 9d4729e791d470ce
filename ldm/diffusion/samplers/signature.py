"""The public sampler functions: an algorithm over a ready denoiser becomes a function with the shared signature.

`timestep_sampler(name, algorithm, ...)` and `sigma_sampler(name, algorithm, ...)` return
`sample(model_fn, schedule, x_T, steps, cond, uncond, guidance_scale, eta, mask, x0, callback, generator,
parameterization, **options)` (`Sampler`): it checks eta and the option names, builds a `SamplingContext` and
runs the algorithm in it, under torch.no_grad. The keyword-only options are the context's (`CONTEXT_OPTIONS`), the
grid's, and the algorithm's own keyword-only parameters; `inspect.signature` shows all of them with their defaults
(and the sampler's own defaults of steps and eta, which callers read).

eta: an algorithm with an `eta` parameter is stochastic and gets eta resolved (a default of None means 1,
`check_eta`); one without it is deterministic and rejects eta != 0, unless `ignores_eta` (ancestral DDPM).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ldm.diffusion.parameterization import ModelFn
from ldm.diffusion.samplers.reporting import StepCallback
from ldm.diffusion.schedule import DiffusionSchedule
from ldm.diffusion.samplers.context import (
    CONTEXT_OPTIONS,
    SIGMA_GRID_OPTIONS,
    SamplingContext,
)
from ldm.diffusion.samplers.sigma_space import check_eta


class Sampler(Protocol):
    """The signature every registered sampler implements."""

    def __call__(self, model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = None,
                 cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                 mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None,
                 parameterization: str = "eps", **opts: Any) -> torch.Tensor: ...


# The shared parameters, in order, from the one declaration of the signature.
SHARED_PARAMETERS = [p for p in inspect.signature(Sampler.__call__).parameters.values() if p.name != "self"]
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


def _public(name: str, algorithm: Callable[..., torch.Tensor], run: Callable[..., torch.Tensor], steps: int | None,
            eta: float | None, ignores_eta: bool, grid_options: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The sampler function around `algorithm`; `run(context, steps, grid options, algorithm options)` runs it."""
    own = {p.name: p.default for p in inspect.signature(algorithm).parameters.values()
           if p.kind is _KEYWORD_ONLY and p.name != "eta"}
    stochastic = "eta" in inspect.signature(algorithm).parameters
    accepted = {**CONTEXT_OPTIONS, **grid_options, **own}
    defaults = {"steps": steps, "eta": eta}
    shared = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in SHARED_PARAMETERS]
    binder = inspect.Signature(shared)
    public = inspect.Signature([p for p in shared if p.kind is not inspect.Parameter.VAR_KEYWORD]
                               + [inspect.Parameter(k, _KEYWORD_ONLY, default=v) for k, v in accepted.items()],
                               return_annotation=torch.Tensor)

    @torch.no_grad()
    def sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        call = binder.bind(*args, **kwargs)
        call.apply_defaults()
        values = dict(call.arguments)
        opts = values.pop("opts")
        unknown = sorted(set(opts) - set(accepted))
        if unknown:
            raise TypeError(f"{name} got unexpected option(s) {unknown}; it accepts {sorted(accepted)}")
        algorithm_options = {k: opts.pop(k, v) for k, v in own.items()}
        if stochastic:
            algorithm_options["eta"] = check_eta(name, values["eta"], 1.0 if eta is None else eta)
        elif not ignores_eta:
            check_eta(name, values["eta"], stochastic=False)
        grid = {k: opts.pop(k) for k in grid_options if k in opts}
        context_args = {k: v for k, v in values.items() if k not in ("model_fn", "schedule", "x_T", "steps", "eta")}
        context = SamplingContext(values["model_fn"], values["schedule"], values["x_T"], **context_args, **opts)
        return run(context, values["steps"], grid, algorithm_options)

    functools.update_wrapper(sample, algorithm)
    sample.__name__ = sample.__qualname__ = f"sample_{algorithm.__name__}"
    sample.__signature__ = public
    del sample.__wrapped__  # the signature is the public one, not the algorithm's
    return sample


def timestep_sampler(name: str, algorithm: Callable[..., torch.Tensor], steps: int | None = 50, eta: float = 0.0,
                     spacing_option: str | None = "spacing", offset: int = 1,
                     ignores_eta: bool = False) -> Callable[..., torch.Tensor]:
    """A sampler over DDPM indices: `algorithm(denoise, x, grid, step, noise, **options)` with `denoise(x, t) ->
    (eps, x0)` and a `TimestepGrid`. Grid options: `spacing_option` (the spacing's option name, e.g. DDIM's original
    `ddim_discretize`; None: always "uniform") and `timesteps` (explicit indices); `offset` as `make_timesteps`."""
    grid_options = {"timesteps": None} if spacing_option is None else {spacing_option: "uniform", "timesteps": None}

    def run(context: SamplingContext, steps: int | None, grid: dict[str, Any], options: dict[str, Any]):
        spacing = grid.pop(spacing_option, "uniform") if spacing_option else "uniform"
        return context.run_timesteps(algorithm, steps, options, spacing, offset=offset, **grid)

    return _public(name, algorithm, run, steps, eta, ignores_eta, grid_options)


def sigma_sampler(name: str, algorithm: Callable[..., torch.Tensor], steps: int | None = 25,
                  eta: float | None = 0.0) -> Callable[..., torch.Tensor]:
    """A sampler in sigma space: `algorithm(denoise, x, sigmas, step, noise, **options)` with `denoise(x, sigma) ->
    x0` on the VE state. Grid options: `SIGMA_GRID_OPTIONS` (Karras sigmas by default)."""
    def run(context: SamplingContext, steps: int | None, grid: dict[str, Any], options: dict[str, Any]):
        return context.run_sigmas(algorithm, steps, options, **grid)

    return _public(name, algorithm, run, steps, eta, False, SIGMA_GRID_OPTIONS)
