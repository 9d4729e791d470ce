"""Building blocks of the denoising U-Net: timestep embedding, float32 GroupNorm, N-d layer factories, checkpointing.

The diffusion maths (beta schedules, `extract_into_tensor`, ...) lives in `ldm.diffusion.schedule`. For CompVis code
that imported those names from here, they are forwarded lazily by the module-level `__getattr__` at the bottom, so
importing this module never imports `ldm.diffusion` (networks sit below the diffusion maths in the layer order).
The original samplers' helpers `make_ddim_timesteps`, `make_ddim_sampling_parameters` and `noise_like` are here too,
importing our one timestep rule (`make_timesteps`) and DDIM sigma (`ddim_sigmas`) when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# The original `normalization()` always uses 32 groups. UNetModel's `norm_num_groups` (not an original parameter)
# lowers it for narrow models: at model_channels 64, 32 groups leave 2 channels per group, close to a per-channel
# InstanceNorm that removes each channel's mean over the image (the first-stage networks have the same knob).
GROUPNORM_GROUPS = 32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) float32 of (possibly fractional) timesteps, ordered [cos, sin] as the original.

    freqs_i = max_period^(-i / half) for i < half = dim // 2; an odd `dim` gets a trailing zero column.
    `repeat_only` returns the raw timesteps repeated `dim` times instead.
    """
    if timesteps.dim() != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor of timesteps (B,), "
                         f"got shape {tuple(timesteps.shape)}")
    if repeat_only:
        return timesteps[:, None].float().expand(-1, dim).contiguous()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of `module` in place and return it (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p.detach())
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply all parameters of `module` by `scale` in place and return it (original helper)."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions (original helper)."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when a 4-D `x` is stored that way (and is not also plain contiguous), else contiguous_format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _Float32GroupNorm(torch.autograd.Function):
    """GroupNorm computed in float32 on a half/bfloat16 input that saves the low-precision input for backward.

    Upcasting bf16/fp16 to float32 is exact, so re-casting the saved input in backward gives bit-identical gradients
    while keeping half the activation memory of saving the float32 copy (which plain `F.group_norm(x.float())` does).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups: int, eps: float):
        xf = x.float().contiguous(memory_format=memory_format_of(x))
        n, c = x.shape[:2]
        hw = xf.numel() // max(n * c, 1)
        out, mean, rstd = torch.ops.aten.native_group_norm(xf, weight.float(), bias.float(), n, c, hw, num_groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.shape_args = (n, c, hw, num_groups)
        ctx.bias_dtype = bias.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        fmt = memory_format_of(x)
        mask = list(ctx.needs_input_grad[:3])
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad_out.float().contiguous(memory_format=fmt), x.float().contiguous(memory_format=fmt), mean, rstd,
            weight.float(), *ctx.shape_args, mask)
        return (gx.to(x.dtype) if mask[0] else None, gw.to(weight.dtype) if mask[1] else None,
                gb.to(ctx.bias_dtype) if mask[2] else None, None, None)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype, as the original (safe under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu" and self.affine \
                and self.weight.dtype == torch.float32:
            # torch's CPU kernel takes a half/bf16 input with float32 parameters and accumulates in float32: the
            # numbers of the float32 path below to float32 rounding (a few ulp near zero), without its casts.
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_grad_enabled() and self.affine:
            # Same numbers as below; only the tensor kept for backward differs (the input, not its float32 copy).
            return _Float32GroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        # Statistics of half-precision activations overflow/lose precision; the parameters may be half too (use_fp16).
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int, eps: float = 1e-5, num_groups: int = GROUPNORM_GROUPS) -> GroupNorm32:
    """The UNet's normalisation layer: float32 GroupNorm, 32 groups as the original `normalization` by default."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"GroupNorm with {num_groups} groups needs channels divisible by {num_groups}, "
                         f"got {channels} (choose model_channels/channel_mult/norm_num_groups accordingly)")
    return GroupNorm32(num_groups, channels, eps=eps)


SiLU = nn.SiLU  # the original defined its own SiLU class for old torch versions


