"""PLMS: the LDM warm-up (pseudo improved Euler, then Adams-Bashforth 2, 3, 4), model-call pattern, accuracy."""
import pytest
import torch

from ldm.diffusion.samplers import make_timesteps, sample_ddim, sample_plms
from ldm.diffusion.samplers.timesteps import step_alphas


def test_model_call_pattern(ldm_schedule):
    seen = []

    def model(x, t, cond):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    sample_plms(model, ldm_schedule, torch.randn(1, 1, 2, 2), 10)
    ts = make_timesteps("uniform", 10, 1000)[::-1]
    # steps + 1 calls: the first step also evaluates the DDIM-predicted point at the next timestep
    assert seen == [ts[0], ts[1]] + ts[1:]


def test_update_rule_with_scripted_eps(small_schedule):
    """eps depending on the call index only: check e' = AB weights of the eps history and the DDIM transfer."""
    values = [1.0, 3.0, 2.0, -1.0, 0.5, 4.0]
    calls = []

    def model(x, t, cond):
        calls.append(int(t[0]))
        return torch.full_like(x, values[len(calls) - 1])

    ts = make_timesteps("uniform", 5, small_schedule.num_timesteps)
    xs = []
    x_T = torch.zeros(1, 1, dtype=torch.float64)
    sample_plms(model, small_schedule, x_T, 5, callback=lambda i, t, x, x0: xs.append(x))
    abar, prev = step_alphas(small_schedule, ts)
    abar, prev = abar.flip(0), prev.flip(0)  # sampling order
    e = values
    primes = [(e[0] + e[1]) / 2, (3 * e[2] - e[0]) / 2, (23 * e[3] - 16 * e[2] + 5 * e[0]) / 12,
              (55 * e[4] - 59 * e[3] + 37 * e[2] - 9 * e[0]) / 24, (55 * e[5] - 59 * e[4] + 37 * e[3] - 9 * e[2]) / 24]
    x = x_T
    for k, ep in enumerate(primes):
        x0 = (x - (1 - abar[k]).sqrt() * ep) / abar[k].sqrt()
        x = prev[k].sqrt() * x0 + (1 - prev[k]).sqrt() * ep
        torch.testing.assert_close(xs[k], x)


def test_single_step_is_ddim(small_schedule, make_gaussian_model):
    model = make_gaussian_model(small_schedule, 0.5, 0.8)
    x_T = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(sample_plms(model, small_schedule, x_T, 1), sample_ddim(model, small_schedule, x_T, 1))


def test_plms_is_more_accurate_than_ddim(ldm_schedule, gaussian, exact_ode, unit_noise):
    """Against the exact ODE map over the original uniform grid (from t = ts[-1] to sigma(t = 0), not denoised)."""
    x_T = unit_noise(512)
    errors = {}
    for steps in (10, 20, 50):
        ts = make_timesteps("uniform", steps, 1000)
        ref = exact_ode(x_T, ldm_schedule.sigmas[ts[-1]].item(), ldm_schedule.sigmas[0].item(), denoise=False)
        for name, fn in (("plms", sample_plms), ("ddim", sample_ddim)):
            out = fn(gaussian(ldm_schedule), ldm_schedule, x_T, steps)
            errors[name, steps] = (out - ref).pow(2).mean().sqrt().item()
    assert errors["plms", 10] > errors["plms", 20] > errors["plms", 50]
    assert 8 * errors["plms", 20] < errors["ddim", 20]  # measured 5.4e-3 vs 8.3e-2 (15x)
    assert errors["plms", 20] < errors["ddim", 50]  # 3.5e-2


def test_plms_rejects_eta(small_schedule):
    with pytest.raises(ValueError, match="eta = 0"):
        sample_plms(lambda x, t, c: x, small_schedule, torch.randn(1, 1), 5, eta=1.0)
