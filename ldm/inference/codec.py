"""Between images and the diffusion space: encoding with the first stage (posterior mode) and decoding samples."""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.first_stage import deterministic_latent


@torch.no_grad()
def encode_images(model: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> float32 diffusion latents (`first_stage.deterministic_latent`: scale_factor
    x the posterior mode); the images themselves for a pixel-space DDPM."""
    if not hasattr(model, "encode_first_stage"):
        return images.to(model.device).float()
    return deterministic_latent(model, images)


@torch.no_grad()
def decode_latents(model: Any, z: torch.Tensor) -> torch.Tensor:
    """Samples in diffusion space -> float32 images in [-1, 1] (clamped)."""
    return model.decode_to_image(z).float().clamp(-1.0, 1.0)
