"""CompVis `DDIMSampler` (`ldm.models.diffusion.ddim`) as a thin adapter over our "ddim" sampler.

The original scripts build `DDIMSampler(model)` and call `sampler.sample(S, batch_size, shape, conditioning, ...)`;
here that call is translated into `get_sampler("ddim")(model.model_fn(), model.sampling_schedule(), x_T, ...)`, so
there is one DDIM implementation. `make_schedule` sets the attributes the original exposes (`ddim_timesteps`,
`ddim_alphas`, `ddim_alphas_prev`, `ddim_sigmas`, `ddim_sqrt_one_minus_alphas`, the schedule buffers), which some
scripts read. The model's current weights are used, so callers wrap sampling in `model.ema_scope()` as before.
Options of the original we cannot honour (`quantize_x0`, `noise_dropout`, `score_corrector`) raise a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ldm.diffusion.samplers import get_sampler
from ldm.diffusion.samplers.ddim import ddim_sigmas
from ldm.diffusion.schedule import SCHEDULE_BUFFER_NAMES, extract_into_tensor
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps


# Options of the original samplers and sampling methods that the adapters cannot honour: why, per option name.
UNSUPPORTED_OPTIONS = {
    "quantize_x0": "VQ-quantizing the x0 prediction is not supported",
    "quantize_denoised": "VQ-quantizing x0 is not supported",
    "return_codebook_ids": "is not supported",
    "noise_dropout": "is not supported (only 0)",
    "score_corrector": "is not supported (use classifier-free guidance)",
    "temperature": "is not supported (only 1.0)",
}


def refuse_unsupported(name: str, **options: Any) -> None:
    """Raise a one-line ValueError for an original option (UNSUPPORTED_OPTIONS) set to anything but its neutral
    value (off / 0 / None; temperature 1.0): never silently ignore it."""
    for option, value in options.items():
        neutral = value == 1.0 if option == "temperature" else value is None or value is False or value == 0
        if not neutral:
            raise ValueError(f"{name}: {option}={value!r}: {UNSUPPORTED_OPTIONS[option]}")


def legacy_callback(callback: Callable | None, img_callback: Callable | None, timestep_index: bool = False):
    """Our `callback(i, t, x, x0_pred)` calling the original `callback(i)` and `img_callback(pred_x0, i)`.

    The DDIM/PLMS originals pass the step count i; `timestep_index` passes the DDPM index t instead (p_sample_loop).
    """
    if callback is None and img_callback is None:
        return None

    def report(i: int, t: Any, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        step = int(t) if timestep_index else i
        if callback is not None:
            callback(step)
        if img_callback is not None:
            img_callback(x if timestep_index else x0_pred, step)
    return report


def start_noise(model: torch.nn.Module, batch_size: int, shape: Sequence[int],
                x_T: torch.Tensor | None) -> torch.Tensor:
    """x_T, checked against (batch_size, *shape), or fresh torch.randn on the model's device (as the original)."""
    size = (int(batch_size), *(int(s) for s in shape))
    if x_T is None:
        return torch.randn(size, device=model.betas.device)
    if tuple(x_T.shape) != size:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but batch_size and shape ask for {size}")
    return x_T


def guidance(scale: float, uncond: Any) -> tuple[float, Any]:
    """The original rule: guidance runs only with unconditional_conditioning given and a scale != 1."""
    if uncond is None or scale == 1.0:
        return 1.0, None
    return float(scale), uncond


@dataclass
class OriginalSampleCall:
    """The arguments of an original `sampler.sample(...)` call that the adapters act on."""

    steps: int
    x_T: torch.Tensor
    cond: Any
    uncond: Any
    scale: float
    eta: float
    temperature: float
    mask: torch.Tensor | None
    x0: torch.Tensor | None
    callback: Callable | None
    log_every_t: int
    verbose: bool
    options: dict[str, Any]


class OriginalSampler:
    """The original samplers' `sample(S, batch_size, shape, conditioning, ...)` signature, written once: options we
    cannot honour are refused, x_T is checked (or drawn), guidance follows the original rule, and the adapter's
    `_sample(call)` runs our sampler. Subclasses set `model` and implement `_sample`."""

    model: torch.nn.Module

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store `attr` as an attribute, tensors on the model's device (original helper)."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.model.betas.device)
        setattr(self, name, attr)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable | None = None, normals_sequence: Any = None, img_callback: Callable | None = None,
               quantize_x0: bool = False, eta: float = 0.0, mask: torch.Tensor | None = None,
               x0: torch.Tensor | None = None, temperature: float = 1.0, noise_dropout: float = 0.0,
               score_corrector: Any = None, corrector_kwargs: dict | None = None, verbose: bool = True,
               x_T: torch.Tensor | None = None, log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        """S steps from x_T (or fresh noise) of shape (batch_size, *shape); returns (samples, what the original
        returns second). `normals_sequence` and `corrector_kwargs` are unused (as in the original); other keyword
        arguments go to our sampler (e.g. guidance_rescale) and an unknown one raises TypeError."""
        refuse_unsupported(type(self).__name__, quantize_x0=quantize_x0, noise_dropout=noise_dropout,
                           score_corrector=score_corrector)
        scale, uncond = guidance(unconditional_guidance_scale, unconditional_conditioning)
        return self._sample(OriginalSampleCall(
            steps=int(S), x_T=start_noise(self.model, batch_size, shape, x_T), cond=conditioning, uncond=uncond,
            scale=scale, eta=eta, temperature=temperature, mask=mask, x0=x0,
            callback=legacy_callback(callback, img_callback), log_every_t=log_every_t, verbose=verbose,
            options=kwargs))

    def _sample(self, call: OriginalSampleCall) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError


