"""The original DDPM / LatentDiffusion sampling methods (`p_sample_loop`, `progressive_denoising`, `p_sample`,
`p_mean_variance`, `sample_log`, the original `sample` keywords), as mixins over our samplers.

Scripts written for CompVis call these on the model; each one is translated into a call of our "ddpm" sampler (the
ancestral chain), of `DDIMSampler`, or of the model's denoiser plus the posterior `q_posterior`, so there is no
second sampling loop. The model's current weights are used (callers wrap them in `model.ema_scope()` as before).
Original options we cannot honour (`quantize_denoised`, `return_codebook_ids`, `noise_dropout`, `score_corrector`)
raise a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.diffusion.samplers import get_sampler
from ldm.models.diffusion.ddim import DDIMSampler, legacy_callback, refuse_unsupported
from ldm.modules.diffusionmodules.util import noise_like


def posterior(model: Any, x: torch.Tensor, cond: Any, t: torch.Tensor,
              clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, variance, log variance) of p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_pred), and x0_pred (clamped to
    [-1, 1] with clip_denoised), from the model's denoiser (any parameterization)."""
    _, x0 = model.denoiser()(x, t, cond)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
    mean, variance, log_variance = model.q_posterior(x0, x, t)
    return mean, variance, log_variance, x0