def _nd(dims: int, table: dict[int, type], what: str) -> type:
    if dims not in table:
        raise ValueError(f"unsupported dimensions for {what}: dims={dims} (expected 1, 2 or 3)")
    return table[dims]


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    return _nd(dims, {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}, "conv_nd")(*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    """A linear layer (factory kept for the original's call sites)."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling."""
    return _nd(dims, {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}, "avg_pool_nd")(*args, **kwargs)


def checkpoint(func: Callable[..., Any], inputs: Sequence[Any], params: Iterable[nn.Parameter] | None,
               flag: bool) -> Any:
    """Run `func(*inputs)`, recomputing its activations in backward when `flag` (activation checkpointing).

    Same call signature as the original; implemented with non-reentrant `torch.utils.checkpoint`, which tracks the
    parameters `func` closes over by itself, so `params` is accepted and ignored.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def make_ddim_timesteps(ddim_discr_method: str, num_ddim_timesteps: int, num_ddpm_timesteps: int,
                        verbose: bool = True) -> np.ndarray:
    """Ascending DDPM indices of a DDIM run, "uniform" or "quad" with the original +1 offset (original helper; the
    rule itself is `ldm.diffusion.samplers.make_timesteps`)."""
    # imported here, not at the top: networks sit below the diffusion maths in the layer order
    from ldm.diffusion.samplers.timesteps import make_timesteps

    if ddim_discr_method not in ("uniform", "quad"):
        raise NotImplementedError(f"There is no ddim discretization method called \"{ddim_discr_method}\" "
                                  "(expected uniform or quad)")
    steps = np.asarray(make_timesteps(ddim_discr_method, int(num_ddim_timesteps), int(num_ddpm_timesteps)))
    if verbose:
        print(f"Selected timesteps for ddim sampler: {steps}")
    return steps


def make_ddim_sampling_parameters(alphacums: Any, ddim_timesteps: Any, eta: float,
                                  verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigmas, alphas, alphas_prev) of a DDIM run: abar at each index, abar of the previous index (abar[0] for the
    first, as the original), and sigma from `ldm.diffusion.samplers.ddim.ddim_sigmas` (Song et al. 2021, eq. 16).
    float64 tensors."""
    from ldm.diffusion.samplers.ddim import ddim_sigmas

    abar = torch.as_tensor(np.asarray(alphacums), dtype=torch.float64).flatten()
    idx = torch.as_tensor(np.asarray(ddim_timesteps), dtype=torch.long).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= abar.numel():
        raise ValueError(f"ddim_timesteps must be indices into alphacums (length {abar.numel()}), got "
                         f"{idx.tolist()}")
    alphas = abar[idx]
    alphas_prev = torch.cat([abar[:1], alphas[:-1]])
    sigmas = ddim_sigmas(alphas, alphas_prev, float(eta))
    if verbose:
        print(f"Selected alphas for ddim sampler: a_t: {alphas}; a_(t-1): {alphas_prev}")
        print(f"For the chosen value of eta, which is {eta}, this results in the following sigma_t schedule for ddim "
              f"sampler {sigmas}")
    return sigmas, alphas, alphas_prev


def noise_like(shape: Sequence[int], device: Any, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise of `shape` on `device`; `repeat` draws one sample and repeats it along dim 0 (original)."""
    if repeat:
        return torch.randn((1, *shape[1:]), device=device).repeat(shape[0], *((1,) * (len(shape) - 1)))
    return torch.randn(tuple(shape), device=device)


# CompVis kept the diffusion maths in this module; forward those names to their home without an import-time dependency.
_DIFFUSION_NAMES = {"make_beta_schedule": "ldm.diffusion.schedule", "extract_into_tensor": "ldm.diffusion.schedule"}


def __getattr__(name: str) -> Any:
    """Lazily re-export the CompVis names that now live in `ldm.diffusion` (e.g. `make_beta_schedule`)."""
    if name in _DIFFUSION_NAMES:
        import importlib

        return getattr(importlib.import_module(_DIFFUSION_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
