"""Sigma grids (Karras, exponential, DDPM timestep spacings) and the leading / linspace timestep spacings."""
import math

import pytest
import torch

from ldm.diffusion.samplers.timesteps import make_timesteps
from ldm.diffusion.samplers.sigmas import exponential_sigmas, karras_sigmas, make_sigmas
from ldm.diffusion.schedule import DiffusionSchedule


def test_karras_sigmas_follow_eq5():
    sig = karras_sigmas(6, 0.02, 20.0, rho=7.0)
    assert sig[0].item() == pytest.approx(20.0) and sig[-1].item() == pytest.approx(0.02)
    assert bool((sig[1:] < sig[:-1]).all())
    root = sig ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(5))  # linear in sigma^(1/rho)
    mid = karras_sigmas(3, 0.02, 20.0)[1].item()
    assert mid == pytest.approx(((20.0 ** (1 / 7) + 0.02 ** (1 / 7)) / 2) ** 7)


def test_exponential_sigmas_are_log_uniform():
    sig = exponential_sigmas(5, 0.1, 10.0)
    torch.testing.assert_close(sig.log(), torch.linspace(math.log(10.0), math.log(0.1), 5, dtype=torch.float64))


def test_make_sigmas_karras_uses_schedule_range(ldm_schedule):
    grid = make_sigmas(ldm_schedule, 10)
    assert len(grid) == 11 and grid[-1] == 0.0 and all(isinstance(g, float) for g in grid)
    assert grid[0] == pytest.approx(ldm_schedule.sigmas[-1].item())
    assert grid[-2] == pytest.approx(ldm_schedule.sigmas[0].item())
    assert make_sigmas(ldm_schedule, 10, rho=7.0, sigma_min=0.1, sigma_max=5.0)[:1] == [pytest.approx(5.0)]
    assert make_sigmas(ldm_schedule, 1) == [pytest.approx(ldm_schedule.sigmas[-1].item()), 0.0]


@pytest.mark.parametrize("spacing", ["uniform", "leading", "trailing", "linspace", "quad"])
def test_timestep_spacings_give_the_schedules_sigmas(ldm_schedule, spacing):
    grid = make_sigmas(ldm_schedule, 20, spacing)
    ts = make_timesteps(spacing, 20, 1000)
    expected = ldm_schedule.sigmas[torch.tensor(ts)].flip(0).tolist() + [0.0]
    assert grid == expected


def test_explicit_sigmas_and_errors(ldm_schedule):
    assert make_sigmas(ldm_schedule, 3, sigmas=[3.0, 1.0, 0.5]) == [3.0, 1.0, 0.5, 0.0]
    assert make_sigmas(ldm_schedule, 3, sigmas=torch.tensor([2.0, 0.0])) == [2.0, 0.0]
    with pytest.raises(ValueError, match="strictly descending"):
        make_sigmas(ldm_schedule, 3, sigmas=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown sigma spacing 'cubic'.*karras"):
        make_sigmas(ldm_schedule, 3, "cubic")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        make_sigmas(ldm_schedule, 3, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="karras and exponential"):
        make_sigmas(ldm_schedule, 3, "trailing", sigma_max=5.0)


def test_zero_terminal_snr_needs_explicit_sigma_max():
    sched = DiffusionSchedule.from_config("linear", 100, 1e-3, 0.05, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="sigma_max"):
        make_sigmas(sched, 5)
    with pytest.raises(ValueError, match="sigma_max"):
        make_sigmas(sched, 5, "trailing")
    assert make_sigmas(sched, 5, sigma_max=50.0)[0] == pytest.approx(50.0)


def test_leading_and_linspace_timesteps():
    assert make_timesteps("leading", 4, 1000) == [1, 251, 501, 751]  # k * (T // steps) + offset
    assert make_timesteps("leading", 3, 10, offset=0) == [0, 3, 6]
    assert make_timesteps("leading", 10, 10) == list(range(10))  # the offset would leave the range
    assert make_timesteps("linspace", 4, 1000) == [0, 333, 666, 999]
    assert make_timesteps("linspace", 1, 1000) == [999]
    assert make_timesteps("linspace", 1000, 1000) == list(range(1000))
