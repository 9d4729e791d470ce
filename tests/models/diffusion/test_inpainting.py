"""Inpainting: the 9-channel (SD) and 7-channel (original LDM) concat inputs, loading the original layout, training,
log images, config checks, and mask-guided sampling that keeps known latents exactly."""
import os

import numpy as np
import pytest
import torch

from ldm.data.masks import BoxMasks
from ldm.models.diffusion.ddpm import LatentDiffusion, LatentInpaintDiffusion
from ldm.models.diffusion.inpainting import (ORIGINAL_LAYOUT, concat_layout, inpainting_conditioning,
                                             latent_mask)
from ldm.util import ConfigError, instantiate_from_config, load_configs

import diffusion_configs as dc
import task_runs

VQ_DD = dict(dc.TINY_AE_DD, double_z=False, z_channels=3)  # f = 2, 3 latent channels (the original's VQ-f4 has 3)


def inpaint_config(target="ldm.models.diffusion.ddpm.LatentInpaintDiffusion", channels=4, first_stage=None,
                   **params):
    """A tiny concat inpainting model: UNet input 2 x channels + 1, the masked image encoded by the first stage."""
    base = dict(unet_config=dc.unet_config(in_channels=2 * channels + 1, out_channels=channels, context_dim=None),
                cond_stage_config="__is_first_stage__", cond_stage_key="masked_image", conditioning_key="concat",
                cond_stage_trainable=False, channels=channels)
    cfg = dc.ldm_config("none", **dict(base, **params))
    cfg["target"] = target
    if first_stage is not None:
        cfg["params"]["first_stage_config"] = first_stage
    return cfg


def original_config():
    """The original models/ldm/inpainting_big layout, shrunk: LatentDiffusion, VQ first stage, 3 + 3 + 1 channels."""
    vq = {"target": "ldm.models.autoencoder.VQModelInterface",
          "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": VQ_DD, "lossconfig": {"target": "torch.nn.Identity"}}}
    return inpaint_config("ldm.models.diffusion.ddpm.LatentDiffusion", channels=3, first_stage=vq,
                          loss_type="l1", use_ema=False)


def with_masks(batch, seed=0):
    size = batch["image"].shape[1]
    mask = torch.from_numpy(np.stack([BoxMasks(num_boxes=1, side_fraction=0.5)(size, seed + i)
                                      for i in range(len(batch["image"]))]))
    return dict(batch, mask=mask, masked_image=(1 - mask) * batch["image"])


def nchw(batch, key):
    return batch[key].permute(0, 3, 1, 2).float()


def test_nine_channel_conditioning_is_mask_then_masked_latent():
    model = instantiate_from_config(inpaint_config())
    assert isinstance(model, LatentInpaintDiffusion) and model.concat_keys == ("mask", "masked_image")
    b = with_masks(dc.batch(n=2))
    z, c = model.get_input(b, "image")
    assert z.shape == (2, 4, 8, 8) and c.shape == (2, 5, 8, 8)
    assert model.model.diffusion_model.in_channels == z.shape[1] + c.shape[1] == 9
    small = torch.nn.functional.interpolate(nchw(b, "mask"), size=(8, 8), mode="nearest")
    assert torch.equal(c[:, :1], small)
    posterior = model.first_stage_model.encode(nchw(b, "masked_image"))
    assert torch.allclose(c[:, 1:], model.scale_factor * posterior.mode(), atol=1e-5)
    assert torch.allclose(model.inpainting_conditioning(nchw(b, "image"), nchw(b, "mask")), c, atol=1e-6)  # refilled


def test_original_seven_channel_checkpoint_loads_and_samples(tmp_path):
    source = instantiate_from_config(original_config())
    state = source.state_dict()
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 7
    assert {"first_stage_model.quantize.embedding.weight", "cond_stage_model.quantize.embedding.weight"} <= set(state)
    with torch.no_grad():
        source.model.diffusion_model.out[2].weight.add_(0.5)
    path = tmp_path / "inpainting_big.ckpt"
    torch.save({"state_dict": {k: v for k, v in source.state_dict().items() if k != "scale_factor"}}, path)
    model = instantiate_from_config(original_config())
    report = model.init_from_ckpt(str(path))
    assert not report.required_missing and not report.unexpected
    assert torch.equal(model.model.diffusion_model.out[2].weight, source.model.diffusion_model.out[2].weight)
    assert type(model) is LatentDiffusion and concat_layout(model) == ORIGINAL_LAYOUT
    b = with_masks(dc.batch(n=2))
    image, mask = nchw(b, "image"), nchw(b, "mask")
    c = inpainting_conditioning(model, image, mask)
    assert c.shape == (2, 4, 8, 8)  # masked latent (3) then mask (1): with the noisy latent, 7 channels
    assert set(c[:, 3].unique().tolist()) == {-1.0, 1.0}  # the original's mask * 2 - 1
    black_hole = image * (1 - mask) - mask  # the original fills the hole with -1 (black)
    assert torch.allclose(c[:, :3], model.first_stage_model.encode(black_hole), atol=1e-5)
    z = model.sample(cond=c, steps=2)
    assert z.shape == (2, 3, 8, 8) and model.decode_first_stage(z).shape == (2, 3, 16, 16)
    # LatentInpaintDiffusion in the original layout loads the same checkpoint and builds the same input.
    same = inpaint_config(channels=3, first_stage=original_config()["params"]["first_stage_config"],
                          concat_keys=["masked_image", "mask"], signed_mask=True, masked_fill=-1.0, use_ema=False,
                          ckpt_path=str(path))
    trainable = instantiate_from_config(same)
    assert torch.allclose(trainable.inpainting_conditioning(image, mask), c, atol=1e-6)


