"""DDIM: equality with ancestral DDPM at eta = 1, exact Gaussian targets, masks, callbacks, dtype and guidance."""
import pytest
import torch

from ldm.diffusion.samplers import get_sampler, sample_ddim, sample_ddpm
from ldm.diffusion.schedule import DiffusionSchedule


def standard_normal(n, seed=0, dtype=torch.float64):
    """n exact-moment N(0, 1) draws (mean 0, std 1), so tolerances measure the sampler, not the sample."""
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return (z - z.mean()) / z.std()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_eta_one_full_steps_equals_ancestral_ddpm(small_schedule, make_gaussian_model, dtype, tol, with_mask):
    model = make_gaussian_model(small_schedule, 0.5, 0.3, "eps")
    x_T = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)
    kw = {}
    if with_mask:
        kw = {"mask": (torch.rand(4, 1, 8, 8) > 0.5).to(dtype), "x0": torch.randn(4, 2, 8, 8, dtype=dtype)}
    ddpm = sample_ddpm(model, small_schedule, x_T, generator=torch.Generator().manual_seed(2), **kw)
    ddim = sample_ddim(model, small_schedule, x_T, small_schedule.num_timesteps, eta=1.0,
                       generator=torch.Generator().manual_seed(2), **kw)
    assert ddim.dtype == dtype
    assert (ddpm - ddim).abs().max().item() < tol
    # and it is really stochastic: another seed gives another sample
    other = sample_ddim(model, small_schedule, x_T, 50, eta=1.0, generator=torch.Generator().manual_seed(3), **kw)
    assert (other - ddim).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_deterministic_ddim_recovers_gaussian_data(make_gaussian_model, name):
    sched = DiffusionSchedule.from_config()  # T = 1000, the LDM defaults
    mu, s = 0.5, 0.3
    x_T = standard_normal(2000)
    x = sample_ddim(make_gaussian_model(sched, mu, s, name), sched, x_T, 50, parameterization=name)
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.05)
    # deterministic: no generator, same output
    again = sample_ddim(make_gaussian_model(sched, mu, s, name), sched, x_T, 50, parameterization=name)
    assert torch.equal(x, again)


def test_more_ddim_steps_converge_to_the_exact_ode_map(make_gaussian_model):
    sched = DiffusionSchedule.from_config()
    mu, s = -1.0, 2.0
    # start from the exact marginal q(x_t) at the first step (t = 997 for 250 uniform steps): with s = 2 the
    # leftover signal sqrt(abar_997) * mu would otherwise shift the mean by ~0.05
    abar = sched.alphas_cumprod[997]
    x_T = abar.sqrt() * mu + (abar * s ** 2 + 1 - abar).sqrt() * standard_normal(2000, seed=3)
    x = sample_ddim(make_gaussian_model(sched, mu, s), sched, x_T, 250)
    assert x.mean().item() == pytest.approx(mu, abs=0.002)
    assert x.std().item() == pytest.approx(s, rel=0.01)


def test_zero_terminal_snr_v_model_with_trailing_steps(make_gaussian_model):
    sched = DiffusionSchedule.from_config("linear", 1000, 0.00085, 0.012, zero_terminal_snr=True)
    x = sample_ddim(make_gaussian_model(sched, 0.5, 0.3, "v"), sched, standard_normal(2000), 50,
                    parameterization="v", ddim_discretize="trailing")
    assert torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(0.5, abs=0.01) and x.std().item() == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_mask_keeps_known_region_exactly(small_schedule, make_gaussian_model, sampler):
    x0 = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    out = get_sampler(sampler)(make_gaussian_model(small_schedule, 0.0, 1.0), small_schedule, torch.randn(2, 3, 8, 8),
                               10, mask=mask, x0=x0, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :4], x0[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], x0[:, :, 4:])


def test_callback_and_intermediates(small_schedule, make_gaussian_model):
    seen, inter = [], {}
    out = sample_ddim(make_gaussian_model(small_schedule, 0.0, 1.0), small_schedule, torch.randn(2, 1, 4, 4), 10,
                      callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)), intermediates=inter,
                      log_every_t=4)
    assert [s[0] for s in seen] == list(range(10))
    assert [s[1] for s in seen] == list(range(46, 0, -5))  # uniform: range(0, 50, 5) + 1, walked backwards
    assert all(s[2] == s[3] == (2, 1, 4, 4) for s in seen)
    # x_T, then remaining-steps index 9 (first), 8, 4 and 0 (last)
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 5
    assert torch.equal(inter["x_inter"][-1], out)


def test_dtype_and_guidance(small_schedule, make_gaussian_model):
    base = make_gaussian_model(small_schedule, 0.0, 1.0)
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        return base(x, t) + cond.view(-1, 1, 1, 1) * 0.01

    x_T = torch.randn(3, 1, 4, 4).to(torch.bfloat16)
    cond, uncond = torch.ones(3), torch.zeros(3)
    out = sample_ddim(model, small_schedule, x_T, 5, cond=cond, uncond=uncond, guidance_scale=4.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert calls == [6] * 5  # cond and uncond batched, one call per step
    calls.clear()
    sample_ddim(model, small_schedule, x_T.float(), 5, cond=cond, uncond=uncond, guidance_scale=1.0)
    assert calls == [3] * 5


def test_clip_denoised_bounds_predictions(small_schedule, make_gaussian_model):
    preds = []
    sample_ddim(make_gaussian_model(small_schedule, 3.0, 1.0), small_schedule, torch.randn(2, 1, 4, 4), 5,
                clip_denoised=True, callback=lambda i, t, x, x0: preds.append(x0))
    assert max(p.abs().max().item() for p in preds) <= 1.0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_loop_has_no_host_syncs(small_schedule, sampler):
    """Per-step coefficients are indexed by Python ints: the loop runs on the meta device, where a sync would raise."""
    x_T = torch.randn(2, 3, 4, 4, device="meta")
    mask, x0 = torch.ones(2, 1, 4, 4, device="meta"), torch.randn(2, 3, 4, 4, device="meta")
    out = get_sampler(sampler)(lambda x, t, c: x * 0.5, small_schedule, x_T, 10, cond=torch.ones(2, device="meta"),
                               uncond=torch.zeros(2, device="meta"), guidance_scale=3.0, eta=1.0, mask=mask, x0=x0,
                               parameterization="v")
    assert out.device.type == "meta" and out.shape == x_T.shape
