"""KL-regularized autoencoder (LDM paper, section 3 / appendix G): Gaussian posterior, tiny KL weight, GAN + LPIPS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ldm.models.autoencoders.adversarial import AdversarialAutoencoder
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


class AutoencoderKL(AdversarialAutoencoder):
    """CompVis `AutoencoderKL`: `encode(x)` -> DiagonalGaussianDistribution, `decode(z)` -> image.

    Config interface as the original (ddconfig, lossconfig, embed_dim, ckpt_path, ignore_keys, image_key,
    colorize_nlabels, monitor) plus the later SD2 options `ema_decay` (enables a weight EMA) and `learn_logvar`
    (puts the loss's logvar into the generator optimizer; the original LDM never trains it).
    """

    def __init__(self, ddconfig: dict[str, Any], lossconfig: Any, embed_dim: int, ckpt_path: str | None = None,
                 ignore_keys: Sequence[str] = (), image_key: str = "image", colorize_nlabels: int | None = None,
                 monitor: str | None = None, ema_decay: float | None = None, learn_logvar: bool = False,
                 scheduler_config: Any = None):
        super().__init__(lossconfig, image_key=image_key, monitor=monitor, use_ema=ema_decay is not None,
                         ema_decay=ema_decay if ema_decay is not None else 0.9999, scheduler_config=scheduler_config,
                         colorize_nlabels=colorize_nlabels)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and logvar)")
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        if learn_logvar:
            logvar = getattr(self.loss, "logvar", None)
            if not isinstance(logvar, nn.Parameter):
                raise ValueError("learn_logvar: true needs a loss with a `logvar` parameter (LPIPSWithDiscriminator)")
            logvar.requires_grad_(True)
        self._finish_init(ckpt_path, ignore_keys)

    def generator_modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder, self.quant_conv, self.post_quant_conv]

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Posterior q(z|x)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image from latent z (B, embed_dim, h, w)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        """(reconstruction, posterior); decodes a posterior sample, or its mode when sample_posterior is False."""
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def _loss(self, optimizer_idx, x, recon, posterior, step, split):
        return self.loss(x, recon, posterior, optimizer_idx, step, last_layer=self.get_last_layer(), split=split)

    def _reconstruction_images(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, posterior = self(x)
        samples = self.decode(torch.randn_like(posterior.sample()))
        return {"reconstructions": recon, "samples": samples}
