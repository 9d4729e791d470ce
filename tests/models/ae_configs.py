"""Tiny first-stage configs, a fixed dataset and a short fit loop shared by the model tests."""
import copy

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

TINY_DD = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
               num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def kl_config(disc_start=1000, perceptual_weight=0.0, **loss):
    return {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": 4,
            "monitor": "val/rec_loss",
            "ddconfig": copy.deepcopy(TINY_DD),
            "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                           "params": {"disc_start": disc_start, "kl_weight": 1e-6, "disc_weight": 0.5,
                                      "perceptual_weight": perceptual_weight, "disc_num_layers": 2, **loss}},
        },
    }


def vq_config(disc_start=1000, n_embed=64, **extra):
    dd = dict(copy.deepcopy(TINY_DD), double_z=False)
    return {
        "target": "ldm.models.autoencoder.VQModel",
        "params": {
            "embed_dim": 4, "n_embed": n_embed, "monitor": "val/rec_loss", "ddconfig": dd,
            "lossconfig": {"target": "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                           "params": {"disc_start": disc_start, "perceptual_weight": 0.0, "disc_num_layers": 2,
                                      "codebook_weight": 1.0, "n_classes": n_embed}},
            **extra,
        },
    }


class FixedBatch(Dataset):
    """The same few images over and over (HWC in [-1, 1]), for overfitting."""

    def __init__(self, n=4, size=16, length=64):
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 3, size // 8, size // 8, generator=g)
        self.images = (torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 2 - 1).permute(0, 2, 3, 1)
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return {"image": self.images[i % len(self.images)]}


def fit(model, steps, batch_size=4, **trainer_kwargs):
    trainer = pl.Trainer(max_steps=steps * model.optimizer_steps_per_batch, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(model, DataLoader(FixedBatch(), batch_size=batch_size))
    return trainer
