"""Fixtures for the sampler tests: an exact Gaussian-data model at any (fractional) timestep and its exact ODE map."""
import math

import pytest
import torch

from gaussian_helpers import gaussian_prediction
from ldm.diffusion.parameterization import t_to_sigma
from ldm.diffusion.schedule import DiffusionSchedule

MU, S = 0.3, 1.0  # data N(MU, S^2) per entry; S = 1 as for latents scaled to unit variance


def continuous_gaussian_model(schedule: DiffusionSchedule, mu: float = MU, s: float = S, parameterization="eps"):
    """Exact model for data N(mu, s^2) at integer or fractional DDPM t (log sigma interpolated as the Denoiser does)."""
    log_sigmas = schedule.sigmas.log()

    def model_fn(x, t, cond=None):
        sigma = t_to_sigma(t.detach().cpu().to(torch.float64), log_sigmas)
        abar = (1 / (1 + sigma ** 2)).to(x.dtype).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return gaussian_prediction(x, abar, mu, s, parameterization)

    return model_fn


def exact_ode_sample(x_T: torch.Tensor, sigma_start: float, sigma_end: float, mu: float = MU, s: float = S,
                     denoise: bool = True):
    """Probability-flow ODE map for Gaussian data: x_T read as the VP sample at sigma_start, carried to sigma_end
    (x - mu scales by sqrt(s^2 + sigma^2)), then the exact denoiser D(x; sigma_end) = the samplers' last step to 0
    (or, with denoise=False, the VP sample at sigma_end)."""
    x = x_T * math.sqrt(1 + sigma_start ** 2)
    x = mu + math.sqrt((s ** 2 + sigma_end ** 2) / (s ** 2 + sigma_start ** 2)) * (x - mu)
    if not denoise:
        return x / math.sqrt(1 + sigma_end ** 2)
    return mu + s ** 2 / (s ** 2 + sigma_end ** 2) * (x - mu)


def standard_normal(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """n draws rescaled to exact mean 0 and std 1 (so tolerances measure the sampler), as ONE sample of shape (1, n):
    per-sample work (timestep lookups) then stays tiny."""
    z = torch.randn(1, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return (z - z.mean()) / z.std()


@pytest.fixture(scope="session")
def ldm_schedule():
    """The CompVis LDM latent schedule: linear, T = 1000, beta in [0.0015, 0.0195]."""
    return DiffusionSchedule.from_config("linear", 1000, linear_start=0.0015, linear_end=0.0195)


@pytest.fixture(scope="session")
def gaussian():
    """Factory for `continuous_gaussian_model`."""
    return continuous_gaussian_model


@pytest.fixture(scope="session")
def exact_ode():
    """The exact ODE map `exact_ode_sample`."""
    return exact_ode_sample


@pytest.fixture(scope="session")
def unit_noise():
    """Factory for exact-moment standard normal draws."""
    return standard_normal
