"""The one conversion layer: forward process q(x_t | x_0), eps / x0 / v conversions, sigma space, and `Denoiser`.

Notation: abar = alphas_cumprod[t], x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (Ho et al. 2020, eq. 4).
Pure functions take the coefficients `sqrt_abar` and `sqrt_1m_abar` already broadcastable to x; the `*(sched, ...)`
wrappers gather them at integer DDPM indices t from anything carrying the CompVis buffer names (a DiffusionSchedule
or a module after `register_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.diffusion.noise import randn_like
from ldm.diffusion.schedule import DiffusionSchedule, extract_into_tensor

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def check_parameterization(name: str) -> str:
    """Return `name` if it is a known parameterization, else raise naming the choices."""
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; expected one of {PARAMETERIZATIONS}")
    return name


# ---- pure maths on broadcastable coefficients ------------------------------------------------------------------

def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (Ho et al. 2020, eq. 15)."""
    return (x_t - sqrt_1m_abar * eps) / sqrt_abar


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    return (x_t - sqrt_abar * x0) / sqrt_1m_abar


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""
    return sqrt_abar * eps - sqrt_1m_abar * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v (uses sqrt(abar)^2 + sqrt(1-abar)^2 = 1)."""
    return sqrt_abar * x_t - sqrt_1m_abar * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
    """eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
    return sqrt_abar * v + sqrt_1m_abar * x_t


class Parameterization:
    """What the network predicts (eps, x0 or v): its regression target, the conversion of its output to (eps, x0),
    the original's VLB weights for it, and how a loss weight given in eps space reads in its own loss space.

    `sqrt_abar` / `sqrt_1m_abar` are the coefficients at each sample's step, broadcastable to x. Adding a
    parameterization (e.g. EDM's F_theta) is one subclass registered in `PARAMETERIZATION_TYPES`.
    """

    name = ""

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sqrt_abar, sqrt_1m_abar) -> torch.Tensor:
        """What the network should output for the pair (x0, eps)."""
        raise NotImplementedError

    def to_eps_x0(self, x_t: torch.Tensor, out: torch.Tensor, sqrt_abar,
                  sqrt_1m_abar) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) implied by the raw output `out` at x_t."""
        raise NotImplementedError

    def vlb_weights(self, schedule: DiffusionSchedule) -> torch.Tensor:
        """Per-step weights that turn this parameterization's squared error into the VLB term L_{t-1} (original)."""
        raise NotImplementedError

    def from_eps_weight(self, weight: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """A per-sample weight on the eps-space error, as a weight on this parameterization's error (the errors
        relate by |x0 error|^2 = |eps error|^2 / SNR and |v error|^2 = |eps error|^2 (SNR + 1) / SNR)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Parameterization):
    """The network predicts the noise eps (Ho et al. 2020, eq. 14); L_simple is the eps error."""

    name = "eps"

    def target(self, x0, eps, sqrt_abar, sqrt_1m_abar):
        return eps

    def to_eps_x0(self, x_t, out, sqrt_abar, sqrt_1m_abar):
        return out, x0_from_eps(x_t, out, sqrt_abar, sqrt_1m_abar)

    def vlb_weights(self, schedule):
        """beta^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) (Ho et al. 2020, eq. 12)."""
        betas = schedule.betas
        return betas ** 2 / (2 * schedule.posterior_variance * (1 - betas) * (1 - schedule.alphas_cumprod))

    def from_eps_weight(self, weight, snr):
        return weight


class X0Prediction(Parameterization):
    """The network predicts the clean sample x0."""

    name = "x0"

    def target(self, x0, eps, sqrt_abar, sqrt_1m_abar):
        return x0

    def to_eps_x0(self, x_t, out, sqrt_abar, sqrt_1m_abar):
        return eps_from_x0(x_t, out, sqrt_abar, sqrt_1m_abar), out

    def vlb_weights(self, schedule):
        """0.5 sqrt(abar) / (2 - abar): the original's expression as written (`2. * 1 - abar`)."""
        abar = schedule.alphas_cumprod
        return 0.5 * abar.sqrt() / (2.0 * 1 - abar)

    def from_eps_weight(self, weight, snr):
        return weight * snr


