"""Diffusion training objective: a Parameterization's target, l1/l2, the original L_simple + logvar + VLB mix, a
LossWeighting (unit or min-SNR), offset noise.

Defaults reproduce CompVis `LatentDiffusion.p_losses`: loss = l_simple_weight * mean(w_t L_simple / exp(logvar_t) +
logvar_t) + original_elbo_weight * mean(lvlb_weights[t] * L_simple), with w_t = 1 and logvar all zeros unless set.
`schedule` everywhere is a DiffusionSchedule (or anything with its CompVis tensor names, such as
`DiffusionSchedule.view_of(module)` over a model's registered buffers), never the model itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ldm.diffusion.noise import offset_noise
from ldm.diffusion.parameterization import Parameterization, get_parameterization, q_sample
from ldm.diffusion.schedule import extract_into_tensor
from ldm.diffusion.weighting import (LossWeighting, MinSNRWeighting, UnitWeighting, VLBWeighting, lvlb_weights,
                                     min_snr_weights, register_lvlb_weights)

LOSS_TYPES = ("l1", "l2")

__all__ = ["LOSS_TYPES", "DiffusionLoss", "get_loss", "lvlb_weights", "make_logvar", "min_snr_weights",
           "register_lvlb_weights", "training_target"]


def make_logvar(num_timesteps: int, logvar_init: float = 0.0, learn_logvar: bool = False) -> torch.Tensor:
    """The original per-step log-variance `logvar` (size T, filled with logvar_init); an nn.Parameter if learned."""
    logvar = torch.full((num_timesteps,), float(logvar_init))
    return torch.nn.Parameter(logvar, requires_grad=True) if learn_logvar else logvar


def get_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", mean: bool = True) -> torch.Tensor:
    """Elementwise |target - pred| (l1) or (target - pred)^2 (l2); averaged to a scalar when `mean`."""
    if loss_type == "l1":
        loss = (target - pred).abs()
    elif loss_type == "l2":
        loss = F.mse_loss(target, pred, reduction="none")
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    return loss.mean() if mean else loss


def training_target(parameterization: str | Parameterization, schedule, x_start: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """Regression target of the model at (x_start, noise, t): eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    a = extract_into_tensor(schedule.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype)
    b = extract_into_tensor(schedule.sqrt_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype)
    return get_parameterization(parameterization).target(x_start, noise, a, b)


class DiffusionLoss:
    """The original diffusion objective, composed of a Parameterization (target), a loss type, a LossWeighting for
    the main term and the VLB weighting for the ELBO term; `__call__` returns (loss, dict of detached log tensors)."""

    def __init__(self, parameterization: str | Parameterization = "eps", loss_type: str = "l2",
                 l_simple_weight: float = 1.0, original_elbo_weight: float = 0.0, min_snr_gamma: float | None = None,
                 offset_noise_strength: float = 0.0, min_snr_soft: bool = False,
                 weighting: LossWeighting | None = None):
        self.prediction = get_parameterization(parameterization)
        self.parameterization = self.prediction.name
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
        if weighting is not None and min_snr_gamma is not None:
            raise ValueError("give either a weighting or min_snr_gamma, not both")
        self.loss_type = loss_type
        self.l_simple_weight = float(l_simple_weight)
        self.original_elbo_weight = float(original_elbo_weight)
        self.weighting = weighting or (UnitWeighting() if min_snr_gamma is None
                                       else MinSNRWeighting(min_snr_gamma, min_snr_soft))
        self.vlb_weighting = VLBWeighting()
        self.offset_noise_strength = float(offset_noise_strength)

    def noise(self, x_start: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise for x_start: standard normal, plus offset noise when `offset_noise_strength` > 0."""
        return offset_noise(x_start, self.offset_noise_strength, generator)

    def target(self, schedule, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target for this parameterization."""
        return training_target(self.prediction, schedule, x_start, noise, t)

    def __call__(self, model_output: torch.Tensor, target: torch.Tensor, t: torch.Tensor, schedule,
                 logvar: torch.Tensor | None = None, prefix: str = "train") -> tuple[torch.Tensor, dict]:
        """(loss, logs) as `LatentDiffusion.p_losses` for outputs at steps t."""
        if model_output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(model_output.shape)} != target shape {tuple(target.shape)}")
        dims = tuple(range(1, target.dim()))
        # Score in at least float32 so bf16/fp16 outputs under autocast do not lose the loss's precision.
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        loss_simple = get_loss(model_output.to(dtype), target.to(dtype), self.loss_type, mean=False).mean(dim=dims)
        logs = {f"{prefix}/loss_simple": loss_simple.mean()}

        loss = loss_simple
        weights = self.weighting(t, schedule, self.prediction, loss.dtype)
        if weights is not None:
            loss = loss * weights
        if logvar is not None:
            logvar_t = logvar.to(loss.device)[t]
            loss = loss / torch.exp(logvar_t) + logvar_t
            if logvar.requires_grad:
                logs[f"{prefix}/loss_gamma"] = loss.mean()
                logs["logvar"] = logvar.mean()
        loss = self.l_simple_weight * loss.mean()

        loss_vlb = (self.vlb_weighting(t, schedule, self.prediction, loss_simple.dtype) * loss_simple).mean()
        logs[f"{prefix}/loss_vlb"] = loss_vlb
        if self.original_elbo_weight != 0.0:
            # Skipped at weight 0: identical to the original for finite weights, and avoids 0 * inf = nan when a
            # zero-terminal-SNR schedule makes the eps weight infinite at the last step.
            loss = loss + self.original_elbo_weight * loss_vlb
        logs[f"{prefix}/loss"] = loss
        return loss, {k: v.detach() for k, v in logs.items()}

    def p_losses(self, model_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], schedule,
                 x_start: torch.Tensor, t: torch.Tensor, cond: Any = None, noise: torch.Tensor | None = None,
                 logvar: torch.Tensor | None = None, prefix: str = "train",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Noise x_start to x_t, run `model_fn(x_t, t, cond)` and score it: the original `p_losses` in one call."""
        if noise is None:
            noise = self.noise(x_start, generator)
        x_t = q_sample(schedule, x_start, t, noise)
        out = model_fn(x_t, t, cond)
        return self(out, self.target(schedule, x_start, noise, t), t, schedule, logvar=logvar, prefix=prefix)
