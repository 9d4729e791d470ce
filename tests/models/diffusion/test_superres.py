"""Super-resolution (the original bsr_sr layout): LR image concatenated at latent size, training, log images,
sampling, our config with the CPU overlay, and main.py training it end to end."""
import os

import torch

from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.util import instantiate_from_config

import diffusion_configs as dc
import task_runs


def sr_config(cond_stage=None, **params):
    """The original models/ldm/bsr_sr layout, shrunk: LatentDiffusion, concat of the LR image, identity conditioner."""
    base = dict(unet_config=dc.unet_config(in_channels=7, context_dim=None), cond_stage_key="LR_image",
                conditioning_key="concat", cond_stage_trainable=False, concat_mode=True,
                cond_stage_config=cond_stage or {"target": "torch.nn.Identity"})
    return dc.ldm_config("none", **dict(base, **params))


def sr_batch(n=2, lr_size=8):
    b = dc.batch(n=n)  # 16 px images; the tiny first stage has f = 2: 8x8 latents
    lr = torch.nn.functional.interpolate(b["image"].permute(0, 3, 1, 2), size=lr_size, mode="area")
    return dict(b, LR_image=lr.permute(0, 2, 3, 1))


def test_identity_conditioner_concatenates_the_lr_image():
    model = instantiate_from_config(sr_config())
    assert isinstance(model, LatentDiffusion) and model.model.conditioning_key == "concat"
    assert not any(k.startswith("cond_stage_model.") for k in model.state_dict())  # as bsr_sr: no weights
    b = sr_batch()
    z, c = model.get_input(b, "image")
    assert z.shape == (2, 4, 8, 8) and torch.equal(c, b["LR_image"].permute(0, 3, 1, 2))
    model.train()
    loss, _ = model.shared_step(b)
    assert torch.isfinite(loss)
    images = model.log_images(b, N=2, ddim_steps=2)
    assert images["samples"].shape == (2, 3, 16, 16) and images["conditioning"].shape == (2, 3, 8, 8)
    assert model.sample(cond=c, steps=2).shape == (2, 4, 8, 8)  # the batch comes from the conditioning


def test_spatial_rescaler_brings_x4_lr_to_an_f8_size_latent():
    rescaler = {"target": "ldm.modules.encoders.modules.SpatialRescaler",
                "params": {"n_stages": 1, "multiplier": 0.5, "method": "area"}}
    model = instantiate_from_config(sr_config(rescaler))
    b = sr_batch(lr_size=16)  # LR twice the latent size
    z, c = model.get_input(b, "image")
    assert c.shape == (2, 3, 8, 8) == (z.shape[0], 3, *z.shape[2:])
    expected = torch.nn.functional.avg_pool2d(b["LR_image"].permute(0, 3, 1, 2), 2)
    assert torch.allclose(c, expected, atol=1e-6)


def test_our_config_with_the_cpu_overlay(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model, batch = task_runs.overlay_model_and_batch("ldm_sr", tmp_path)
    assert batch["image"].shape == (2, 64, 64, 3) and batch["LR_image"].shape == (2, 16, 16, 3)
    z, c = model.get_input(batch, "image")
    assert z.shape == (2, 4, 8, 8) and c.shape == (2, 3, 8, 8)
    model.train()
    assert torch.isfinite(model.shared_step(batch)[0])


def test_main_trains_the_sr_config(tmp_path_factory):
    run = task_runs.successful_run("ldm_sr", tmp_path_factory)
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    logged = os.listdir(os.path.join(run, "images", "train"))
    assert any(f.startswith("samples_") for f in logged) and any(f.startswith("conditioning_") for f in logged)
