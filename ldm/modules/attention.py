"""Transformer blocks of the latent-diffusion U-Net (Rombach et al. 2022, Sec. 3.3): cross-attention through SDPA.

State_dict names follow CompVis latent-diffusion / Stable Diffusion (`to_q`, `to_out.0`, `ff.net.0.proj`, `attn1`,
`attn2`, `norm1..3`, `proj_in`, `transformer_blocks`, `proj_out`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.util import GROUPNORM_GROUPS, checkpoint, memory_format_of, normalization, zero_module


class GEGLU(nn.Module):
    """Gated GELU projection x -> a * gelu(g) with [a, g] = proj(x) (Shazeer 2020); key `proj`."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: project in (GEGLU when `glu`, else Linear+GELU), dropout, Linear out; keys `net.0`, `net.2`."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: float = 4, glu: bool = False, dropout: float = 0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head attention softmax(Q K^T / sqrt(d)) V with Q from x and K, V from `context` (x when None).

    Bias-free `to_q/to_k/to_v`, output `to_out = Sequential(Linear, Dropout)` as the original; the attention itself is
    `F.scaled_dot_product_attention` (fused kernels, float32 accumulation under autocast).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (b, heads, n, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, query_dim); context: (B, M, context_dim) or None; mask: (B, M...) bool, True = attend."""
        context = x if context is None else context
        if context.shape[-1] != self.to_k.in_features:
            raise ValueError(f"CrossAttention expects context with last dim {self.to_k.in_features} (context_dim), "
                             f"got shape {tuple(context.shape)}")
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        attn_mask = None
        if mask is not None:
            # CompVis flattens the mask to (B, M) and masks keys; SDPA's boolean mask means "may attend" too.
            attn_mask = mask.reshape(mask.shape[0], 1, 1, -1).to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.dim_head)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention `attn1`, cross-attention `attn2`, GEGLU `ff`, each residual (norm1/2/3)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None,
                 gated_ff: bool = True, checkpoint: bool = True, disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        # With self-attention disabled, attn1 attends to the context as well (SD 2.x option).
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
                                    context_dim=context_dim if disable_self_attn else None)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                    dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim); context: (B, M, context_dim) or None (then attn2 is self-attention)."""
        if context is None:
            return checkpoint(self._forward, (x,), self.parameters(), self.checkpoint)
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


def _per_depth(value, depth: int, what: str) -> list:
    """Broadcast a single value (or a length-1 list) to `depth` entries; a list must have 1 or `depth` entries."""
    if not isinstance(value, (list, tuple)):
        return [value] * depth
    if len(value) == 1:
        return list(value) * depth
    if len(value) != depth:
        raise ValueError(f"SpatialTransformer got {len(value)} {what} entries for depth={depth}; give 1 or {depth}")
    return list(value)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map: GroupNorm, proj_in, `depth` blocks, zero-init proj_out, residual.

    `proj_in/proj_out` are 1x1 convs (SD 1.x) or Linear layers when `use_linear` (SD 2.x). `context_dim` and the
    forward `context` may be lists with one entry per block (SD 2.x); a single value is shared by all blocks.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: int | Sequence[int] | None = None, disable_self_attn: bool = False,
                 use_linear: bool = False, use_checkpoint: bool = True, norm_num_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        context_dims = _per_depth(context_dim, depth, "context_dim")
        self.in_channels = in_channels
        self.use_linear = use_linear
        inner_dim = n_heads * d_head
        # The original's Normalize(): GroupNorm(32, eps=1e-6).
        self.norm = normalization(in_channels, eps=1e-6, num_groups=norm_num_groups)
        self.proj_in = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dims[d],
                                  disable_self_attn=disable_self_attn, checkpoint=use_checkpoint)
            for d in range(depth))
        # Zero-initialised so that the whole block starts as the identity (the original's zero_module).
        self.proj_out = zero_module(nn.Linear(inner_dim, in_channels) if use_linear
                                    else nn.Conv2d(inner_dim, in_channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, C, H, W); context: (B, M, context_dim), a list of those (one per block), or None."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialTransformer expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        contexts = _per_depth(context, len(self.transformer_blocks), "context")
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # (B, C, H, W) -> (B, HW, C): a free view for channels_last inputs.
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block, ctx in zip(self.transformer_blocks, contexts):
            x = block(x, context=ctx)
        if self.use_linear:
            x = self.proj_out(x)
        # Back to (B, C, H, W) in the input's memory format: mixing formats makes every later op copy.
        x = x.transpose(1, 2).reshape(b, x.shape[-1], h, w).contiguous(memory_format=memory_format_of(x_in))
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
