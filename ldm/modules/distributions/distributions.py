"""Diagonal Gaussian posterior of the KL autoencoder."""

from __future__ import annotations

import math

import torch


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) from a tensor holding [mean, logvar] along dim 1; logvar clamped to [-30, 20]."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.logvar = torch.zeros_like(self.mean)  # kept for API parity; var/std are zero below
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized sample mean + std * eps."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The mean (the distribution's mode)."""
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """Per-sample KL(self || other), other defaulting to N(0, I); summed over C, H, W."""
        dims = list(range(1, self.mean.ndim))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=torch.float32)
        # Sum in float32: under bf16/fp16 autocast a sum over C*H*W terms loses most of its precision.
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        if other is None:
            return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=dims)
        return 0.5 * torch.sum(
            (mean - other.mean.float()).pow(2) / other.var.float() + var / other.var.float() - 1.0 - logvar
            + other.logvar.float(),
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] | list[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of `sample`, summed over `dims`."""
        if self.deterministic:
            return torch.zeros(sample.shape[0], device=sample.device, dtype=torch.float32)
        logvar, mean, var = self.logvar.float(), self.mean.float(), self.var.float()
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + logvar + (sample.float() - mean).pow(2) / var, dim=list(dims))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL between two Gaussians given means and log-variances (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch.exp(-logvar2))
