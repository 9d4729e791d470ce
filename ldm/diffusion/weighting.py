"""Per-sample loss weights over timesteps: unit, min-SNR-gamma (hard and soft), and the original's VLB weights.

A weighting is a small object `weighting(t, schedule, parameterization) -> (B,) weights or None` (None: unweighted,
the original L_simple). `DiffusionLoss` composes one for the main term and `VLBWeighting` for the ELBO term, so a
new weighting (e.g. EDM's lambda(sigma)) is one class here and nothing else changes.
"""

from __future__ import annotations

import torch

from ldm.diffusion.parameterization import Parameterization, get_parameterization
from ldm.diffusion.schedule import extract_into_tensor


def snr_at(schedule, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t) for a batch of integer steps, shape (B,)."""
    abar = extract_into_tensor(schedule.alphas_cumprod, t, (t.shape[0],), dtype)
    return abar / (1 - abar)


class LossWeighting:
    """How much each sample's error counts, by its timestep; None means every sample counts once."""

    def __call__(self, t: torch.Tensor, schedule, parameterization: Parameterization,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        raise NotImplementedError


class UnitWeighting(LossWeighting):
    """No weights: the plain L_simple of the parameterization (Ho et al. 2020)."""

    def __call__(self, t, schedule, parameterization, dtype=torch.float32):
        return None

    def __repr__(self) -> str:
        return "UnitWeighting()"


class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma (Hang et al. 2023): the x0-space weight min(SNR, gamma), i.e. min(1, gamma / SNR) on the eps
    error; `soft` uses the smooth minimum SNR gamma / (SNR + gamma) instead (gamma / (SNR + gamma) on eps). Both are
    finite at a zero-SNR terminal step."""

    def __init__(self, gamma: float, soft: bool = False):
        if gamma is None or gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive (or None to disable), got {gamma}")
        self.gamma = float(gamma)
        self.soft = bool(soft)

    def eps_weights(self, snr: torch.Tensor) -> torch.Tensor:
        """The weight on the eps-space error at each SNR."""
        if self.soft:
            return self.gamma / (snr + self.gamma)
        return (self.gamma / snr).clamp(max=1.0)

    def __call__(self, t, schedule, parameterization, dtype=torch.float32):
        snr = snr_at(schedule, t, dtype)
        return parameterization.from_eps_weight(self.eps_weights(snr), snr)

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma:g}, soft={self.soft})"


def lvlb_weights(schedule, parameterization: str | Parameterization = "eps") -> torch.Tensor:
    """Per-step VLB weights of the original `register_schedule` (entry 0 copied from entry 1), in the schedule's
    dtype (see each Parameterization's `vlb_weights`)."""
    weights = get_parameterization(parameterization).vlb_weights(schedule).clone()
    if weights.shape[0] > 1:
        weights[0] = weights[1]  # posterior variance is 0 at t=0, so the eps weight is infinite there
    return weights


def register_lvlb_weights(module: torch.nn.Module, schedule, parameterization: str | Parameterization = "eps") -> None:
    """Register `lvlb_weights` as the original does: float32, non-persistent (not in checkpoints)."""
    module.register_buffer("lvlb_weights", lvlb_weights(schedule, parameterization).float(), persistent=False)


class VLBWeighting(LossWeighting):
    """The original's ELBO term weights lvlb_weights[t]: the schedule's registered `lvlb_weights` table when it has
    one (the float32 buffer of the original), else computed from the schedule."""

    def __call__(self, t, schedule, parameterization, dtype=torch.float32):
        table = getattr(schedule, "lvlb_weights", None)
        if table is None:
            table = lvlb_weights(schedule, parameterization)
        return extract_into_tensor(table, t, (t.shape[0],), dtype)

    def __repr__(self) -> str:
        return "VLBWeighting()"


def min_snr_weights(snr: torch.Tensor, gamma: float, parameterization: str | Parameterization = "eps",
                    soft: bool = False) -> torch.Tensor:
    """Min-SNR-gamma loss weights at the given SNRs for a parameterization (see MinSNRWeighting)."""
    weighting = MinSNRWeighting(gamma, soft)
    return get_parameterization(parameterization).from_eps_weight(weighting.eps_weights(snr), snr)
