"""Beta schedules, the 12 CompVis buffers against closed forms, zero-terminal SNR and buffer registration."""
import math

import numpy as np
import pytest
import torch

from ldm.diffusion.schedule import (SCHEDULE_BUFFER_NAMES, DiffusionSchedule, extract_into_tensor,
                                    make_beta_schedule, register_schedule, rescale_zero_terminal_snr)


def test_linear_schedule_endpoints_and_shape():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # linear in sqrt(beta)
    diffs = betas.sqrt().diff()
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-9)


def test_other_schedules():
    lin = make_beta_schedule("sqrt_linear", 10, 0.1, 0.5)
    assert torch.allclose(lin, torch.linspace(0.1, 0.5, 10, dtype=torch.float64))
    sq = make_beta_schedule("sqrt", 10, 0.1, 0.5)
    assert torch.allclose(sq, torch.linspace(0.1, 0.5, 10, dtype=torch.float64).sqrt())
    cos = make_beta_schedule("cosine", 1000)
    assert cos.max().item() <= 0.999 and cos.min().item() >= 0
    # abar follows f(t)/f(0) with f = cos^2(((t/T + s)/(1 + s)) pi/2) (Nichol & Dhariwal eq. 17)
    s, T = 8e-3, 1000
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - cos, 0)
    assert abar[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    with pytest.raises(ValueError, match="unknown beta schedule 'foo'"):
        make_beta_schedule("foo", 10)


def test_buffers_match_closed_forms():
    sched = DiffusionSchedule.from_config("linear", 100, 1e-4, 2e-2)
    b = np.asarray(sched.betas)
    a = 1 - b
    ac = np.cumprod(a)
    acp = np.append(1.0, ac[:-1])
    expected = {
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": b * (1 - acp) / (1 - ac),
        "posterior_log_variance_clipped": np.log(np.maximum(b * (1 - acp) / (1 - ac), 1e-20)),
        "posterior_mean_coef1": b * np.sqrt(acp) / (1 - ac),
        "posterior_mean_coef2": (1 - acp) * np.sqrt(a) / (1 - ac),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(sched, name)), value, rtol=1e-12, err_msg=name)
    assert sched.posterior_variance[0].item() == 0.0
    assert sched.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))
    np.testing.assert_allclose(np.asarray(sched.sigmas), np.sqrt((1 - ac) / ac), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(sched.snr), ac / (1 - ac), rtol=1e-12)


def test_v_posterior_interpolates_variance():
    s0 = DiffusionSchedule.from_config("linear", 20, 1e-3, 0.1)
    s1 = DiffusionSchedule.from_config("linear", 20, 1e-3, 0.1, v_posterior=1.0)
    sh = DiffusionSchedule.from_config("linear", 20, 1e-3, 0.1, v_posterior=0.5)
    assert torch.allclose(s1.posterior_variance, s1.betas)
    assert torch.allclose(sh.posterior_variance, 0.5 * (s0.posterior_variance + s0.betas))


def test_zero_terminal_snr():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    rescaled = rescale_zero_terminal_snr(betas)
    abar, abar_new = torch.cumprod(1 - betas, 0), torch.cumprod(1 - rescaled, 0)
    assert abar_new[-1].item() == 0.0
    assert abar_new[0].item() == pytest.approx(abar[0].item(), rel=1e-12)
    assert bool((abar_new.diff() <= 0).all())
    sched = DiffusionSchedule.from_config("linear", 1000, 0.00085, 0.012, zero_terminal_snr=True)
    assert sched.alphas_cumprod[-1].item() == 0.0 and sched.sqrt_one_minus_alphas_cumprod[-1].item() == 1.0


def test_given_betas_and_bad_betas():
    sched = DiffusionSchedule.from_config(given_betas=[0.1, 0.2, 0.3])
    assert sched.num_timesteps == 3
    assert sched.alphas_cumprod[-1].item() == pytest.approx(0.9 * 0.8 * 0.7)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        DiffusionSchedule([0.1, 1.5])


def test_register_schedule_buffers_and_state_dict():
    sched = DiffusionSchedule.from_config("linear", 30, 1e-3, 0.05)
    module = torch.nn.Module()
    register_schedule(module, sched)
    sd = module.state_dict()
    assert tuple(sd) == SCHEDULE_BUFFER_NAMES and len(sd) == 12
    for name in SCHEDULE_BUFFER_NAMES:
        assert sd[name].dtype == torch.float32 and sd[name].shape == (30,)
        assert torch.equal(sd[name], getattr(sched, name).float())
    # re-registering another schedule replaces the buffers
    register_schedule(module, DiffusionSchedule.from_config("linear", 30, 1e-4, 0.02))
    assert module.betas[-1].item() == pytest.approx(0.02)
    again = DiffusionSchedule.from_module(module)
    assert torch.allclose(again.alphas_cumprod, module.alphas_cumprod.double(), rtol=1e-6)


def test_cast_copy():
    sched = DiffusionSchedule.from_config("linear", 10, 1e-3, 0.05)
    half = sched.to(dtype=torch.float32)
    assert half.dtype == torch.float32 and half.num_timesteps == 10 and sched.dtype == torch.float64
    assert torch.equal(half.posterior_mean_coef1, sched.posterior_mean_coef1.float())


def test_extract_into_tensor():
    a = torch.arange(10.0, dtype=torch.float64)
    t = torch.tensor([3, 7])
    out = extract_into_tensor(a, t, (2, 4, 5, 5), dtype=torch.float32)
    assert out.shape == (2, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [3.0, 7.0]


def test_view_of_a_module_shares_its_buffers_and_scores_like_them():
    from ldm.diffusion.losses import DiffusionLoss, register_lvlb_weights

    sched = DiffusionSchedule.from_config("linear", 50, 1e-4, 0.05)
    module = torch.nn.Module()
    register_schedule(module, sched)
    register_lvlb_weights(module, sched, "eps")
    view = DiffusionSchedule.view_of(module)
    assert view.alphas_cumprod is module.alphas_cumprod and view.lvlb_weights is module.lvlb_weights
    assert view.num_timesteps == 50 and view.dtype == torch.float32
    out, target, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0, 20, 49])
    loss_fn = DiffusionLoss("eps", original_elbo_weight=0.5, min_snr_gamma=5.0)
    torch.testing.assert_close(loss_fn(out, target, t, view)[0], loss_fn(out, target, t, sched)[0])
    with pytest.raises(ValueError, match="lacks the schedule buffers"):
        DiffusionSchedule.view_of(torch.nn.Module())
