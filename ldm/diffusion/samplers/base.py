"""Pieces every sampler shares: timestep selection, input checks, guidance + denoiser set-up, inpainting blend, logs.

The common signature (one for all samplers, extra options keyword-only after it)::

    sample(model_fn, schedule, x_T, steps, cond=None, uncond=None, guidance_scale=1.0, eta=0.0, mask=None,
           x0=None, callback=None, generator=None, parameterization="eps", **opts) -> x_0

`model_fn(x_t, t, cond)` returns the raw network output (eps, x0 or v, per `parameterization`); `t` is a (B,) long
tensor of DDPM indices (sigma-space samplers pass fractional float indices unless `quantize=True`; see
`sigma_space`). `callback(i, t, x, x0_pred)` is called after step i (0-based, in sampling order) with the new x and
the x0 prediction of that step; a callback with a `set_total(n)` method is first told how many steps the run makes
(`announce_steps`: e.g. DDIM's uniform spacing may give more indices than `steps`). With `mask`, entries where
mask == 1 are taken from `x0` (noised to the current step) before every step and exactly at the end. img2img (every
sampler, keyword-only `x_init`, `strength`): run only the last floor(strength * n) of the n steps, from `x_init`
noised to the first of them with `x_T` as the noise (`strength_steps`, `start_timesteps`; strength 1 is plain
sampling from x_T, strength 0 returns x_init).
`make_denoiser` is the one place where guidance, the eps/x0/v conversion and x0 thresholding (`threshold_x0`) are
put around the network for every sampler.
`TimestepRun` (ddpm, ddim, plms) and `sigma_space.SigmaRun` (the rest) hold one run's grid, inpainting blend and
`StepReport` (callback + intermediates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch

from ldm.diffusion.guidance import guided_model_fn
from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import Denoiser, ModelFn, as_schedule, eps_from_x0
from ldm.diffusion.schedule import DiffusionSchedule

TIMESTEP_SPACINGS = ("uniform", "quad", "trailing", "leading", "linspace")

# x0 thresholding switches: "clip" clamps to [-max_value, max_value]; "dynamic" is Imagen's dynamic thresholding.
THRESHOLDINGS = ("clip", "dynamic")
DYNAMIC_THRESHOLD_RATIO = 0.995  # the percentile p of |x0| (Saharia et al. 2022, sec. 2.3)
THRESHOLD_MAX_VALUE = 1.0  # images live in [-1, 1]; latents may want their own bound

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class Sampler(Protocol):
    """The signature every registered sampler implements."""

    def __call__(self, model_fn: ModelFn, schedule: DiffusionSchedule, x_T: torch.Tensor, steps: int | None = None,
                 cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
                 mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None,
                 parameterization: str = "eps", **opts: Any) -> torch.Tensor: ...


def make_timesteps(spacing: str, steps: int, num_timesteps: int, offset: int = 1) -> list[int]:
    """Ascending DDPM indices for `steps` sampler steps (the original `make_ddim_timesteps`, plus Lin et al. trailing).

    uniform: range(0, T, T // steps) + offset (may give more than `steps` indices when T % steps != 0, as the
    original); quad: floor(linspace(0, sqrt(0.8 T), steps)^2) + offset; trailing: round(T - k T / steps) - 1, which
    always starts from T - 1 (Lin et al. 2023, Table 2) and takes no offset; leading: k * (T // steps) + offset for
    k < steps (exactly `steps` indices, the diffusers "leading" with steps_offset); linspace: round(linspace(0,
    T - 1, steps)), from T - 1 down to 0 (one step: [T - 1]), no offset. The offset is dropped where it would push
    the last index past T - 1 (e.g. steps == T).
    """
    if not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_timesteps}], got {steps!r}")
    if spacing == "uniform":
        base = torch.arange(0, num_timesteps, num_timesteps // steps)
    elif spacing == "quad":
        base = (torch.linspace(0, (num_timesteps * 0.8) ** 0.5, steps, dtype=torch.float64) ** 2).long()
    elif spacing == "trailing":
        k = torch.arange(steps, dtype=torch.float64)
        base = (num_timesteps - k * num_timesteps / steps).round().long() - 1
        return sorted(base.tolist())
    elif spacing == "leading":
        base = torch.arange(steps) * (num_timesteps // steps)
    elif spacing == "linspace":
        if steps == 1:  # linspace(0, T - 1, 1) would be [0]; one step starts from the noisiest index like the rest
            return [num_timesteps - 1]
        return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    if int(base[-1]) + offset <= num_timesteps - 1:
        base = base + offset
    return base.tolist()


def check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """Validate explicit DDPM indices: non-decreasing ints in [0, T-1]."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(b < a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be in ascending order, got {ts}")
    if ts[0] < 0 or ts[-1] >= num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_timesteps - 1}], got {ts[0]}..{ts[-1]}")
    return ts


