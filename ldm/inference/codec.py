"""Between images and the diffusion space: encoding with the first stage (posterior mode) and decoding samples."""

from __future__ import annotations

from typing import Any

import torch

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


@torch.no_grad()
def encode_images(model: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> scaled float32 latents: scale_factor * the posterior mode (a VQ/identity
    first stage's tensor as it is); the images themselves for a pixel-space DDPM."""
    images = images.to(model.device)
    if not hasattr(model, "encode_first_stage"):
        return images.float()
    out = model.encode_first_stage(images)
    z = out.mode() if isinstance(out, DiagonalGaussianDistribution) else out
    return (model.scale_factor * z).float()


@torch.no_grad()
def decode_latents(model: Any, z: torch.Tensor) -> torch.Tensor:
    """Samples in diffusion space -> float32 images in [-1, 1] (clamped)."""
    return model.decode_to_image(z).float().clamp(-1.0, 1.0)
