"""The original LatentDiffusion / DDPM sampling methods (p_sample_loop, progressive_denoising, p_sample,
p_mean_variance, sample, sample_log) called with the original keyword names, against our samplers."""
import pytest
import torch
from diffusion_configs import ddpm_config
from test_original_samplers import SHAPE, ours, tiny_ldm

from ldm.util import instantiate_from_config

T = 8  # every ancestral chain walks all T steps: keep it short


@pytest.fixture(scope="module")
def model():
    return tiny_ldm(timesteps=T, log_every_t=3)


@pytest.fixture(scope="module")
def cond(model):
    with torch.no_grad():
        return model.get_learned_conditioning({"class_label": torch.tensor([3, 4])})


def test_p_sample_loop_is_our_ancestral_chain(model, cond):
    x_T = torch.randn(2, *SHAPE)
    steps, images = [], []
    torch.manual_seed(5)
    got, inter = model.p_sample_loop(cond, (2, *SHAPE), return_intermediates=True, x_T=x_T, verbose=False,
                                     callback=steps.append, img_callback=lambda x, i: images.append(x))
    torch.manual_seed(5)
    want = ours("ddpm", model, x_T, None, cond)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert steps == list(range(T - 1, -1, -1)) and len(images) == T  # callback(i) with the DDPM index, as the original
    # x_T, then t = 7 (the first) and every t % log_every_t (3) == 0: 6, 3, 0
    assert len(inter) == 5 and inter[0] is x_T and torch.equal(inter[-1], got)


def test_p_sample_loop_timesteps_and_start_T(model, cond):
    x_T = torch.randn(2, *SHAPE)
    torch.manual_seed(5)
    got = model.p_sample_loop(cond, (2, *SHAPE), x_T=x_T, timesteps=6, start_T=5)
    torch.manual_seed(5)
    want = ours("ddpm", model, x_T, None, cond, timesteps=list(range(5)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_p_sample_and_p_mean_variance(model, cond):
    x = torch.randn(2, *SHAPE)
    t = torch.tensor([7, 0])
    mean, var, log_var, x0 = model.p_mean_variance(x, cond, t, clip_denoised=False, return_x0=True)
    _, x0_ours = model.denoiser()(x, t, cond)
    torch.testing.assert_close(x0, x0_ours)
    want_mean = model.posterior_mean_coef1[t].view(-1, 1, 1, 1) * x0 + model.posterior_mean_coef2[t].view(-1, 1, 1, 1) * x
    torch.testing.assert_close(mean, want_mean)
    assert var.shape == log_var.shape == (2, 1, 1, 1) and float(var[1]) == 0.0
    assert len(model.p_mean_variance(x, cond, t, clip_denoised=True)) == 3
    torch.manual_seed(2)
    x_prev, x0_step = model.p_sample(x, cond, t, return_x0=True)
    torch.manual_seed(2)
    noise = torch.randn_like(x)
    torch.testing.assert_close(x0_step, x0)
    torch.testing.assert_close(x_prev[1], mean[1])  # no noise at t = 0
    torch.testing.assert_close(x_prev[0], mean[0] + (0.5 * log_var[0]).exp() * noise[0])


def test_progressive_denoising_returns_x0_predictions(model, cond):
    x_T = torch.randn(2, *SHAPE)
    torch.manual_seed(3)
    got, x0s = model.progressive_denoising(cond, SHAPE, batch_size=2, x_T=x_T, log_every_t=4)
    torch.manual_seed(3)
    want = ours("ddpm", model, x_T, None, cond)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert len(x0s) == 3 and all(x.shape == x_T.shape for x in x0s)  # t = 7, 4, 0


def test_sample_takes_the_original_keywords(model, cond):
    x_T = torch.randn(2, *SHAPE)
    torch.manual_seed(4)
    got = model.sample(cond=cond, batch_size=2, x_T=x_T, verbose=False, timesteps=T, shape=(2, *SHAPE), use_ema=False)
    torch.manual_seed(4)
    torch.testing.assert_close(got, ours("ddpm", model, x_T, None, cond), atol=1e-6, rtol=0)
    # ours keeps working: shape without the batch, a named sampler, our intermediates dict
    out, inter = model.sample(cond=cond, batch_size=2, shape=SHAPE, sampler="ddim", steps=3, x_T=x_T,
                              use_ema=False, return_intermediates=True)
    torch.testing.assert_close(out, ours("ddim", model, x_T, 3, cond), atol=1e-6, rtol=0)
    assert set(inter) == {"x_inter", "pred_x0"}
    with pytest.raises(ValueError, match="quantize_denoised"):
        model.sample(cond=cond, batch_size=2, quantize_denoised=True)


def test_sample_log_both_paths(model, cond):
    samples, inter = model.sample_log(cond=cond, batch_size=2, ddim=True, ddim_steps=3, eta=0.0)
    assert samples.shape == (2, *SHAPE) and set(inter) == {"x_inter", "pred_x0"}
    samples, inter = model.sample_log(cond=cond, batch_size=2, ddim=False, ddim_steps=3, eta=1.0)
    assert samples.shape == (2, *SHAPE) and isinstance(inter, list) and len(inter) == 5


@pytest.mark.parametrize("call", ["p_sample", "p_mean_variance", "progressive_denoising"])
def test_unsupported_options_raise(model, cond, call):
    x, t = torch.randn(2, *SHAPE), torch.tensor([1, 1])
    with pytest.raises(ValueError, match="quantize_denoised"):
        if call == "progressive_denoising":
            model.progressive_denoising(cond, (2, *SHAPE), quantize_denoised=True)
        else:
            getattr(model, call)(x, cond, t, False, quantize_denoised=True)
    with pytest.raises(ValueError, match="noise_dropout"):
        model.p_sample(x, cond, t, noise_dropout=0.5)


def test_pixel_ddpm_original_methods():
    torch.manual_seed(0)
    model = instantiate_from_config(ddpm_config(timesteps=6, log_every_t=5)).eval()
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x_T = torch.randn(2, 3, 8, 8)
    torch.manual_seed(6)
    x, inter = model.p_sample_loop((2, 3, 8, 8), return_intermediates=True)
    torch.manual_seed(6)
    want = ours("ddpm", model, torch.randn(2, 3, 8, 8), None, clip_denoised=True)
    torch.testing.assert_close(x, want, atol=1e-6, rtol=0)
    assert len(inter) == 3  # x_T, t = 5 (the first step, also a multiple of 5), t = 0
    t = torch.tensor([4, 4])
    mean, var, log_var = model.p_mean_variance(x_T, t, clip_denoised=True)
    assert mean.shape == x_T.shape and var.shape == log_var.shape == (2, 1, 1, 1)
    assert model.p_sample(x_T, t).shape == x_T.shape


def test_names_the_original_scripts_use_on_the_model(model):
    for name in ("get_learned_conditioning", "decode_first_stage", "encode_first_stage", "get_first_stage_encoding",
                 "ema_scope", "p_sample_loop", "progressive_denoising", "sample_log", "q_sample", "apply_model"):
        assert callable(getattr(model, name)), name
    assert model.num_timesteps == T and model.betas.shape == model.alphas_cumprod.shape == (T,)
    assert model.first_stage_model is not None and model.cond_stage_model is not None
    unet = model.model.diffusion_model  # sample_diffusion.py reads its in_channels and image_size
    assert (unet.in_channels, unet.image_size) == (4, 8)