class DDIMSampler(OriginalSampler):
    """The original `DDIMSampler(model, schedule="linear")`: `make_schedule`, `sample`, `stochastic_encode`, `decode`."""

    sampler_name = "ddim"

    def __init__(self, model: torch.nn.Module, schedule: str = "linear", **kwargs: Any):
        self.model = model
        self.ddpm_num_timesteps = int(model.num_timesteps)
        self.schedule = schedule
        self.ddim_eta = 0.0

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Pick the DDIM timesteps and set the per-step tables the original exposes (float32 on the model's device)."""
        self.ddim_timesteps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps, verbose)
        self.ddim_discretize, self.ddim_eta = ddim_discretize, float(ddim_eta)
        for name in SCHEDULE_BUFFER_NAMES:  # the model's buffers, copied as the original does
            if hasattr(self.model, name):
                self.register_buffer(name, getattr(self.model, name).detach().clone().float())
        schedule = self.model.sampling_schedule()
        abar, abar_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(abar, self.ddim_timesteps, ddim_eta, verbose)
        self.register_buffer("ddim_sigmas", sigmas.float())
        self.register_buffer("ddim_alphas", alphas.float())
        self.register_buffer("ddim_alphas_prev", alphas_prev.float())
        self.register_buffer("ddim_sqrt_one_minus_alphas", (1.0 - alphas).sqrt().float())
        self.register_buffer("ddim_sigmas_for_original_num_steps", ddim_sigmas(abar, abar_prev, ddim_eta).float())

    def _run(self, x_T: torch.Tensor, timesteps: list[int], cond: Any, uncond: Any, scale: float, eta: float,
             **opts: Any) -> torch.Tensor:
        """Our sampler `sampler_name` over the model's current weights on the given DDPM indices."""
        scale, uncond = guidance(scale, uncond)
        return get_sampler(self.sampler_name)(self.model.model_fn(), self.model.sampling_schedule(), x_T, None,
                                              cond=cond, uncond=uncond, guidance_scale=scale, eta=eta,
                                              parameterization=self.model.parameterization, timesteps=timesteps,
                                              **opts)

    def _options(self, temperature: float) -> dict[str, Any]:
        return {"temperature": temperature}

    def _sample(self, call: OriginalSampleCall) -> tuple[torch.Tensor, dict]:
        """Our sampler on the DDIM timesteps of S steps; returns (samples, intermediates) with intermediates
        {'x_inter': [...], 'pred_x0': [...]} every `log_every_t` steps, as the original."""
        self.make_schedule(ddim_num_steps=call.steps, ddim_eta=call.eta, verbose=call.verbose)
        intermediates: dict = {}
        samples = self._run(call.x_T, [int(t) for t in self.ddim_timesteps], call.cond, call.uncond, call.scale,
                            call.eta, mask=call.mask, x0=call.x0, callback=call.callback,
                            log_every_t=call.log_every_t, intermediates=intermediates,
                            **self._options(call.temperature), **call.options)
        return samples, intermediates

    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor, use_original_steps: bool = False,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
        """x0 noised to DDIM step index t (an index into ddim_timesteps, or a DDPM index with use_original_steps):
        sqrt(abar) x0 + sqrt(1 - abar) noise (SD img2img; call `make_schedule` first)."""
        if use_original_steps:
            sqrt_abar, sqrt_1m = self.model.sqrt_alphas_cumprod, self.model.sqrt_one_minus_alphas_cumprod
        else:
            sqrt_abar, sqrt_1m = self.ddim_alphas.sqrt(), self.ddim_sqrt_one_minus_alphas
        noise = torch.randn_like(x0) if noise is None else noise
        t = t.to(sqrt_abar.device).long()
        return (extract_into_tensor(sqrt_abar, t, x0.shape).to(x0) * x0
                + extract_into_tensor(sqrt_1m, t, x0.shape).to(x0) * noise)

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               **kwargs: Any) -> torch.Tensor:
        """Denoise `x_latent` from the t_start-th DDIM step down to 0 with the eta of `make_schedule` (SD img2img)."""
        grid = range(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps
        timesteps = [int(t) for t in grid][: int(t_start)]
        if not timesteps:
            return x_latent
        return self._run(x_latent, timesteps, cond, unconditional_conditioning, unconditional_guidance_scale,
                         self.ddim_eta, **kwargs)


__all__ = ["DDIMSampler", "make_ddim_sampling_parameters", "make_ddim_timesteps"]
