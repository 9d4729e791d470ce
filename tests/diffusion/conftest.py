"""Shared fixtures for the diffusion maths tests: small schedules and an exact denoiser for Gaussian data."""
import pytest

from gaussian_helpers import gaussian_prediction
from ldm.diffusion.schedule import DiffusionSchedule


def gaussian_model(schedule: DiffusionSchedule, mu: float, s: float, parameterization: str = "eps"):
    """Exact model for data x0 ~ N(mu, s^2) per entry: E[eps | x_t] and E[x0 | x_t] in closed form."""
    abar_table = schedule.alphas_cumprod

    def model_fn(x, t, cond=None):
        abar = abar_table.to(x.dtype)[t.cpu()].to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return gaussian_prediction(x, abar, mu, s, parameterization)

    return model_fn


@pytest.fixture
def small_schedule():
    """T = 50 linear schedule with a wide beta range so that abar_T is close to 0."""
    return DiffusionSchedule.from_config("linear", 50, linear_start=1e-3, linear_end=0.2)


@pytest.fixture
def make_gaussian_model():
    return gaussian_model
