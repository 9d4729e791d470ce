"""Tiny random models for the diffusers interop tests: UNets, autoencoders, a CLIP text model in a folder, and a
text-to-image LatentDiffusion built on them (8x8x4 latents of 16 px images)."""
import copy
from types import SimpleNamespace

import pytest
import torch

from ldm.util import instantiate_from_config

from clip_helpers import save_tiny_clip  # noqa: E402  (tests/ is on the path)

UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
KL = "ldm.models.autoencoder.AutoencoderKL"
VQ = "ldm.models.autoencoder.VQModel"
IDENTITY_LOSS = {"target": "torch.nn.Identity"}
# f = 2, 16 px -> 8x8x4 latents, norm_num_groups 8 as the CPU overlay, attention at the 8 px level.
TINY_DD = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=16, ch_mult=[1, 2],
               num_res_blocks=1, attn_resolutions=[8], dropout=0.0, norm_num_groups=8)
TEXT_UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=16, num_res_blocks=1,
                 attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                 context_dim=32, norm_num_groups=8, legacy=False)


@pytest.fixture(autouse=True)
def one_thread(single_thread):
    """Every test here runs on one thread (tests/conftest.py)."""
    yield


def randomize(module, seed=0, std=0.1):
    """Fill every float parameter with N(0, std), norm scales with 1 + N(0, std) (zero-initialised layers too, so
    outputs depend on all weights and keep an O(1) scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            is_scale = name.endswith("weight") and p.dim() == 1 and "norm" in name.lower()
            p.copy_(1 + noise if is_scale else noise)
    return module


def first_stage_config(kind="kl", **dd):
    ddconfig = dict(copy.deepcopy(TINY_DD), **dd)
    if kind == "kl":
        return {"target": KL, "params": {"embed_dim": ddconfig["z_channels"], "ddconfig": ddconfig,
                                         "lossconfig": IDENTITY_LOSS}}
    ddconfig["double_z"] = False
    return {"target": VQ, "params": {"embed_dim": ddconfig["z_channels"], "n_embed": 32, "ddconfig": ddconfig,
                                     "lossconfig": IDENTITY_LOSS}}


def ldm_config(cond_stage, unet=None, conditioning_key="crossattn", cond_key="caption", **params):
    """A LatentDiffusion config ({target, params}) on the tiny KL autoencoder."""
    base = dict(unet_config={"target": UNET, "params": dict(unet or TEXT_UNET)},
                first_stage_config=first_stage_config(),
                cond_stage_config=cond_stage, cond_stage_key=cond_key, conditioning_key=conditioning_key,
                image_size=8, channels=4, timesteps=100, linear_start=0.00085, linear_end=0.012,
                scale_factor=0.5, monitor="val/loss_simple_ema")
    base.update(params)
    return {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": base}


def build(config, seed=0):
    """Instantiate `config` with random weights everywhere and an EMA that differs from the weights."""
    torch.manual_seed(seed)
    model = instantiate_from_config(copy.deepcopy(config)).eval()
    if hasattr(model, "betas"):  # a diffusion model: its UNet, and its autoencoder when it has one
        randomize(model.model, seed)
        if hasattr(getattr(model, "first_stage_model", None), "encoder"):
            randomize(model.first_stage_model, seed + 1, std=0.05)
    else:
        randomize(model, seed, std=0.05)
    if getattr(model, "use_ema", False):
        from ldm.modules.ema import LitEma

        model.model_ema = LitEma(model.model)
        with torch.no_grad():  # EMA shadows = weights + a small offset, so tests can tell them apart
            for name, buf in model.model_ema.named_buffers():
                if buf.is_floating_point() and buf.dim() > 0:
                    buf.add_(0.01)
    return model


def make_tiny_clip(folder):
    """Save a random 2-layer CLIPTextModel (width 32, 16 tokens) and its BPE tokenizer together in `folder`."""
    save_tiny_clip(folder, max_length=16)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIP text model + tokenizer folder (`make_tiny_clip`)."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def clip_cond(folder):
    return {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
            "params": {"version": folder, "max_length": 16, "expected_vocab_size": None}}


@pytest.fixture(scope="session")
def txt2img(tiny_clip_dir):
    """(model, config) of a tiny CLIP text-to-image LatentDiffusion with EMA."""
    config = ldm_config(clip_cond(tiny_clip_dir), use_ema=True)
    return build(config), {"model": config}


@pytest.fixture(scope="session")
def txt2img_export(txt2img, tmp_path_factory):
    """The txt2img model exported as a diffusers folder (EMA weights), and the export's warnings."""
    from ldm.interop.diffusers import export_diffusers

    model, config = txt2img
    folder = tmp_path_factory.mktemp("export") / "sd"
    warnings = export_diffusers(model, config, str(folder))
    return str(folder), warnings


@pytest.fixture(scope="session")
def tiny():
    """The builders above, for the test modules (conftest modules are not importable by name)."""
    return SimpleNamespace(UNET=UNET, KL=KL, VQ=VQ, TINY_DD=TINY_DD, TEXT_UNET=TEXT_UNET, randomize=randomize,
                           first_stage_config=first_stage_config, ldm_config=ldm_config, build=build,
                           clip_cond=clip_cond)