class VPrediction(Parameterization):
    """The network predicts v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""

    name = "v"

    def target(self, x0, eps, sqrt_abar, sqrt_1m_abar):
        return v_from_x0_eps(x0, eps, sqrt_abar, sqrt_1m_abar)

    def to_eps_x0(self, x_t, out, sqrt_abar, sqrt_1m_abar):
        return eps_from_v(x_t, out, sqrt_abar, sqrt_1m_abar), x0_from_v(x_t, out, sqrt_abar, sqrt_1m_abar)

    def vlb_weights(self, schedule):
        """Ones, as the original."""
        return torch.ones_like(schedule.betas)

    def from_eps_weight(self, weight, snr):
        return weight * snr / (snr + 1)


PARAMETERIZATION_TYPES: dict[str, type[Parameterization]] = {
    cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction)}
PARAMETERIZATIONS = tuple(PARAMETERIZATION_TYPES)


def get_parameterization(which: str | Parameterization) -> Parameterization:
    """The Parameterization named `which` (eps, x0, v); an instance passes through."""
    if isinstance(which, Parameterization):
        return which
    return PARAMETERIZATION_TYPES[check_parameterization(which)]()


def output_to_eps_x0(parameterization: str | Parameterization, x_t: torch.Tensor, out: torch.Tensor, sqrt_abar,
                     sqrt_1m_abar) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a raw model output of the given parameterization into the pair (eps, x0) at x_t."""
    return get_parameterization(parameterization).to_eps_x0(x_t, out, sqrt_abar, sqrt_1m_abar)


def target_from_x0_eps(parameterization: str | Parameterization, x0: torch.Tensor, eps: torch.Tensor, sqrt_abar,
                       sqrt_1m_abar) -> torch.Tensor:
    """What a model of the given parameterization should output for (x0, eps): eps, x0 or v."""
    return get_parameterization(parameterization).target(x0, eps, sqrt_abar, sqrt_1m_abar)


# ---- the same at integer timesteps, with the original method names ---------------------------------------------