def test_training_step_and_log_images():
    model = instantiate_from_config(inpaint_config())
    b = with_masks(dc.batch(n=2))
    model.train()
    loss, logs = model.shared_step(b)
    loss.backward()
    assert torch.isfinite(loss) and "train/loss_simple" in logs
    images = model.log_images(b, N=2, ddim_steps=2)
    assert {"inputs", "masked_image", "mask", "samples", "samples_inpainted"} <= set(images)
    mask = nchw(b, "mask")
    assert torch.equal(images["mask"], (mask * 2 - 1).expand(-1, 3, -1, -1))
    keep = (1 - mask).bool().expand(-1, 3, -1, -1)
    assert torch.allclose(images["samples_inpainted"][keep], images["inputs"][keep])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="in_channels"):
        instantiate_from_config(inpaint_config(unet_config=dc.unet_config(in_channels=8, context_dim=None)))
    with pytest.raises(ConfigError, match="cond_stage_config"):
        instantiate_from_config(inpaint_config(cond_stage_config=dc.class_embedder()))
    with pytest.raises(ConfigError, match="concat_keys"):
        instantiate_from_config(inpaint_config(concat_keys=["mask", "image"]))
    model = instantiate_from_config(dc.ldm_config("class"))
    assert concat_layout(model) is None
    with pytest.raises(ValueError, match="not a concat inpainting model"):
        inpainting_conditioning(model, torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))


def test_latent_mask_modes():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3, 3] = 1  # one pixel of the 2x2 cell (1, 1)
    assert latent_mask(mask, (4, 4), "any")[0, 0, 1, 1] == 1 and latent_mask(mask, (4, 4), "any").sum() == 1
    assert latent_mask(mask, (4, 4), "nearest").sum() == 0  # nearest picks the cell's top-left pixel
    with pytest.raises(ValueError, match="latent mask mode"):
        latent_mask(mask, (4, 4), "max")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "euler_a"])
def test_mask_guided_sampling_keeps_known_latents_exactly(sampler):
    model = instantiate_from_config(dc.ldm_config("none"))
    b = with_masks(dc.batch(n=2))
    x0 = model.get_first_stage_encoding(model.encode_first_stage(nchw(b, "image")))
    keep = 1 - latent_mask(nchw(b, "mask"), x0.shape[-2:], "any")
    assert 0 < keep.mean() < 1
    z = model.sample(batch_size=2, sampler=sampler, steps=3, mask=keep, x0=x0,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(z * keep, x0 * keep)
    assert not torch.allclose(z * (1 - keep), x0 * (1 - keep))


def test_our_config_with_the_cpu_overlay(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    default = load_configs(["configs/ldm_inpainting.yaml", "configs/overlays/cpu.yaml"])
    with pytest.raises(ConfigError, match="first_stage_config.params.ckpt_path"):
        instantiate_from_config(default.model)  # the default path is not there
    model, batch = task_runs.overlay_model_and_batch("ldm_inpainting", tmp_path)
    assert isinstance(model, LatentInpaintDiffusion) and model.model.diffusion_model.in_channels == 9
    z, c = model.get_input(batch, "image")
    assert z.shape == (2, 4, 8, 8) and c.shape == (2, 5, 8, 8)
    model.train()
    assert torch.isfinite(model.shared_step(batch)[0])


def test_the_full_config_keeps_the_paper_unet(repo_root):
    p = load_configs([f"{repo_root}/configs/ldm_inpainting.yaml"]).model.params
    unet = p.unet_config.params
    assert (unet.model_channels, list(unet.channel_mult), list(unet.attention_resolutions), unet.resblock_updown,
            unet.in_channels) == (256, [1, 2, 3, 4], [8, 4, 2], True, 9)
    assert (p.linear_start, p.linear_end, p.loss_type, p.image_size) == (0.0015, 0.0205, "l1", 32)


def test_main_trains_the_inpainting_config(tmp_path_factory):
    run = task_runs.successful_run("ldm_inpainting", tmp_path_factory)
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    logged = os.listdir(os.path.join(run, "images", "train"))
    for key in ("masked_image", "mask", "samples", "samples_inpainted"):
        assert any(f.startswith(key + "_gs-") for f in logged), (key, logged)
