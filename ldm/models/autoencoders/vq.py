"""VQ-regularized autoencoder (VQGAN-style first stage of the LDM paper) and the interface the diffusion stage uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.models.autoencoders.adversarial import AdversarialAutoencoder
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.util import batches_seen

# The first batches of multi-scale training use the largest size so an out-of-memory shows up at once.
_MAX_SIZE_WARMUP_BATCHES = 4


class VQModel(AdversarialAutoencoder):
    """CompVis `VQModel`: encoder -> 1x1 conv -> vector quantizer -> 1x1 conv -> decoder, trained with a VQ-GAN loss.

    Same config interface as the original (ddconfig, lossconfig, n_embed, embed_dim, ckpt_path, ignore_keys,
    image_key, colorize_nlabels, monitor, batch_resize_range, scheduler_config, lr_g_factor, remap,
    sane_index_shape, use_ema). `quantizer_config` passes extra options to `VectorQuantizer` (EMA codebook,
    dead-code restart, l2-normalised lookup, beta, legacy); with none, the original quantizer behaviour.
    """

    def __init__(self, ddconfig: dict[str, Any], lossconfig: Any, n_embed: int, embed_dim: int,
                 ckpt_path: str | None = None, ignore_keys: Sequence[str] = (), image_key: str = "image",
                 colorize_nlabels: int | None = None, monitor: str | None = None,
                 batch_resize_range: Sequence[int] | None = None, scheduler_config: Any = None,
                 lr_g_factor: float = 1.0, remap: str | None = None, sane_index_shape: bool = False,
                 use_ema: bool = False, ema_decay: float = 0.9999, quantizer_config: dict[str, Any] | None = None):
        super().__init__(lossconfig, image_key=image_key, monitor=monitor, use_ema=use_ema, ema_decay=ema_decay,
                         scheduler_config=scheduler_config, lr_g_factor=lr_g_factor,
                         colorize_nlabels=colorize_nlabels)
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, remap=remap, sane_index_shape=sane_index_shape,
                                        **dict(quantizer_config or {}))
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if batch_resize_range is not None:
            low, high = batch_resize_range
            if not (0 < low <= high):
                raise ValueError(f"batch_resize_range must be [low, high] with 0 < low <= high, got {batch_resize_range}")
        self.batch_resize_range = batch_resize_range
        self._finish_init(ckpt_path, ignore_keys)

    def generator_modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder, self.quantize, self.quant_conv, self.post_quant_conv]

    # ---------------------------------------------------------------------------------------------- interface
    def encode(self, x: torch.Tensor):
        """(quantized latent, codebook loss, (perplexity, min_encodings, indices))."""
        return self.quantize(self.encode_to_prequant(x))

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latent before quantization."""
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Image from a quantized latent."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Image from code indices of shape (B, h, w) (the original's version of this method is broken)."""
        if code_b.ndim != 3:
            raise ValueError(f"decode_code expects indices of shape (B, h, w), got {tuple(code_b.shape)}")
        b, h, w = code_b.shape
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), shape=(b, h, w, self.embed_dim))
        return self.decode(quant)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        """(reconstruction, (codebook loss, indices)); the second item is what the VQ loss needs."""
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)
        if return_pred_indices:
            return dec, diff, ind
        return dec, (diff, ind)

    # ----------------------------------------------------------------------------------------------- training
    def get_input(self, batch: dict[str, Any], key: str) -> torch.Tensor:
        """Image batch as NCHW; with `batch_resize_range`, training batches are resized to a random multiple of 16."""
        x = super().get_input(batch, key)
        if self.batch_resize_range is not None and self.training:
            low, high = self.batch_resize_range
            if batches_seen(self.trainer if self._trainer is not None else None) < _MAX_SIZE_WARMUP_BATCHES:
                size = high
            else:
                size = int(np.random.choice(np.arange(low, high + 16, 16)))
            if size != x.shape[2]:
                x = F.interpolate(x, size=size, mode="bicubic")
            x = x.detach()
        return x

    def _loss(self, optimizer_idx, x, recon, reg, step, split):
        qloss, indices = reg
        return self.loss(qloss, x, recon, optimizer_idx, step, last_layer=self.get_last_layer(), split=split,
                         predicted_indices=indices)

    def extra_train_logs(self) -> dict[str, torch.Tensor]:
        """Codebook health (perplexity, usage over recent batches, dead codes), logged every training batch."""
        return {f"train/codebook_{k}": v for k, v in self.quantize.codebook_stats().items()}


class VQModelInterface(VQModel):
    """First stage as the diffusion model sees it: `encode` returns the PRE-quantization latent, `decode` quantizes."""

    def __init__(self, embed_dim: int, *args: Any, **kwargs: Any):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self.quantize(self.encode_to_prequant(input))
        dec = self.decoder(self.post_quant_conv(quant))
        if return_pred_indices:
            return dec, diff, ind
        return dec, (diff, ind)