def select_timesteps(num_timesteps: int, steps: int | None, spacing: str = "uniform",
                     timesteps: Sequence[int] | None = None, offset: int = 1) -> list[int]:
    """A DDPM-timestep sampler's ascending grid: explicit `timesteps` (checked), else `make_timesteps(spacing, steps,
    T, offset)` with steps None meaning all T."""
    if timesteps is not None:
        return check_timesteps(timesteps, num_timesteps)
    return make_timesteps(spacing, num_timesteps if steps is None else steps, num_timesteps, offset)


def check_strength(strength: float) -> float:
    """img2img strength as a float in [0, 1]."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1] (0 = the input back, 1 = pure noise), got {strength}")
    return strength


def strength_steps(num_steps: int, strength: float) -> int:
    """How many of a grid's `num_steps` steps img2img runs: floor(strength * num_steps), SD's `t_enc`."""
    return min(int(num_steps), int(math.floor(check_strength(strength) * num_steps + 1e-6)))


def noised_init(x_init: torch.Tensor, noise: torch.Tensor, abar: float) -> torch.Tensor:
    """x_init carried to VP level abar with the given noise: sqrt(abar) x_init + sqrt(1 - abar) noise (q(x_t | x0))."""
    return math.sqrt(abar) * x_init + math.sqrt(max(1.0 - abar, 0.0)) * noise


def check_init(x_T: torch.Tensor, x_init: torch.Tensor | None, strength: float) -> torch.Tensor | None:
    """Validate img2img inputs; returns x_init in x_T's dtype and device (None when there is none)."""
    if check_strength(strength) < 1.0 and x_init is None:
        raise ValueError(f"strength {strength} < 1 needs x_init (the clean sample to start from)")
    if x_init is None:
        return None
    if tuple(x_init.shape) != tuple(x_T.shape):
        raise ValueError(f"x_init shape {tuple(x_init.shape)} must equal x_T shape {tuple(x_T.shape)}")
    return x_init.to(device=x_T.device, dtype=x_T.dtype)


def start_timesteps(schedule: DiffusionSchedule, timesteps: list[int], x_T: torch.Tensor,
                    x_init: torch.Tensor | None, strength: float = 1.0) -> tuple[list[int], torch.Tensor]:
    """img2img on an ascending DDPM-index grid: (the kept indices, the starting x).

    Keeps the lowest floor(strength * len) indices and starts from x_init noised to the highest kept one with x_T as
    the noise (SD's `stochastic_encode` + `decode(t_start)`). All kept: x_T itself; none kept: x_init.
    """
    x_init = check_init(x_T, x_init, strength)
    n = strength_steps(len(timesteps), strength)
    if x_init is None or n == len(timesteps):
        return list(timesteps), x_T
    if n == 0:
        return [], x_init
    return list(timesteps[:n]), noised_init(x_init, x_T, float(schedule.alphas_cumprod[timesteps[n - 1]]))


