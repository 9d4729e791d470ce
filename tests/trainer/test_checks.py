"""Start-of-run checks: the size multiple every aspect-ratio bucket must respect."""

import os

from omegaconf import OmegaConf

from ldm.inference.model_info import describe_model
from ldm.trainer.checks import model_size_multiple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name):
    return OmegaConf.load(os.path.join(ROOT, "configs", name))


def test_size_multiple_is_the_first_stage_times_the_unet_downsampling():
    assert model_size_multiple(_config("ldm_txt2img.yaml")) == 64  # KL-f8 x a 4-level UNet
    assert model_size_multiple(_config("ldm_cin.yaml")) == describe_model(_config("ldm_cin.yaml")).size_multiple
    assert model_size_multiple(_config("ddpm_pixel.yaml")) == 8  # pixel space: the UNet alone
    assert model_size_multiple(_config("autoencoder_kl_f8.yaml")) == 8
    assert model_size_multiple(_config("autoencoder_vq_f16.yaml")) == 16


def test_size_multiple_counts_the_unets_default_levels():
    config = _config("ldm_txt2img.yaml")
    config.model.params.unet_config.params.channel_mult = [1, 2]
    assert model_size_multiple(config) == 16
    del config.model.params.unet_config.params["channel_mult"]  # UNetModel's default (1, 2, 4, 8): 4 levels
    assert model_size_multiple(config) == 64