def ancestral_step(model: Any, x: torch.Tensor, cond: Any, t: torch.Tensor, clip_denoised: bool,
                   repeat_noise: bool = False, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x_{t-1} = mean + sigma z (no noise where t == 0); returns (x_{t-1}, x0_pred) (original p_sample)."""
    mean, _, log_variance, x0 = posterior(model, x, cond, t, clip_denoised)
    noise = noise_like(x.shape, x.device, repeat_noise) * temperature
    nonzero = (t != 0).to(x.dtype).view(-1, *((1,) * (x.dim() - 1)))
    return mean + nonzero * (0.5 * log_variance).exp() * noise, x0


def ancestral_chain(model: Any, cond: Any, shape: Sequence[int], x_T: torch.Tensor | None = None,
                    timesteps: int | None = None, start_T: int | None = None, mask: torch.Tensor | None = None,
                    x0: torch.Tensor | None = None, callback: Callable | None = None,
                    img_callback: Callable | None = None, log_every_t: int | None = None,
                    temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Our "ddpm" sampler over DDPM indices n-1, ..., 0 (n = timesteps or T, capped by start_T), as the original
    loops; returns (x_0, {'x_inter': [...], 'pred_x0': [...]}) logged where t % log_every_t == 0 or t == n - 1."""
    n = model.num_timesteps if timesteps is None else int(timesteps)
    if start_T is not None:
        n = min(n, int(start_T))
    if x_T is None:
        x_T = torch.randn(tuple(shape), device=model.betas.device)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
    intermediates: dict = {}
    x = get_sampler("ddpm")(model.model_fn(), model.sampling_schedule(), x_T, None, cond=cond, mask=mask, x0=x0,
                            callback=legacy_callback(callback, img_callback, timestep_index=True),
                            parameterization=model.parameterization, timesteps=list(range(n)),
                            clip_denoised=bool(model.clip_denoised), temperature=temperature,
                            log_every_t=log_every_t or model.log_every_t, intermediates=intermediates)
    return x, intermediates


class LegacyDDPMSampling:
    """The original pixel-space `DDPM` sampling methods (mixed into `DDPM`)."""

    def p_mean_variance(self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool):
        """(model_mean, posterior_variance, posterior_log_variance) at x_t (original DDPM signature)."""
        return posterior(self, x, None, t, clip_denoised)[:3]

    @torch.no_grad()
    def p_sample(self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                 repeat_noise: bool = False) -> torch.Tensor:
        """One ancestral step from x_t (original DDPM signature)."""
        return ancestral_step(self, x, None, t, clip_denoised, repeat_noise)[0]

    @torch.no_grad()
    def p_sample_loop(self, shape: Sequence[int], return_intermediates: bool = False):
        """The full ancestral chain from noise of `shape`; (x, [x_T, x every log_every_t steps]) when asked."""
        x, inter = ancestral_chain(self, None, shape)
        return (x, inter["x_inter"]) if return_intermediates else x


class LegacyLatentSampling:
    """The original `LatentDiffusion` sampling methods (mixed into `LatentDiffusion`, ahead of `DDPM`)."""

    def p_mean_variance(self, x: torch.Tensor, c: Any, t: torch.Tensor, clip_denoised: bool,
                        return_codebook_ids: bool = False, quantize_denoised: bool = False, return_x0: bool = False,
                        score_corrector: Any = None, corrector_kwargs: dict | None = None):
        """(model_mean, posterior_variance, posterior_log_variance[, x0]) at x_t with conditioning c."""
        refuse_unsupported("p_mean_variance", quantize_denoised=quantize_denoised,
                           return_codebook_ids=return_codebook_ids, score_corrector=score_corrector)
        out = posterior(self, x, c, t, clip_denoised)
        return out if return_x0 else out[:3]

    @torch.no_grad()
    def p_sample(self, x: torch.Tensor, c: Any, t: torch.Tensor, clip_denoised: bool = False,
                 repeat_noise: bool = False, return_codebook_ids: bool = False, quantize_denoised: bool = False,
                 return_x0: bool = False, temperature: float = 1.0, noise_dropout: float = 0.0,
                 score_corrector: Any = None, corrector_kwargs: dict | None = None):
        """One ancestral step from x_t with conditioning c; (x_{t-1}, x0) with return_x0."""
        refuse_unsupported("p_sample", quantize_denoised=quantize_denoised, return_codebook_ids=return_codebook_ids,
                           noise_dropout=noise_dropout, score_corrector=score_corrector)
        x_prev, x0 = ancestral_step(self, x, c, t, clip_denoised, repeat_noise, temperature)
        return (x_prev, x0) if return_x0 else x_prev

    @torch.no_grad()
    def progressive_denoising(self, cond: Any, shape: Sequence[int], verbose: bool = True,
                              callback: Callable | None = None, quantize_denoised: bool = False,
                              img_callback: Callable | None = None, mask: torch.Tensor | None = None,
                              x0: torch.Tensor | None = None, temperature: float = 1.0, noise_dropout: float = 0.0,
                              score_corrector: Any = None, corrector_kwargs: dict | None = None,
                              batch_size: int | None = None, x_T: torch.Tensor | None = None,
                              start_T: int | None = None, log_every_t: int | None = None):
        """The ancestral chain; returns (x_0, [x0 predictions every log_every_t steps]) as the original."""
        refuse_unsupported("progressive_denoising", quantize_denoised=quantize_denoised,
                           noise_dropout=noise_dropout, score_corrector=score_corrector)
        if batch_size is not None:
            shape = (int(batch_size), *shape)
        x, inter = ancestral_chain(self, cond, shape, x_T, None, start_T, mask, x0, callback, img_callback,
                                   log_every_t, temperature)
        return x, inter["pred_x0"][1:]  # the first entry is x_T itself (not an x0 prediction)

    @torch.no_grad()
    def p_sample_loop(self, cond: Any, shape: Sequence[int], return_intermediates: bool = False,
                      x_T: torch.Tensor | None = None, verbose: bool = True, callback: Callable | None = None,
                      timesteps: int | None = None, quantize_denoised: bool = False,
                      mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                      img_callback: Callable | None = None, start_T: int | None = None,
                      log_every_t: int | None = None):
        """The ancestral chain over the first `timesteps` DDPM steps (all by default) from x_T or noise of `shape`
        (batch first); with return_intermediates (x, [x_T, x every log_every_t steps])."""
        refuse_unsupported("p_sample_loop", quantize_denoised=quantize_denoised)
        x, inter = ancestral_chain(self, cond, shape, x_T, timesteps, start_T, mask, x0, callback, img_callback,
                                   log_every_t)
        return (x, inter["x_inter"]) if return_intermediates else x

    @torch.no_grad()
    def sample(self, cond: Any = None, batch_size: int = 16, return_intermediates: bool = False,
               x_T: torch.Tensor | None = None, verbose: bool = True, timesteps: int | Sequence[int] | None = None,
               quantize_denoised: bool = False, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
               shape: Sequence[int] | None = None, **kwargs: Any):
        """`DDPM.sample` also taking the original keywords: `shape` with the batch dimension first, `timesteps` as
        a count (the original's ancestral chain over that many steps; sampler "ddpm" unless one is named),
        `verbose` (progress printing: nothing to print here), mask / x0. Intermediates stay our dict."""
        refuse_unsupported("sample", quantize_denoised=quantize_denoised)
        if shape is not None and len(shape) == len(self.sample_shape()) + 1:
            batch_size, shape = int(shape[0]), tuple(shape[1:])
        if isinstance(timesteps, int):
            kwargs.setdefault("sampler", "ddpm")
            kwargs.setdefault("steps", None)
            timesteps = list(range(timesteps))
        if timesteps is not None:
            kwargs["timesteps"] = list(timesteps)
        if mask is not None or x0 is not None:
            kwargs.update(mask=mask, x0=x0)
        return super().sample(cond=cond, batch_size=batch_size, shape=shape, x_T=x_T,
                              return_intermediates=return_intermediates, **kwargs)

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: int, **kwargs: Any):
        """(samples, intermediates): `DDIMSampler` with ddim_steps steps, or the ancestral chain (p_sample_loop,
        intermediates a list) as the original `log_images` uses it."""
        shape = self.sample_shape()
        if ddim:
            return DDIMSampler(self).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)
        kwargs.pop("eta", None)  # ancestral sampling has no eta (the original drops it the same way)
        return self.p_sample_loop(cond, (batch_size, *shape), return_intermediates=True, **kwargs)
