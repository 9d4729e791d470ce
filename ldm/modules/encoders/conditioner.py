"""The conditioner interface shared by every encoder: `encode`, `ucg_rate`, `is_trainable`, `null_input`.

Conditioners never drop inputs themselves (`forward` / `encode` are deterministic, so sampling is never randomised
and the rate is never applied twice). Training-time guidance dropout is done by the diffusion model with
`ldm.diffusion.guidance.drop_conditioning(raw_input, encoder.null_input(B), encoder.ucg_rate)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AbstractEncoder(nn.Module):
    """Base conditioner (CompVis name): `encode(x)`, plus the guidance interface (`ucg_rate`, `null_input`)."""

    def __init__(self, ucg_rate: float = 0.0):
        super().__init__()
        if not 0.0 <= float(ucg_rate) <= 1.0:
            raise ValueError(f"ucg_rate must be in [0, 1], got {ucg_rate}")
        self.ucg_rate = float(ucg_rate)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        """Turn the raw conditioning input into the tensor fed to the denoiser."""
        raise NotImplementedError

    @property
    def is_trainable(self) -> bool:
        """Whether any parameter would receive gradients."""
        return any(p.requires_grad for p in self.parameters())

    @property
    def device(self) -> torch.device:
        """Device of the parameters (CPU for parameter-free encoders)."""
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def null_input(self, batch_size: int) -> Any:
        """Raw input that means "no condition" for a batch (empty captions, null classes), for guidance."""
        raise NotImplementedError(f"{type(self).__name__} does not define a null input for guidance")


class IdentityEncoder(AbstractEncoder):
    """Passes the conditioning through unchanged."""

    def encode(self, x: Any) -> Any:
        """Return `x`."""
        return x

    def forward(self, x: Any) -> Any:
        """Return `x`."""
        return x
