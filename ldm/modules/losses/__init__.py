"""Stage-1 (autoencoder) losses: LPIPS + PatchGAN for the KL and VQ autoencoders, at the CompVis import paths."""

from __future__ import annotations

from typing import Any

from torch import nn

from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator
from ldm.modules.losses.discriminator import ActNorm, NLayerDiscriminator, weights_init
from ldm.modules.losses.gan import adaptive_weight, adopt_weight, hinge_d_loss, vanilla_d_loss
from ldm.modules.losses.lpips import LPIPS, MissingPerceptualWeightsError
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator


class DummyLoss(nn.Module):
    """Parameter-free placeholder `lossconfig` for autoencoders used only for inference (e.g. as a first stage)."""

    def forward(self, *args: Any, **kwargs: Any):
        raise RuntimeError("DummyLoss is a placeholder for inference-only autoencoders and computes no loss; set "
                           "lossconfig to ldm.modules.losses.LPIPSWithDiscriminator (KL) or "
                           "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator (VQ) to train or validate")


__all__ = [
    "ActNorm",
    "DummyLoss",
    "LPIPS",
    "LPIPSWithDiscriminator",
    "MissingPerceptualWeightsError",
    "NLayerDiscriminator",
    "VQLPIPSWithDiscriminator",
    "adaptive_weight",
    "adopt_weight",
    "hinge_d_loss",
    "vanilla_d_loss",
    "weights_init",
]