def step_alphas(schedule: DiffusionSchedule, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 abar at each index and at its predecessor; the first one's predecessor is alphas_cumprod_prev[t_0].

    This is the original DDIM rule (alphas_prev[0] = abar[0] with its +1 offset) and gives abar_prev = 1 (clean) when
    the sequence starts at t = 0, so a full sequence reproduces the DDPM posterior chain.
    """
    idx = torch.tensor(list(timesteps), dtype=torch.long)
    abar = schedule.alphas_cumprod[idx]
    abar_prev = torch.cat([schedule.alphas_cumprod_prev[idx[:1]], abar[:-1]])
    return abar, abar_prev


def to_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float64 per-step coefficients cast to `like`'s dtype (on the CPU first) and moved to its device."""
    return values.to(like.dtype).to(like.device)


def check_inputs(x_T: torch.Tensor, mask: torch.Tensor | None, x0: torch.Tensor | None):
    """Validate x_T / mask / x0 and return (mask, x0) in x_T's dtype and device."""
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise TypeError("x_T must be a floating-point tensor (the starting noise)")
    if mask is None:
        return None, None
    if x0 is None:
        raise ValueError("mask is given but x0 (the known image to keep where mask == 1) is not")
    if tuple(x0.shape) != tuple(x_T.shape):
        raise ValueError(f"x0 shape {tuple(x0.shape)} must equal x_T shape {tuple(x_T.shape)}")
    try:
        shape = torch.broadcast_shapes(mask.shape, x_T.shape)
    except RuntimeError as err:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to x_T {tuple(x_T.shape)}") from err
    if tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to x_T {tuple(x_T.shape)}")
    return mask.to(device=x_T.device, dtype=x_T.dtype), x0.to(device=x_T.device, dtype=x_T.dtype)


def threshold_x0(x0: torch.Tensor, mode: str | None = None, ratio: float = DYNAMIC_THRESHOLD_RATIO,
                 max_value: float = THRESHOLD_MAX_VALUE) -> torch.Tensor:
    """x0 unchanged (None), clamped to [-max_value, max_value] ("clip"), or dynamically thresholded ("dynamic").

    Dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample s = max(quantile(|x0|, ratio), max_value), then
    clamp to [-s, s] and rescale by max_value / s, so saturated predictions are pushed inwards instead of clipped.
    """
    if mode is None:
        return x0
    if mode == "clip":
        return x0.clamp(-max_value, max_value)
    if mode == "dynamic":
        # quantile needs float32/64; one value per sample over all non-batch dims
        s = x0.detach().flatten(1).abs().float().quantile(ratio, dim=1).clamp(min=max_value)
        s = s.to(x0.dtype).view(-1, *((1,) * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)
    raise ValueError(f"unknown thresholding {mode!r}; expected None or one of {THRESHOLDINGS}")


def resolve_thresholding(thresholding: str | None, clip_denoised: bool = False) -> str | None:
    """Merge the original `clip_denoised` flag into the `thresholding` switch (clip_denoised=True means "clip")."""
    if thresholding is not None and thresholding not in THRESHOLDINGS:
        raise ValueError(f"unknown thresholding {thresholding!r}; expected None or one of {THRESHOLDINGS}")
    if clip_denoised:
        if thresholding not in (None, "clip"):
            raise ValueError(f"clip_denoised=True conflicts with thresholding={thresholding!r}; pass one of them")
        return "clip"
    return thresholding


class ThresholdedDenoiser(Denoiser):
    """A Denoiser whose x0 predictions pass through `threshold_x0`, with eps recomputed from the thresholded x0."""

    def __init__(self, model_fn: ModelFn, schedule: Any, parameterization: str, thresholding: str,
                 ratio: float = DYNAMIC_THRESHOLD_RATIO, max_value: float = THRESHOLD_MAX_VALUE):
        super().__init__(model_fn, schedule, parameterization)
        self.thresholding = resolve_thresholding(thresholding)
        self.ratio = float(ratio)
        self.max_value = float(max_value)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Apply this denoiser's thresholding to an x0 prediction."""
        return threshold_x0(x0, self.thresholding, self.ratio, self.max_value)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) at integer t with x0 thresholded and eps consistent with it (as DDIM's clip_denoised)."""
        _, x0 = super().__call__(x, t, cond)
        x0 = self.threshold(x0)
        sqrt_abar, sqrt_1m = self.tables(x)
        view = (-1,) + (1,) * (x.dim() - 1)
        return eps_from_x0(x, x0, sqrt_abar[t].view(view), sqrt_1m[t].view(view)), x0

    def denoise_sigma(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None,
                      quantize: bool = False) -> torch.Tensor:
        """Thresholded x0 from a VE-space input at noise level sigma."""
        return self.threshold(super().denoise_sigma(x, sigma, cond, quantize))


def make_denoiser(model_fn: ModelFn, schedule: Any, parameterization: str, uncond: Any, guidance_scale: float,
                  guidance_rescale: float = 0.0, thresholding: str | None = None,
                  threshold_ratio: float = DYNAMIC_THRESHOLD_RATIO,
                  max_value: float = THRESHOLD_MAX_VALUE) -> Denoiser:
    """Classifier-free guidance (when scale != 1) around model_fn, then the eps/x0 conversion, then x0 thresholding."""
    guided = guided_model_fn(model_fn, uncond, guidance_scale, guidance_rescale)
    if thresholding is None:
        return Denoiser(guided, schedule, parameterization)
    return ThresholdedDenoiser(guided, schedule, parameterization, thresholding, threshold_ratio, max_value)


def blend_known(x: torch.Tensor, mask: torch.Tensor, x0: torch.Tensor, sqrt_abar: torch.Tensor,
                sqrt_1m_abar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Where mask == 1 take x0 noised to the current level, q(x_t | x0); elsewhere keep x (original DDIM inpaint)."""
    known = sqrt_abar * x0 + sqrt_1m_abar * randn_like(x0, generator)
    return mask * known + (1 - mask) * x


def restore_known(x: torch.Tensor, mask: torch.Tensor | None, x0: torch.Tensor | None) -> torch.Tensor:
    """The final sample with the known region (mask == 1) set exactly to x0; x itself without a mask."""
    return x if mask is None else mask * x0 + (1 - mask) * x


def timestep_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) long tensor filled with DDPM index t on x's device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def announce_steps(callback: StepCallback | None, total: int) -> None:
    """Before the first step: tell `callback` the number of steps the run makes (the length of its timestep or sigma
    grid, after img2img trimming) by calling `callback.set_total(total)` when it has that method (a progress bar);
    plain functions are left alone."""
    set_total = getattr(callback, "set_total", None)
    if callable(set_total):
        set_total(int(total))


class Intermediates:
    """Collects x and x0 predictions every `log_every_t` steps into a dict {'x_inter': [...], 'pred_x0': [...]}."""

    def __init__(self, target: dict | None, x_T: torch.Tensor, total_steps: int, log_every_t: int = 100):
        self.target = target
        self.total = total_steps
        self.every = max(int(log_every_t), 1)
        if target is not None:
            target.setdefault("x_inter", []).append(x_T)
            target.setdefault("pred_x0", []).append(x_T)

    def __call__(self, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        """Record step i (sampling order) when its remaining-steps index is a multiple of log_every_t, or first."""
        index = self.total - i - 1
        if self.target is not None and (index % self.every == 0 or index == self.total - 1):
            self.target["x_inter"].append(x)
            self.target["pred_x0"].append(x0_pred)


class StepReport:
    """What a sampler reports after every step: `callback(i, t, x, x0_pred)` and the logged `Intermediates`. The
    callback is told the number of steps first (`announce_steps`), when the report is made."""

    def __init__(self, callback: StepCallback | None, intermediates: dict | None, x_start: torch.Tensor,
                 total_steps: int, log_every_t: int = 100):
        self.callback = callback
        self.log = Intermediates(intermediates, x_start, total_steps, log_every_t)
        announce_steps(callback, total_steps)

    @property
    def active(self) -> bool:
        """Whether anything listens (so a sampler can skip preparing what it would report)."""
        return self.callback is not None or self.log.target is not None

    def __call__(self, i: int, t: Any, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        """Report step i (sampling order) at model timestep t with the new x and the step's x0 prediction."""
        if self.callback is not None:
            self.callback(i, t, x, x0_pred)
        self.log(i, x, x0_pred)


class TimestepRun:
    """One sampling run over DDPM timesteps (ddpm, ddim, plms): the grid after img2img trimming, its abar tables, the
    inpainting blend and the step reports; the timestep twin of `sigma_space.SigmaRun`.

    A sampler loops `for i, k, t in run.steps()` (i in sampling order, k the index into `run.timesteps`, t the DDPM
    index): `x = run.begin(k, x)` (mask blend), model calls, `run.end(i, t, x, x0_pred)`, and returns
    `run.finish(x)`. `abar`, `abar_prev` (float64) and `sqrt_abar`, `sqrt_1m_abar` (x_T's dtype and device) are
    indexed by k; the per-step coefficients are cast once, so the loop needs no host syncs.
    """

    def __init__(self, schedule: Any, x_T: torch.Tensor, steps: int | None, spacing: str = "uniform",
                 timesteps: Sequence[int] | None = None, mask: torch.Tensor | None = None,
                 x0: torch.Tensor | None = None, callback: StepCallback | None = None,
                 generator: torch.Generator | None = None, intermediates: dict | None = None,
                 log_every_t: int = 100, x_init: torch.Tensor | None = None, strength: float = 1.0,
                 offset: int = 1):
        self.schedule = as_schedule(schedule)
        self.mask, self.x0 = check_inputs(x_T, mask, x0)
        grid = select_timesteps(self.schedule.num_timesteps, steps, spacing, timesteps, offset)
        self.timesteps, self.x_start = start_timesteps(self.schedule, grid, x_T, x_init, strength)
        self.abar, self.abar_prev = step_alphas(self.schedule, self.timesteps)
        self.sqrt_abar, self.sqrt_1m_abar = to_like(self.abar.sqrt(), x_T), to_like((1 - self.abar).sqrt(), x_T)
        self.generator = generator
        self.report = StepReport(callback, intermediates, self.x_start, len(self.timesteps), log_every_t)

    def steps(self) -> Iterator[tuple[int, int, int]]:
        """(i, k, t) for every step, noisiest first: i counts steps, k indexes the grid, t = timesteps[k]."""
        for i, k in enumerate(reversed(range(len(self.timesteps)))):
            yield i, k, self.timesteps[k]

    def begin(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Before the step at grid index k: the known region (mask == 1) taken from x0 noised to that level."""
        if self.mask is None:
            return x
        return blend_known(x, self.mask, self.x0, self.sqrt_abar[k], self.sqrt_1m_abar[k], self.generator)

    def end(self, i: int, t: int, x: torch.Tensor, x0_pred: torch.Tensor) -> None:
        """After step i at DDPM index t: report the new x and the step's x0 prediction."""
        self.report(i, t, x, x0_pred)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sample with the known region restored exactly."""
        return restore_known(x, self.mask, self.x0)
