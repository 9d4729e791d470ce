"""Tiny stage-2 configs, a recording stand-in UNet, fixed batches, a short fit loop and a CPU-sized stage-1
checkpoint for the diffusion model tests (and the inference, scripts and main.py tests, which put this folder on
sys.path)."""
import copy
import os

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
TINY_AE_DD = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                  num_res_blocks=1, attn_resolutions=[], dropout=0.0)  # f = 2: 16 px images -> 8x8x4 latents


def unet_config(in_channels=4, out_channels=4, context_dim=32, num_classes=None, **extra):
    params = dict(image_size=8, in_channels=in_channels, out_channels=out_channels, model_channels=32,
                  num_res_blocks=1, attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, legacy=False)
    if context_dim is not None:
        params.update(use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim)
    if num_classes is not None:
        params["num_classes"] = num_classes
    params.update(extra)
    return {"target": UNET, "params": params}


def kl_first_stage(ckpt_path=None):
    params = {"embed_dim": 4, "ddconfig": copy.deepcopy(TINY_AE_DD), "lossconfig": {"target": "torch.nn.Identity"}}
    if ckpt_path:
        params["ckpt_path"] = str(ckpt_path)
    return {"target": "ldm.models.autoencoder.AutoencoderKL", "params": params}


def class_embedder(ucg_rate=0.0, dim=32):
    return {"target": "ldm.modules.encoders.modules.ClassEmbedder",
            "params": {"embed_dim": dim, "n_classes": 10, "add_null_class": True, "key": "class_label",
                       "ucg_rate": ucg_rate}}


def bert(ucg_rate=0.0, dim=32):
    return {"target": "ldm.modules.encoders.modules.BERTEmbedder",
            "params": {"n_embed": dim, "n_layer": 1, "max_seq_len": 16, "ucg_rate": ucg_rate}}


def ldm_config(cond="class", **params):
    """A tiny LatentDiffusion config: KL first stage (f=2), class or caption crossattn conditioning, 100 steps."""
    cond_cfg, key = {"class": (class_embedder(), "class_label"), "caption": (bert(), "caption"),
                     "none": ("__is_unconditional__", "image")}[cond]
    unconditional = cond == "none"
    base = dict(unet_config=unet_config(context_dim=None if unconditional else 32), first_stage_config=kl_first_stage(),
                cond_stage_config=cond_cfg, cond_stage_key=key, conditioning_key=None if unconditional else "crossattn",
                cond_stage_trainable=not unconditional, image_size=8, channels=4, timesteps=100, log_every_t=20,
                monitor="val/loss_simple_ema")
    base.update(params)
    return {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": base}


def ddpm_config(**params):
    """A tiny unconditional pixel-space DDPM on 8x8 RGB images."""
    base = dict(unet_config=unet_config(in_channels=3, out_channels=3, context_dim=None), image_size=8, channels=3,
                timesteps=100, log_every_t=20)
    base.update(params)
    return {"target": "ldm.models.diffusion.ddpm.DDPM", "params": base}


class RecordingUNet(nn.Module):
    """Stand-in UNet: remembers what it was called with and returns the first `out_channels` input channels."""

    def __init__(self, out_channels=4, **kwargs):
        super().__init__()
        self.out_channels = out_channels
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, timesteps=None, context=None, y=None):
        self.calls.append({"x": x, "t": timesteps, "context": context, "y": y})
        return self.scale * x[:, : self.out_channels]


class ShapesLike(Dataset):
    """A few fixed images with captions and labels (HWC in [-1, 1]), repeated."""

    def __init__(self, n=4, size=16, length=64):
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 3, size // 4, size // 4, generator=g)
        self.images = (torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 2 - 1).permute(0, 2, 3, 1)
        self.captions = [f"a shape number {i}" for i in range(n)]
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        k = i % len(self.images)
        return {"image": self.images[k], "caption": self.captions[k], "class_label": k}


def batch(n=4, size=16):
    """One collated batch of ShapesLike."""
    return next(iter(DataLoader(ShapesLike(n=n, size=size), batch_size=n)))


def fit(model, steps, batch_size=4, size=16, lr=1e-3, **trainer_kwargs):
    model.learning_rate = lr
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, **trainer_kwargs)
    trainer.fit(model, DataLoader(ShapesLike(n=batch_size, size=size), batch_size=batch_size))
    return trainer


def cpu_stage1_checkpoint(path):
    """Save a freshly initialised CPU-sized KL-f8 autoencoder (configs/overlays/cpu.yaml, ch 32) to `path` as stage 1
    would write it (no loss weights); returns the autoencoder. Works from any working directory."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config, load_configs

    cfg = load_configs([os.path.join(ROOT, "configs", "autoencoder_kl_f8.yaml"),
                        os.path.join(ROOT, "configs", "overlays", "cpu.yaml")])
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    ae = instantiate_from_config({"target": "ldm.models.autoencoder.AutoencoderKL",
                                  "params": {"embed_dim": params["embed_dim"], "ddconfig": params["ddconfig"],
                                             "lossconfig": {"target": "torch.nn.Identity"}}})
    torch.save({"state_dict": ae.state_dict()}, path)
    return ae
