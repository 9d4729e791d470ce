import pytest

from ldm.errors import UsageError
from ldm.inference.model_info import describe_model
from ldm.util import load_configs


def info_of(repo_root, *names):
    return describe_model(load_configs([f"{repo_root}/configs/{n}.yaml" for n in names]))


def test_facts_of_our_configs(repo_root):
    text = info_of(repo_root, "ldm_txt2img")
    assert (text.conditioning, text.cond_key, text.factor, text.size_multiple) == ("text", "caption", 8, 64)
    assert text.image_size == (256, 256) and text.latent_shape(256, 128) == (4, 32, 16)
    assert (text.channels, text.num_timesteps, text.use_ema) == (3, 1000, True)
    cin = info_of(repo_root, "ldm_cin", "overlays/cpu")
    assert (cin.conditioning, cin.n_classes, cin.size_multiple, cin.image_size) == ("class", 120, 32, (64, 64))
    uncond = info_of(repo_root, "ldm_uncond")
    assert uncond.conditioning is None and uncond.n_classes is None
    pixel = info_of(repo_root, "ddpm_pixel")
    assert (pixel.factor, pixel.conditioning, pixel.latent_channels) == (1, "text", 3)


def test_a_first_stage_config_is_not_a_diffusion_model(repo_root):
    with pytest.raises(UsageError, match="not a diffusion model.*reconstruct.py"):
        info_of(repo_root, "autoencoder_kl_f8")
