"""The half U-Net with a pooled head (ADM's noisy-image classifier, `EncoderUNetModel`), original names and options.

Re-exported by `openaimodel`, its original import path. Keys: `time_embed`, `input_blocks`, `middle_block`, `out`.
"""

from __future__ import annotations

import torch
from torch import nn

from ldm.modules.diffusionmodules.unet_blocks import (AttentionBlock, Downsample, QKVAttention, ResBlock,
                                                      TimestepEmbedSequential)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token (plus learned positions) attends over all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        if x.shape[-1] + 1 != self.positional_embedding.shape[1]:
            raise ValueError(f"AttentionPool2d was built for {self.positional_embedding.shape[1] - 1} positions, "
                             f"got a feature map with {x.shape[-1]} (image_size must match the input)")
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(self.attention(self.qkv_proj(x)))[:, :, 0]


class EncoderUNetModel(nn.Module):
    """The U-Net's input and middle blocks with a pooled head (`pool`: adaptive, attention, spatial, spatial_v2)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8), conv_resample: bool = True,
                 dims: int = 2, use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive",
                 *args, **kwargs):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"EncoderUNetModel: pool must be one of {POOLS}, got {pool!r}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("EncoderUNetModel: pool='attention' needs num_head_channels")
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.pool, self.dims, self.use_fp16 = pool, dims, use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(linear(model_channels, time_embed_dim), nn.SiLU(),
                                        linear(time_embed_dim, time_embed_dim))
        res = dict(dropout=dropout, dims=dims, use_checkpoint=use_checkpoint,
                   use_scale_shift_norm=use_scale_shift_norm)
        attn = dict(use_checkpoint=use_checkpoint, num_heads=num_heads, num_head_channels=num_head_channels,
                    use_new_attention_order=use_new_attention_order)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3,
                                                                           padding=1))])
        self._feature_size = ch = model_channels
        ds = 1
        channel_mult = tuple(channel_mult)
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, time_embed_dim, out_channels=mult * model_channels, **res)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    ResBlock(ch, time_embed_dim, out_channels=ch, down=True, **res) if resblock_updown
                    else Downsample(ch, conv_resample, dims=dims, out_channels=ch)))
                ds *= 2
                self._feature_size += ch
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, time_embed_dim, **res), AttentionBlock(ch, **attn),
                                                    ResBlock(ch, time_embed_dim, **res))
        self._feature_size += ch

        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Logits / features (B, out_channels) of x (B, in_channels, H, W) at `timesteps` (B,)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        spatial = self.pool.startswith("spatial")
        results = []
        h = x.to(torch.float16 if self.use_fp16 else self.input_blocks[0][0].weight.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                results.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            results.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(results, dim=-1))
        return self.out(h.to(x.dtype))
