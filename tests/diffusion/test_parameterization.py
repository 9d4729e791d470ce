"""Forward process statistics, eps/x0/v round trips, sigma space, and the Denoiser conversion layer."""
import pytest
import torch

from ldm.diffusion import parameterization as P
from ldm.diffusion.schedule import DiffusionSchedule, register_schedule


@pytest.fixture
def sched():
    return DiffusionSchedule.from_config("linear", 100, 1e-4, 0.05)


def test_q_sample_statistics(sched):
    x0 = torch.full((200_000,), 1.5)
    for step in (0, 40, 99):
        t = torch.full((x0.shape[0],), step)
        xt = P.q_sample(sched, x0.view(-1, 1), t).flatten()
        abar = sched.alphas_cumprod[step].item()
        assert xt.mean().item() == pytest.approx(abar ** 0.5 * 1.5, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - abar, abs=0.01 + 0.02 * (1 - abar))


def test_q_sample_with_module_buffers_matches_schedule(sched):
    module = torch.nn.Module()
    register_schedule(module, sched)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    a = P.q_sample(module, x0, t, noise)
    b = P.q_sample(sched, x0, t, noise)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)


def test_conversions_round_trip(sched):
    x0, eps = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randn(5, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 30, 70, 99])
    xt = P.q_sample(sched, x0, t, eps)
    v = P.get_v(sched, x0, eps, t)
    torch.testing.assert_close(P.predict_start_from_noise(sched, xt, t, eps), x0)
    torch.testing.assert_close(P.predict_noise_from_start(sched, xt, t, x0), eps)
    torch.testing.assert_close(P.predict_start_from_z_and_v(sched, xt, t, v), x0)
    torch.testing.assert_close(P.predict_eps_from_z_and_v(sched, xt, t, v), eps)
    a = sched.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    b = sched.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a * eps - b * x0)  # Salimans & Ho definition
    for name, out in (("eps", eps), ("x0", x0), ("v", v)):
        e, x = P.output_to_eps_x0(name, xt, out, a, b)
        torch.testing.assert_close(e, eps)
        torch.testing.assert_close(x, x0)
        torch.testing.assert_close(P.target_from_x0_eps(name, x0, eps, a, b), out)
    with pytest.raises(ValueError, match="unknown parameterization 'score'"):
        P.output_to_eps_x0("score", xt, eps, a, b)


def test_q_posterior_matches_gaussian_product(sched):
    x0, xt = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([1, 20, 99])
    mean, var, logvar = P.q_posterior(sched, x0, xt, t)
    abar, abar_prev, beta = sched.alphas_cumprod[t], sched.alphas_cumprod_prev[t], sched.betas[t]
    expected = (abar_prev.sqrt() * beta / (1 - abar)).view(-1, 1) * x0 + \
        ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)).view(-1, 1) * xt
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(var.flatten(), beta * (1 - abar_prev) / (1 - abar))
    torch.testing.assert_close(logvar, var.log())


def test_sigma_helpers(sched):
    sig = sched.sigmas
    torch.testing.assert_close(P.sigma_from_alphas_cumprod(sched.alphas_cumprod), sig)
    torch.testing.assert_close(P.alphas_cumprod_from_sigma(sig), sched.alphas_cumprod)
    log_sigmas = sig.log()
    t = torch.tensor([0.0, 3.0, 17.25, 99.0], dtype=torch.float64)
    back = P.sigma_to_t(P.t_to_sigma(t, log_sigmas), log_sigmas)
    torch.testing.assert_close(back, t)
    assert P.sigma_to_t(sig[[5, 42]], log_sigmas).tolist() == pytest.approx([5.0, 42.0])
    # out-of-range sigmas clamp to the ends
    assert P.sigma_to_t(torch.tensor([1e-9, 1e9]), log_sigmas).tolist() == pytest.approx([0.0, 99.0])


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_denoiser_gives_same_eps_x0_for_each_parameterization(sched, make_gaussian_model, name):
    x = torch.randn(4, 1, 6, 6)
    t = torch.tensor([0, 5, 60, 99])
    eps_ref, x0_ref = P.Denoiser(make_gaussian_model(sched, 0.3, 0.7, "eps"), sched, "eps")(x, t)
    eps, x0 = P.Denoiser(make_gaussian_model(sched, 0.3, 0.7, name), sched, name)(x, t)
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, eps_ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(x0, x0_ref, atol=2e-3, rtol=1e-3)


def test_denoiser_sigma_space_agrees_with_integer_steps(sched, make_gaussian_model):
    model = make_gaussian_model(sched, 0.3, 0.7, "v")
    den = P.Denoiser(lambda x, t, c: model(x, t.round().long(), c), sched, "v")
    t = torch.tensor([3, 50])
    x_t = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    _, x0 = den(x_t, t)
    sigma = sched.sigmas[t]
    x0_sigma = den.denoise_sigma(x_t * (1 + sigma ** 2).sqrt().view(-1, 1, 1, 1), sigma)
    torch.testing.assert_close(x0_sigma, x0)


def test_denoiser_rejects_bad_output_shape(sched):
    den = P.Denoiser(lambda x, t, c: x[:, :1], sched, "eps")
    with pytest.raises(ValueError, match="model output has shape"):
        den(torch.randn(2, 3, 4, 4), torch.tensor([1, 2]))
