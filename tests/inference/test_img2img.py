"""img2img in every sampler (x_init / strength) and through the model: strength 0 = the input, 1 = plain sampling."""
import math

import pytest
import torch

from ldm.diffusion.samplers import available_samplers, get_sampler, make_sigmas, make_timesteps
from ldm.diffusion.samplers.timesteps import strength_steps
from ldm.diffusion.schedule import DiffusionSchedule
from ldm.inference.codec import decode_latents, encode_images
from ldm.inference.generate import Settings, batch_samples
from ldm.inference.sampling import initial_noise, sample

SCHEDULE = DiffusionSchedule.from_config("linear", 1000, linear_start=0.0015, linear_end=0.0195)
STOCHASTIC = {"ddim": {"eta": 1.0}, "dpmpp_2s": {"eta": 1.0}}  # the others' defaults are used as they are
DDPM_INDEX = ("ddim", "plms")


def model_fn(x, t, cond=None):
    """A smooth stand-in network: eps = 0.5 x (any t)."""
    return 0.5 * x


def run(name, x_T, x_init=None, strength=1.0, **kw):
    kw = {**STOCHASTIC.get(name, {}), **kw}
    return get_sampler(name)(model_fn, SCHEDULE, x_T, 10, generator=torch.Generator().manual_seed(5),
                             x_init=x_init, strength=strength, **kw)


@pytest.mark.parametrize("name", available_samplers())
def test_strength_1_is_plain_sampling_and_0_the_input(name):
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_init = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(run(name, x_T, x_init, 1.0), run(name, x_T))
    steps = []
    assert torch.equal(run(name, x_T, x_init, 0.0, callback=lambda *a: steps.append(a)), x_init)
    assert steps == []
    full, part = [], []
    run(name, x_T, callback=lambda i, t, x, x0: full.append(float(t)))
    out = run(name, x_T, x_init, 0.55, callback=lambda i, t, x, x0: part.append(float(t)))
    assert len(part) == strength_steps(len(full), 0.55) == math.floor(0.55 * len(full))
    assert part == pytest.approx(full[len(full) - len(part):])  # the last steps of the same schedule
    assert torch.isfinite(out).all() and not torch.equal(out, run(name, x_T))


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_the_start_is_the_input_noised_to_the_first_kept_level(name):
    x_T, x_init = torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.randn(1, 2, 3, 3, dtype=torch.float64)
    logged = {}
    run(name, x_T, x_init, 0.3, intermediates=logged, **({"eta": 0.0} if name == "ddim" else {}))
    if name in DDPM_INDEX:
        abar = float(SCHEDULE.alphas_cumprod[make_timesteps("uniform", 10, 1000)[2]])  # 3 of 10 steps kept
    else:
        abar = 1 / (1 + make_sigmas(SCHEDULE, 10)[7] ** 2)
    expected = math.sqrt(abar) * x_init + math.sqrt(1 - abar) * x_T
    torch.testing.assert_close(logged["x_inter"][0], expected)


def test_img2img_input_errors():
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="needs x_init"):
        run("ddim", x, None, 0.5)
    with pytest.raises(ValueError, match="x_init shape"):
        run("euler", x, torch.randn(1, 2, 3, 4), 0.5)
    with pytest.raises(ValueError, match="strength must lie in"):
        run("dpmpp_2m", x, x, 1.5)


def test_through_the_model(class_model, images):
    model, info = class_model
    z0 = encode_images(model, images)
    assert z0.shape == (2, *info.latent_shape(16, 16)) and z0.dtype == torch.float32
    noise = initial_noise(info.latent_shape(16, 16), [4, 5])
    cond = model.get_learned_conditioning(torch.tensor([1, 2]))
    for name in ("ddim", "dpmpp_2m", "euler_a"):
        assert torch.equal(sample(model, noise, name, 6, cond, x_init=z0, strength=0.0, show_progress=False), z0)
        plain = sample(model, noise, name, 6, cond, generator=torch.Generator().manual_seed(1), show_progress=False)
        again = sample(model, noise, name, 6, cond, generator=torch.Generator().manual_seed(1), show_progress=False,
                       x_init=z0, strength=1.0)
        assert torch.equal(again, plain)

    settings = Settings(sampler="ddim", steps=6, scale=3.0, height=16, width=16, strength=0.0)
    back = batch_samples(model, info, [1, 2], [4, 5], settings, torch.device("cpu"), init_latent=z0,
                         show_progress=False)
    assert torch.equal(back, decode_latents(model, z0))  # strength 0: the input's reconstruction
