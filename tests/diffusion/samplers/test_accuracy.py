"""Accuracy on exact Gaussian data N(0.3, 1): sample moments, convergence to the exact ODE map, order of accuracy."""
import math

import pytest
import torch

from ldm.diffusion.samplers import get_sampler

MU, S = 0.3, 1.0
# (steps, relative std tolerance): higher-order samplers at 25 steps; first-order ones are ~7-9% narrow at 25 steps
# and ancestral ones ~12-16% (measured), so they are held to a looser bound there or checked at 100 steps.
MOMENTS = {
    "dpmpp_2m": (25, 0.03), "dpmpp_3m": (25, 0.03), "heun": (25, 0.03), "unipc": (25, 0.03), "plms": (25, 0.03),
    "dpmpp_2s": (25, 0.03), "dpmpp_2m_sde": (25, 0.07), "ddim": (25, 0.10), "euler": (25, 0.10),
    "euler_a": (100, 0.07), "ddpm": (100, 0.07),
}
TIMESTEP_KW = {"ddim": {"ddim_discretize": "linspace"}, "plms": {"spacing": "linspace"}}


def marginal_start(sched, z):
    """x_T from the exact marginal q(x_{T-1}) of the data, so moment errors measure the sampler alone."""
    abar = sched.alphas_cumprod[-1]
    return abar.sqrt() * MU + (abar * S ** 2 + 1 - abar).sqrt() * z


def w2(x):
    """2-Wasserstein distance between N(mean(x), std(x)^2) and the data N(MU, S^2)."""
    return math.hypot(x.mean().item() - MU, x.std().item() - S)


@pytest.mark.parametrize("name", sorted(MOMENTS))
def test_samples_match_the_data_distribution(ldm_schedule, gaussian, unit_noise, name):
    steps, rel = MOMENTS[name]
    x_T = marginal_start(ldm_schedule, unit_noise(20_000, seed=1))
    run = lambda n: get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, n,  # noqa: E731
                                      generator=torch.Generator().manual_seed(2), **TIMESTEP_KW.get(name, {}))
    x = run(steps)
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, rel=rel)
    # and the distribution error falls with the number of steps
    errors = [w2(run(n)) for n in (10, 25, 100)]
    assert errors[0] > errors[1] > errors[2], errors


def ode_error(sched, gaussian, exact_ode, x_T, name, steps):
    """RMS distance to the exact ODE map from sigma_max to sigma_min (then denoised), same x_T."""
    ref = exact_ode(x_T, sched.sigmas[-1].item(), sched.sigmas[0].item())
    out = get_sampler(name)(gaussian(sched), sched, x_T, steps, **TIMESTEP_KW.get(name, {}))
    return (out - ref).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2), ("dpmpp_2s", 2),
                                        ("dpmpp_3m", 3), ("unipc", 3)])
def test_order_of_accuracy(ldm_schedule, gaussian, exact_ode, unit_noise, name, order):
    x_T = unit_noise(512)
    e40, e80 = (ode_error(ldm_schedule, gaussian, exact_ode, x_T, name, n) for n in (40, 80))
    rate = math.log2(e40 / e80)  # measured: 1.00, 0.97, 2.07, 2.09, 2.01, 3.08, 3.09
    assert order - 0.2 < rate < order + 0.4, (e40, e80, rate)


def test_higher_order_beats_euler_at_equal_cost(ldm_schedule, gaussian, exact_ode, unit_noise):
    x_T = unit_noise(512)
    err = lambda name, n: ode_error(ldm_schedule, gaussian, exact_ode, x_T, name, n)  # noqa: E731
    # equal model-evaluation budget: Heun and 2S take 2 N - 1 calls for N steps (measured margins 4.8x, 8.9x)
    assert 3 * err("heun", 40) < err("euler", 79)
    assert 5 * err("dpmpp_2s", 40) < err("euler", 79)
    # equal steps (= equal calls for the multistep solvers; measured 4.2x, 9.2x, 12x, 6.7x)
    assert 2 * err("dpmpp_2m", 20) < err("euler", 20)
    assert 5 * err("dpmpp_2m", 40) < err("euler", 40)
    assert 5 * err("dpmpp_3m", 80) < err("dpmpp_2m", 80)
    assert 3 * err("unipc", 80) < err("dpmpp_2m", 80)


def test_every_sampler_integrates_the_same_ode_from_x_T(ldm_schedule, gaussian, exact_ode, unit_noise):
    """Same unit-variance x_T, same first level: DDIM and the sigma-space samplers converge to one exact map."""
    x_T = unit_noise(512)
    err = ode_error(ldm_schedule, gaussian, exact_ode, x_T, "dpmpp_3m", 400)  # measured 8.9e-7
    assert err < 2e-6
    assert ode_error(ldm_schedule, gaussian, exact_ode, x_T, "unipc", 200) < 3e-5  # 1.3e-5
    assert ode_error(ldm_schedule, gaussian, exact_ode, x_T, "ddim", 1000) < 4e-3  # first order: 1.9e-3
    # reading x_T as pure noise times sigma_max (k-diffusion's convention) would move the map by 80x that error
    smax, smin = ldm_schedule.sigmas[-1].item(), ldm_schedule.sigmas[0].item()
    other = exact_ode(x_T * smax / math.sqrt(1 + smax ** 2), smax, smin)
    assert (other - exact_ode(x_T, smax, smin)).pow(2).mean().sqrt().item() > 30 * err
