"""Diffusion training objective: targets, l1/l2, the original L_simple + logvar + VLB mix, min-SNR, offset noise.

Defaults reproduce CompVis `LatentDiffusion.p_losses`: loss = l_simple_weight * mean(L_simple / exp(logvar_t) +
logvar_t) + original_elbo_weight * mean(lvlb_weights[t] * L_simple), with logvar all zeros unless learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ldm.diffusion.noise import offset_noise
from ldm.diffusion.parameterization import check_parameterization, q_sample, target_from_x0_eps
from ldm.diffusion.schedule import extract_into_tensor

LOSS_TYPES = ("l1", "l2")


def lvlb_weights(schedule, parameterization: str = "eps") -> torch.Tensor:
    """Per-step VLB weights of the original `register_schedule` (entry 0 copied from entry 1), in the schedule's dtype.

    eps: beta^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) (Ho et al. 2020, eq. 12); x0: 0.5 sqrt(abar) / (2 - abar), the
    original's expression as written (`2. * 1 - abar`); v: ones.
    """
    check_parameterization(parameterization)
    betas, abar = schedule.betas, schedule.alphas_cumprod
    if parameterization == "eps":
        weights = betas ** 2 / (2 * schedule.posterior_variance * (1 - betas) * (1 - abar))
    elif parameterization == "x0":
        weights = 0.5 * abar.sqrt() / (2.0 * 1 - abar)
    else:
        weights = torch.ones_like(betas)
    weights = weights.clone()
    if weights.shape[0] > 1:
        weights[0] = weights[1]  # posterior variance is 0 at t=0, so the eps weight is infinite there
    return weights


def register_lvlb_weights(module: torch.nn.Module, schedule, parameterization: str = "eps") -> None:
    """Register `lvlb_weights` as the original does: float32, non-persistent (not in checkpoints)."""
    module.register_buffer("lvlb_weights", lvlb_weights(schedule, parameterization).float(), persistent=False)


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


def min_snr_weights(snr: torch.Tensor, gamma: float, parameterization: str = "eps") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, g) for x0, / SNR for eps, / (SNR + 1) for v."""
    check_parameterization(parameterization)
    clipped = snr.clamp(max=gamma)
    if parameterization == "x0":
        return clipped
    if parameterization == "eps":
        # min(SNR, g) / SNR written as min(1, g / SNR): stays finite (= 1) at a zero-SNR terminal step.
        return (gamma / snr).clamp(max=1.0)
    return clipped / (snr + 1)


def training_target(parameterization: str, schedule, x_start: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """Regression target of the model at (x_start, noise, t): eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    check_parameterization(parameterization)
    if parameterization == "v":
        a = extract_into_tensor(schedule.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype)
        b = extract_into_tensor(schedule.sqrt_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype)
        return target_from_x0_eps("v", x_start, noise, a, b)
    return target_from_x0_eps(parameterization, x_start, noise, None, None)


class DiffusionLoss:
    """The original diffusion objective with switches; `__call__` returns (loss, dict of detached log tensors)."""

    def __init__(self, parameterization: str = "eps", loss_type: str = "l2", l_simple_weight: float = 1.0,
                 original_elbo_weight: float = 0.0, min_snr_gamma: float | None = None,
                 offset_noise_strength: float = 0.0):
        self.parameterization = check_parameterization(parameterization)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive (or None to disable), got {min_snr_gamma}")
        self.loss_type = loss_type
        self.l_simple_weight = float(l_simple_weight)
        self.original_elbo_weight = float(original_elbo_weight)
        self.min_snr_gamma = min_snr_gamma
        self.offset_noise_strength = float(offset_noise_strength)

    def noise(self, x_start: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise for x_start: standard normal, plus offset noise when `offset_noise_strength` > 0."""
        return offset_noise(x_start, self.offset_noise_strength, generator)

    def target(self, schedule, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target for this parameterization."""
        return training_target(self.parameterization, schedule, x_start, noise, t)

    def __call__(self, model_output: torch.Tensor, target: torch.Tensor, t: torch.Tensor, schedule,
                 logvar: torch.Tensor | None = None, prefix: str = "train") -> tuple[torch.Tensor, dict]:
        """(loss, logs) as `LatentDiffusion.p_losses`; `schedule` is a DiffusionSchedule or a module with buffers."""
        if model_output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(model_output.shape)} != target shape {tuple(target.shape)}")
        dims = tuple(range(1, target.dim()))
        # Score in at least float32 so bf16/fp16 outputs under autocast do not lose the loss's precision.
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        loss_simple = get_loss(model_output.to(dtype), target.to(dtype), self.loss_type, mean=False).mean(dim=dims)
        logs = {f"{prefix}/loss_simple": loss_simple.mean()}

        loss = loss_simple
        if self.min_snr_gamma is not None:
            abar = extract_into_tensor(schedule.alphas_cumprod, t, (t.shape[0],), loss.dtype)
            loss = loss * min_snr_weights(abar / (1 - abar), self.min_snr_gamma, self.parameterization)
        if logvar is not None:
            logvar_t = logvar.to(loss.device)[t]
            loss = loss / torch.exp(logvar_t) + logvar_t
            if logvar.requires_grad:
                logs[f"{prefix}/loss_gamma"] = loss.mean()
                logs["logvar"] = logvar.mean()
        loss = self.l_simple_weight * loss.mean()

        weights = getattr(schedule, "lvlb_weights", None)
        if weights is None:
            weights = lvlb_weights(schedule, self.parameterization)
        loss_vlb = (extract_into_tensor(weights, t, (t.shape[0],), loss_simple.dtype) * loss_simple).mean()
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
