"""x0 thresholding: the clip / dynamic maths, the one shared place (make_denoiser), and every sampler honouring it."""
import pytest
import torch

from ldm.diffusion.parameterization import Denoiser
from ldm.diffusion.samplers import available_samplers, get_sampler
from ldm.diffusion.samplers.denoising import ThresholdedDenoiser, make_denoiser, resolve_thresholding, threshold_x0


def test_clip_and_identity():
    x = torch.tensor([[-3.0, -0.5, 0.25, 2.0]])
    assert torch.equal(threshold_x0(x, None), x)
    assert threshold_x0(x, "clip").tolist() == [[-1.0, -0.5, 0.25, 1.0]]
    assert threshold_x0(x, "clip", max_value=2.5).tolist() == [[-2.5, -0.5, 0.25, 2.0]]


def test_dynamic_thresholding_per_sample():
    torch.manual_seed(0)
    inside = torch.rand(1, 3, 8, 8) * 1.8 - 0.9  # |x| < 1: s = max(quantile, 1) = 1, so unchanged
    outside = torch.randn(1, 3, 8, 8) * 4
    out = threshold_x0(torch.cat([inside, outside]), "dynamic", ratio=0.9)
    torch.testing.assert_close(out[:1], inside)
    s = outside.abs().flatten().quantile(0.9)
    torch.testing.assert_close(out[1:], outside.clamp(-s, s) / s)
    assert out[1:].abs().max().item() == pytest.approx(1.0)
    # max_value generalises the bound (Imagen's is 1): values land in [-max_value, max_value]
    out2 = threshold_x0(outside, "dynamic", ratio=0.9, max_value=2.0)
    assert out2.abs().max().item() == pytest.approx(2.0)
    assert threshold_x0(outside.to(torch.bfloat16), "dynamic").dtype == torch.bfloat16


def test_switch_errors():
    with pytest.raises(ValueError, match="unknown thresholding 'soft'"):
        threshold_x0(torch.zeros(1, 2), "soft")
    with pytest.raises(ValueError, match="unknown thresholding"):
        resolve_thresholding("soft")
    with pytest.raises(ValueError, match="conflicts"):
        resolve_thresholding("dynamic", clip_denoised=True)
    assert resolve_thresholding(None, True) == "clip" and resolve_thresholding(None) is None


def test_make_denoiser_is_the_shared_place(small_schedule, gaussian):
    model = gaussian(small_schedule, 3.0, 1.0)
    assert type(make_denoiser(model, small_schedule, "eps", None, 1.0)) is Denoiser
    den = make_denoiser(model, small_schedule, "eps", None, 1.0, thresholding="clip")
    assert isinstance(den, ThresholdedDenoiser)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 30, 49])
    eps, x0 = den(x, t)
    assert x0.abs().max().item() <= 1.0
    a = small_schedule.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    b = small_schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(a * x0 + b * eps, x)  # eps recomputed to stay consistent with the clipped x0
    sigma = small_schedule.sigmas[t]
    assert den.denoise_sigma(x, sigma).abs().max().item() <= 1.0


@pytest.mark.parametrize("name", available_samplers())
@pytest.mark.parametrize("mode", ["clip", "dynamic"])
def test_every_sampler_thresholds_x0(ldm_schedule, gaussian, name, mode):
    if name in ("ddim", "ddpm") and mode == "dynamic":
        pytest.skip("ddim / ddpm take the original clip_denoised flag only")
    opts = {"clip_denoised": True} if name in ("ddim", "ddpm") else {"thresholding": mode}
    preds = []
    out = get_sampler(name)(gaussian(ldm_schedule, mu=2.5, s=1.0), ldm_schedule, torch.randn(2, 1, 4, 4), 8,
                            callback=lambda i, t, x, x0: preds.append(x0), generator=torch.Generator().manual_seed(0),
                            **opts)
    assert preds and max(p.abs().max().item() for p in preds) <= 1.0 + 1e-6
    assert torch.isfinite(out).all()
