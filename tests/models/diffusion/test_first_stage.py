"""The frozen first stage: freezing, the missing stage-1 checkpoint error, latents and their std."""
import pytest
import torch
from torch import nn

from ldm.models.diffusion.first_stage import (FIRST_STAGE_CKPT_KEY, check_first_stage_checkpoint,
                                              deterministic_latent, freeze, instantiate_first_stage,
                                              latent_channel_stats, latent_from_posterior, latent_std,
                                              posterior_mode)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import ConfigError, instantiate_from_config

import diffusion_configs as dc


def test_freeze_keeps_eval_and_no_grad():
    m = freeze(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    m.train()
    assert not m.training and not m[1].training
    assert not any(p.requires_grad for p in m.parameters())


def test_missing_stage1_checkpoint_names_key_and_path(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        instantiate_first_stage(dc.kl_first_stage(ckpt_path=missing))
    assert FIRST_STAGE_CKPT_KEY in str(err.value) and str(missing) in str(err.value)
    check_first_stage_checkpoint({"params": {}})  # no ckpt_path: nothing to check


def test_stage1_checkpoint_is_loaded_and_frozen(tmp_path):
    src = instantiate_first_stage(dc.kl_first_stage())
    path = tmp_path / "ae.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    ae = instantiate_first_stage(dc.kl_first_stage(ckpt_path=path))
    assert torch.equal(ae.encoder.conv_in.weight, src.encoder.conv_in.weight)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())


def test_latents_and_std():
    mean = torch.randn(2, 4, 3, 3)
    post = DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, -30.0)], 1))
    assert torch.allclose(latent_from_posterior(post), mean, atol=1e-5)
    assert latent_from_posterior(mean) is mean
    with pytest.raises(TypeError):
        latent_from_posterior([mean])
    z = 3 * torch.randn(1000)
    assert torch.isclose(latent_std(z), z.std())


def test_deterministic_latent_is_the_scaled_posterior_mode():
    mean = torch.randn(2, 4, 3, 3)
    post = DiagonalGaussianDistribution(torch.cat([mean, torch.randn_like(mean)], 1))
    assert torch.equal(posterior_mode(post), mean) and posterior_mode(mean) is mean
    model = instantiate_from_config(dc.ldm_config("class", scale_factor=0.5))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = deterministic_latent(model, images)
    expected = 0.5 * model.first_stage_model.encode(images).mode()
    assert z.dtype == torch.float32 and torch.allclose(z, expected)
    assert torch.equal(deterministic_latent(model, images), z)  # no sampling


def test_latent_channel_stats_are_per_channel():
    z = torch.randn(3, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    z = z + torch.tensor([0.0, 10.0, -10.0, 5.0]).view(1, 4, 1, 1)
    mean, std = latent_channel_stats(z)
    flat = z.transpose(0, 1).flatten(1)
    assert mean.shape == std.shape == (4,)
    assert torch.allclose(mean, flat.mean(1)) and torch.allclose(std, flat.std(1))
    assert latent_std(z) > std.max()  # one global std also counts the channel offsets
