"""Gaussian noise draws that honour an optional torch.Generator on any device (shared by losses and samplers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of `shape` with `like`'s dtype and device, drawn from `generator` when given."""
    if generator is None:
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    # A generator lives on one device; draw there and move, so a CPU generator gives the same noise everywhere.
    # float32 draws then cast: half-precision draws would differ from the float32 stream of the same seed.
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, drawn from `generator` when given."""
    return randn(x.shape, x, generator)


def offset_noise(x: torch.Tensor, strength: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """eps + strength * n with n ~ N(0, 1) shared over the spatial dims of each (sample, channel) (offset noise)."""
    noise = randn_like(x, generator)
    if strength:
        # One draw per (batch, channel), broadcast over H, W (, ...): lets the model shift the mean brightness.
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        noise = noise + strength * randn(shape, x, generator)
    return noise
