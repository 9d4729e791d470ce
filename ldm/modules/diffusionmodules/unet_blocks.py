"""Blocks of the ADM / latent-diffusion U-Net (Dhariwal & Nichol 2021): timestep-conditioned ResBlock, resampling,
pixel self-attention, and the sequential container that routes the timestep embedding and the context.

State_dict names follow the original openaimodel (`in_layers.0/.2`, `emb_layers.1`, `out_layers.0/.3`,
`skip_connection`, `op`, `conv`, `norm`, `qkv`, `proj_out`). `openaimodel` re-exports everything here.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import (GROUPNORM_GROUPS, avg_pool_nd, checkpoint, conv_nd, linear,
                                               memory_format_of, normalization, zero_module)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to `x` given the timestep embedding `emb` (B, emb_channels)."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands `emb` to TimestepBlocks and `context` to SpatialTransformers (children named 0, 1, ...)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def _check_channels(x: torch.Tensor, channels: int, who: str) -> None:
    if x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} input channels, got input of shape {tuple(x.shape)}")


class Upsample(nn.Module):
    """Nearest x2 upsampling (inner two dims only for dims=3), then an optional 3x3 conv `conv`."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None,
                 padding: int = 1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.dims = use_conv, dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)
        elif self.out_channels != channels:
            raise ValueError(f"Upsample without conv cannot change channels ({channels} -> {self.out_channels})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Upsample")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling `op`: stride-2 3x3 conv (padding 1) or average pooling; dims=3 keeps the first (time) axis."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None,
                 padding: int = 1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.dims = use_conv, dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        else:
            if self.out_channels != channels:
                raise ValueError(f"Downsample without conv cannot change channels ({channels} -> {self.out_channels})")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Downsample")
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (BigGAN-style up/down).

    h = out_layers(in_layers(x) + emb_layers(emb)), or with `use_scale_shift_norm` (AdaGN, ADM Sec. 3):
    h = out_rest(norm(in_layers(x)) * (1 + scale) + shift); returns skip_connection(x) + h.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False,
                 norm_num_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        self.channels, self.emb_channels, self.dropout = channels, emb_channels, dropout
        self.out_channels = out_channels or channels
        self.use_conv, self.use_checkpoint = use_conv, use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        if up and down:
            raise ValueError("ResBlock cannot both upsample and downsample (up=True, down=True)")

        self.in_layers = nn.Sequential(normalization(channels, num_groups=norm_num_groups), nn.SiLU(),
                                       conv_nd(dims, channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(normalization(self.out_channels, num_groups=norm_num_groups), nn.SiLU(),
                                        nn.Dropout(p=dropout),
                                        zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, channels, ...); emb: (B, emb_channels)."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # Resample between the activation and the conv, as the original: the conv runs at the new resolution.
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Multi-head attention over a fused qkv (B, H*3*C, T) laid out per head as [q, k, v] (original ADM order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(b, self.n_heads, 3, ch, length).unbind(2)
        return _attend(q, k, v)


class QKVAttention(nn.Module):
    """Multi-head attention over a fused qkv (B, 3*H*C, T) laid out as [q of all heads, k ..., v ...] (new order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(b, 3, self.n_heads, ch, length).unbind(1)
        return _attend(q, k, v)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(C)) v for (B, H, C, T) inputs through SDPA; returns (B, H*C, T) (heads major)."""
    b, h, c, t = q.shape
    # The original scales q and k by C^-1/4 each; SDPA's default scale 1/sqrt(C) is the same product.
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, h * c, t)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions (ADM): norm, 1x1 `qkv`, `attention`, zero-init `proj_out`, residual.

    Heads: `num_heads`, or channels // `num_head_channels` when that is not -1. `use_checkpoint` is honoured (the
    original always checkpointed this block; the result is the same, only memory/compute differ).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, use_checkpoint: bool = False,
                 use_new_attention_order: bool = False, norm_num_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"AttentionBlock: channels {channels} not divisible by "
                                 f"num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if self.num_heads < 1 or channels % self.num_heads:
            raise ValueError(f"AttentionBlock: channels {channels} not divisible into num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels, num_groups=norm_num_groups)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = (QKVAttention if use_new_attention_order else QKVAttentionLegacy)(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, channels, *spatial)."""
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        fmt = memory_format_of(x)
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial).contiguous(memory_format=fmt)  # the input's layout: no mixed formats