def _coefs(sched, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(abar_t), sqrt(1 - abar_t) gathered at t, shaped (B, 1, ...) in x's dtype."""
    shape = x.shape
    return (extract_into_tensor(sched.sqrt_alphas_cumprod, t, shape, x.dtype),
            extract_into_tensor(sched.sqrt_one_minus_alphas_cumprod, t, shape, x.dtype))


def q_sample(sched, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4)."""
    if noise is None:
        noise = randn_like(x_start, generator)
    a, b = _coefs(sched, t, x_start)
    return a * x_start + b * noise


def q_mean_variance(sched, x_start: torch.Tensor, t: torch.Tensor):
    """Mean, variance and log-variance of q(x_t | x_0), as the original's `q_mean_variance`."""
    mean = extract_into_tensor(sched.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype) * x_start
    variance = extract_into_tensor(1.0 - sched.alphas_cumprod, t, x_start.shape, x_start.dtype)
    log_variance = extract_into_tensor(sched.log_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype)
    return mean, variance, log_variance


def q_posterior(sched, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7)."""
    shape, dtype = x_t.shape, x_t.dtype
    mean = (extract_into_tensor(sched.posterior_mean_coef1, t, shape, dtype) * x_start
            + extract_into_tensor(sched.posterior_mean_coef2, t, shape, dtype) * x_t)
    variance = extract_into_tensor(sched.posterior_variance, t, shape, dtype)
    log_variance = extract_into_tensor(sched.posterior_log_variance_clipped, t, shape, dtype)
    return mean, variance, log_variance


def predict_start_from_noise(sched, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x0 from eps at integer t, with the original's sqrt(1/abar) and sqrt(1/abar - 1) buffers."""
    return (extract_into_tensor(sched.sqrt_recip_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            - extract_into_tensor(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape, x_t.dtype) * noise)


def predict_noise_from_start(sched, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps from x0 at integer t."""
    return eps_from_x0(x_t, x0, *_coefs(sched, t, x_t))


def get_v(sched, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v target at integer t: sqrt(abar) eps - sqrt(1 - abar) x0 (argument order of the original `get_v`)."""
    return v_from_x0_eps(x, noise, *_coefs(sched, t, x))


def predict_start_from_z_and_v(sched, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 from v at integer t."""
    return x0_from_v(x_t, v, *_coefs(sched, t, x_t))


def predict_eps_from_z_and_v(sched, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """eps from v at integer t."""
    return eps_from_v(x_t, v, *_coefs(sched, t, x_t))


# ---- sigma (variance-exploding) space, for Karras-style samplers -------------------------------------------------

def sigma_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar): the VE noise level of x_t / sqrt(abar)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """abar = 1 / (1 + sigma^2), the inverse of `sigma_from_alphas_cumprod`."""
    return 1 / (1 + sigma ** 2)


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional DDPM index of `sigma` by linear interpolation in log sigma between neighbouring steps (clamped)."""
    dtype = torch.promote_types(sigma.dtype, torch.float32)
    log_sigmas = log_sigmas.to(device=sigma.device, dtype=dtype)
    log_sigma = sigma.to(dtype).log()
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, log_sigmas.shape[0] - 1)
    low = high - 1
    w = ((log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
    return (low + w).reshape(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma at a (fractional) DDPM index, interpolating log sigma linearly (inverse of `sigma_to_t`)."""
    log_sigmas = log_sigmas.to(device=t.device)
    t = t.to(log_sigmas.dtype).clamp(0, log_sigmas.shape[0] - 1)
    low = t.floor().long()
    high = t.ceil().long()
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


# ---- the denoiser -----------------------------------------------------------------------------------------------

class Denoiser:
    """Wraps `model_fn(x_t, t, cond) -> raw output` (eps, x0 or v) so samplers always get (eps, x0)."""

    def __init__(self, model_fn: ModelFn, schedule: DiffusionSchedule,
                 parameterization: str | Parameterization = "eps"):
        self.model_fn = model_fn
        self.schedule = as_schedule(schedule)
        self.prediction = get_parameterization(parameterization)
        self.parameterization = self.prediction.name
        self._tables: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar) and sqrt(1 - abar) per step, computed in float64, cast to `like`'s dtype, cached per device."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            s = self.schedule
            self._tables[key] = tuple(a.to(like.dtype).to(like.device)
                                      for a in (s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod))
        return self._tables[key]

    def log_sigmas(self, like: torch.Tensor) -> torch.Tensor:
        """log sigma per step in at least float32 (index lookups need the precision), cached per device."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        key = ("log_sigmas", like.device, dtype)
        if key not in self._tables:
            self._tables[key] = (self.schedule.sigmas.log().to(dtype).to(like.device),)
        return self._tables[key][0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) predicted at x = x_t for integer DDPM indices t of shape (B,)."""
        sqrt_abar, sqrt_1m = self.tables(x)
        view = (-1,) + (1,) * (x.dim() - 1)
        out = self.model_fn(x, t, cond)
        if out.shape != x.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)} but x_t has shape {tuple(x.shape)}")
        out = out.to(x.dtype)  # the sampler state keeps x_T's dtype even if the model runs under autocast
        return self.prediction.to_eps_x0(x, out, sqrt_abar[t].view(view), sqrt_1m[t].view(view))

    def denoise_sigma(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None,
                      quantize: bool = False) -> torch.Tensor:
        """x0 predicted from a VE-space input x = x_t / sqrt(abar) at noise level sigma (B,) (Karras et al. 2022).

        The model sees x_t = x / sqrt(1 + sigma^2) and the fractional DDPM index of sigma (rounded if `quantize`).
        """
        log_sigmas = self.log_sigmas(x)
        view = (-1,) + (1,) * (x.dim() - 1)
        sigma = sigma.to(device=x.device, dtype=log_sigmas.dtype).reshape(-1).expand(x.shape[0])
        t = sigma_to_t(sigma, log_sigmas)
        c_in = (1 + sigma ** 2).rsqrt().to(x.dtype)
        sigma = sigma.to(x.dtype)
        t = t.round().long() if quantize else t
        x_t = x * c_in.view(view)
        out = self.model_fn(x_t, t, cond).to(x.dtype)
        _, x0 = self.prediction.to_eps_x0(x_t, out, c_in.view(view), (sigma * c_in).view(view))
        return x0


def as_schedule(schedule: Any) -> DiffusionSchedule:
    """Accept a DiffusionSchedule, or a module carrying the registered `betas` buffer."""
    if isinstance(schedule, DiffusionSchedule):
        return schedule
    if isinstance(schedule, torch.nn.Module):
        return DiffusionSchedule.from_module(schedule)
    raise TypeError(f"expected a DiffusionSchedule or a module with schedule buffers, got {type(schedule).__name__}")
