"""The CompVis sampler classes (DDIMSampler, PLMSSampler, DPMSolverSampler) called with the original keyword names give
exactly what our samplers give on the same noise."""
import numpy as np
import pytest
import torch
from diffusion_configs import ldm_config

from ldm.diffusion.samplers import get_sampler
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.util import instantiate_from_config

T = 20  # a short schedule keeps every chain cheap
SHAPE = (4, 8, 8)


def tiny_ldm(timesteps=T, log_every_t=5):
    """A tiny class-conditional LatentDiffusion whose UNet has non-zero outputs (its zero-initialised output layers
    would make every prediction 0 and every comparison trivial)."""
    torch.manual_seed(0)
    model = instantiate_from_config(ldm_config("class", timesteps=timesteps, log_every_t=log_every_t)).eval()
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_ldm()


@pytest.fixture(scope="module")
def conds(model):
    with torch.no_grad():
        c = model.get_learned_conditioning({"class_label": torch.tensor([1, 2])})
        uc = model.unconditional_conditioning(2)
    return c, uc


def ours(name, model, x_T, steps, c=None, uc=None, scale=1.0, eta=0.0, **opts):
    return get_sampler(name)(model.model_fn(), model.sampling_schedule(), x_T, steps, cond=c, uncond=uc,
                             guidance_scale=scale, eta=eta, parameterization=model.parameterization, **opts)


@pytest.mark.parametrize("eta,scale", [(0.0, 1.0), (0.5, 3.0)])
def test_ddim_sampler_equals_our_ddim(model, conds, eta, scale):
    c, uc = conds
    x_T = torch.randn(2, *SHAPE)
    torch.manual_seed(1)
    got, inter = DDIMSampler(model).sample(S=5, batch_size=2, shape=SHAPE, conditioning=c, verbose=False,
                                           unconditional_guidance_scale=scale, unconditional_conditioning=uc,
                                           eta=eta, x_T=x_T, log_every_t=2)
    torch.manual_seed(1)  # eta > 0 draws noise from the global generator in both
    want = ours("ddim", model, x_T, 5, c, uc, scale, eta)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # x_T plus the steps whose remaining index is a multiple of 2 (4, 2, 0) or the first: 1 + 3
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 4
    assert inter["x_inter"][0] is x_T and torch.equal(inter["x_inter"][-1], got)


def test_guidance_changes_the_sample_and_needs_uc(model, conds):
    c, uc = conds
    x_T = torch.randn(2, *SHAPE)
    sampler = DDIMSampler(model)
    plain, _ = sampler.sample(3, 2, SHAPE, c, verbose=False, x_T=x_T)
    guided, _ = sampler.sample(3, 2, SHAPE, c, verbose=False, x_T=x_T, unconditional_guidance_scale=4.0,
                               unconditional_conditioning=uc)
    no_uc, _ = sampler.sample(3, 2, SHAPE, c, verbose=False, x_T=x_T, unconditional_guidance_scale=4.0)
    assert not torch.allclose(plain, guided)
    torch.testing.assert_close(no_uc, plain, atol=0, rtol=0)  # the original guides only when uc is given


def test_make_schedule_attributes(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=4, ddim_eta=1.0, verbose=False)
    ts = sampler.ddim_timesteps
    assert isinstance(ts, np.ndarray) and ts.tolist() == [1, 6, 11, 16]
    abar = model.alphas_cumprod.double()
    torch.testing.assert_close(sampler.ddim_alphas.double(), abar[ts], atol=1e-7, rtol=0)
    torch.testing.assert_close(sampler.ddim_alphas_prev.double(), torch.cat([abar[:1], abar[ts[:-1]]]),
                               atol=1e-7, rtol=0)
    torch.testing.assert_close(sampler.ddim_sqrt_one_minus_alphas.double(), (1 - abar[ts]).sqrt(), atol=1e-6,
                               rtol=0)
    a, ap = sampler.ddim_alphas.double(), sampler.ddim_alphas_prev.double()
    torch.testing.assert_close(sampler.ddim_sigmas.double(), ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt(), atol=1e-6,
                               rtol=0)
    assert sampler.alphas_cumprod.shape == (T,) and sampler.ddim_sigmas_for_original_num_steps.shape == (T,)


def test_plms_sampler_equals_our_plms_and_reports_steps(model, conds):
    c, uc = conds
    x_T = torch.randn(2, *SHAPE)
    steps, images = [], []
    got, inter = PLMSSampler(model).sample(S=5, batch_size=2, shape=SHAPE, conditioning=c, verbose=False, x_T=x_T,
                                           unconditional_guidance_scale=2.0, unconditional_conditioning=uc,
                                           callback=steps.append, img_callback=lambda x0, i: images.append(i))
    want = ours("plms", model, x_T, 5, c, uc, 2.0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert steps == images == [0, 1, 2, 3, 4]
    assert len(inter["x_inter"]) == 3  # x_T, the first and the last step (log_every_t 100)


def test_plms_refuses_eta_and_temperature(model):
    with pytest.raises(ValueError, match="ddim_eta must be 0 for PLMS"):
        PLMSSampler(model).sample(3, 1, SHAPE, eta=0.5, verbose=False)
    with pytest.raises(ValueError, match="temperature"):
        PLMSSampler(model).sample(3, 1, SHAPE, temperature=0.5, verbose=False)


def test_dpm_solver_sampler_equals_our_dpmpp_2m(model, conds):
    c, uc = conds
    x_T = torch.randn(2, *SHAPE)
    got, none = DPMSolverSampler(model).sample(S=4, batch_size=2, shape=SHAPE, conditioning=c, x_T=x_T,
                                               unconditional_guidance_scale=3.0, unconditional_conditioning=uc)
    want = ours("dpmpp_2m", model, x_T, 4, c, uc, 3.0, spacing="linspace")
    assert none is None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert DPMSolverSampler(model).alphas_cumprod.shape == (T,)


@pytest.mark.parametrize("option,value,match", [("quantize_x0", True, "quantize_x0"),
                                                ("noise_dropout", 0.1, "noise_dropout"),
                                                ("score_corrector", object(), "score_corrector")])
@pytest.mark.parametrize("cls", [DDIMSampler, PLMSSampler, DPMSolverSampler])
def test_unsupported_options_raise(model, cls, option, value, match):
    with pytest.raises(ValueError, match=match):
        cls(model).sample(3, 1, SHAPE, verbose=False, **{option: value})


def test_bad_x_T_and_unknown_option(model):
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 4, 8, 8\)"):
        DDIMSampler(model).sample(3, 2, SHAPE, verbose=False, x_T=torch.randn(1, *SHAPE))
    with pytest.raises(TypeError):
        DDIMSampler(model).sample(3, 1, SHAPE, verbose=False, no_such_option=1)


def test_img2img_stochastic_encode_and_decode(model, conds):
    c, _ = conds
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=5, ddim_eta=0.0, verbose=False)
    z0, noise = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    t_enc = 3
    z = sampler.stochastic_encode(z0, torch.tensor([t_enc] * 2), noise=noise)
    abar = model.alphas_cumprod[int(sampler.ddim_timesteps[t_enc])]
    torch.testing.assert_close(z, abar.sqrt() * z0 + (1 - abar).sqrt() * noise)
    got = sampler.decode(z, c, t_enc)
    want = ours("ddim", model, z, None, c, timesteps=[int(t) for t in sampler.ddim_timesteps[:t_enc]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
