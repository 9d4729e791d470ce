"""Identity first stage: lets the diffusion code run in pixel space (LDM-1 / plain DDPM) through the same interface."""

from __future__ import annotations

import torch
from torch import nn


class IdentityFirstStage(nn.Module):
    """encode/decode/quantize are the identity; `vq_interface` mimics VQModelInterface's quantize return shape."""

    def __init__(self, *args, vq_interface: bool = False, **kwargs):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args, **kwargs):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x
