"""The denoising U-Net of latent diffusion (`UNetModel`, CompVis / Stable Diffusion v1-v2 constructor and state_dict).

Layout (ADM, Dhariwal & Nichol 2021, with LDM's SpatialTransformer cross-attention, Rombach et al. 2022):
`time_embed`, optional `label_emb`, `input_blocks` (conv, then per level `num_res_blocks` ResBlocks [+ attention] and a
Downsample), `middle_block` (ResBlock, attention, ResBlock), `output_blocks` (ResBlocks on skip-concatenated features
[+ attention] [+ Upsample]), `out` (norm, SiLU, zero conv) or `id_predictor` when `n_embed` is set.
The blocks live in `unet_blocks.py`, `EncoderUNetModel` in `encoder_unet.py`; both are re-exported here under
their original import path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.encoder_unet import AttentionPool2d, EncoderUNetModel
from ldm.modules.diffusionmodules.unet_blocks import (AttentionBlock, Downsample, QKVAttention, QKVAttentionLegacy,
                                                      ResBlock, TimestepBlock, TimestepEmbedSequential, Upsample)
from ldm.modules.diffusionmodules.util import (GROUPNORM_GROUPS, conv_nd, linear, normalization, timestep_embedding,
                                               zero_module)

__all__ = ["UNetModel", "EncoderUNetModel", "AttentionPool2d", "AttentionBlock", "Downsample", "QKVAttention",
           "QKVAttentionLegacy", "ResBlock",
           "TimestepBlock", "TimestepEmbedSequential", "Upsample", "convert_module_to_f16", "convert_module_to_f32"]


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the floating-point parameters and buffers directly owned by `module` to float16 (apply() helper)."""
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.is_floating_point():
            t.data = t.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Cast the floating-point parameters and buffers directly owned by `module` back to float32."""
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.is_floating_point():
            t.data = t.data.float()


def _as_list(value, name: str) -> list | None:
    """Turn an OmegaConf ListConfig / tuple into a plain list (None stays None)."""
    if value is None or isinstance(value, (int, str)):
        return value
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"UNetModel: {name} must be an int or a list, got {type(value).__name__}") from None


def _per_level(value, n_levels: int, name: str) -> list:
    """An int broadcast to every level, or a list with one entry per level of channel_mult."""
    if isinstance(value, int):
        return [value] * n_levels
    value = _as_list(value, name)
    if len(value) != n_levels:
        raise ValueError(f"UNetModel: {name} needs one entry per level of channel_mult ({n_levels}), got {value}")
    return value


@dataclass
class BlockFactory:
    """The per-config choices every U-Net block is built from, with the original's head arithmetic in one place."""

    time_embed_dim: int
    dims: int
    conv_resample: bool
    resblock_updown: bool
    res: dict  # ResBlock options: dropout, dims, use_checkpoint, use_scale_shift_norm, norm_num_groups
    num_heads: int
    num_head_channels: int
    legacy: bool
    use_spatial_transformer: bool
    context_dim: list | None
    use_linear_in_transformer: bool
    use_checkpoint: bool
    use_new_attention_order: bool
    norm_num_groups: int
    attention_resolutions: tuple
    num_attention_blocks: list | None
    disable_self_attentions: list | None
    depths: list

    def resblock(self, ch: int, out_channels: int | None = None, **updown: bool) -> ResBlock:
        """A ResBlock from `ch` to `out_channels` (default `ch`); `down=True` / `up=True` resample inside it."""
        return ResBlock(ch, self.time_embed_dim, out_channels=out_channels, **updown, **self.res)

    def attention(self, ch: int, heads_for_attention_block: int, depth: int, no_self_attn: bool) -> nn.Module:
        """The attention layer at `ch` channels (the original's head arithmetic, legacy included)."""
        if self.num_head_channels == -1:
            heads, dim_head = self.num_heads, ch // self.num_heads
        else:
            heads, dim_head = ch // self.num_head_channels, self.num_head_channels
        if self.legacy:
            dim_head = ch // heads if self.use_spatial_transformer else self.num_head_channels
        if not self.use_spatial_transformer:
            return AttentionBlock(ch, use_checkpoint=self.use_checkpoint, num_heads=heads_for_attention_block,
                                  num_head_channels=dim_head, use_new_attention_order=self.use_new_attention_order,
                                  norm_num_groups=self.norm_num_groups)
        return SpatialTransformer(ch, heads, dim_head, depth=depth, context_dim=self.context_dim,
                                  disable_self_attn=no_self_attn, use_linear=self.use_linear_in_transformer,
                                  use_checkpoint=self.use_checkpoint, norm_num_groups=self.norm_num_groups)

    def wants_attention(self, ds: int, level: int, index: int) -> bool:
        """Whether the `index`-th block of `level` (at downsampling factor ds) gets an attention layer."""
        return ds in self.attention_resolutions and (self.num_attention_blocks is None
                                                     or index < self.num_attention_blocks[level])

    def level_attention(self, ch: int, heads: int, level: int) -> nn.Module:
        """The attention layer of a block at `level` (its depth and self-attention switch)."""
        no_self_attn = bool(self.disable_self_attentions[level]) if self.disable_self_attentions is not None else False
        return self.attention(ch, heads, self.depths[level], no_self_attn)

    def downsample(self, ch: int) -> nn.Module:
        """Halve the resolution: a ResBlock(down=True) with `resblock_updown`, else a (conv) Downsample."""
        return self.resblock(ch, ch, down=True) if self.resblock_updown else \
            Downsample(ch, self.conv_resample, dims=self.dims, out_channels=ch)

    def upsample(self, ch: int) -> nn.Module:
        """Double the resolution: a ResBlock(up=True) with `resblock_updown`, else a (conv) Upsample."""
        return self.resblock(ch, ch, up=True) if self.resblock_updown else \
            Upsample(ch, self.conv_resample, dims=self.dims, out_channels=ch)


def input_blocks(blocks: BlockFactory, in_channels: int, model_channels: int, channel_mult: tuple,
                 num_res_blocks: list) -> tuple[nn.ModuleList, list[int], int, int]:
    """The encoder half: a conv, then per level its ResBlocks [+ attention] and a downsample (not after the last).

    Returns (the blocks, the channels of each block's output: the skip connections, the last channels, the final
    downsampling factor)."""
    modules = nn.ModuleList([TimestepEmbedSequential(conv_nd(blocks.dims, in_channels, model_channels, 3, padding=1))])
    skip_channels = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for index in range(num_res_blocks[level]):
            layers: list[nn.Module] = [blocks.resblock(ch, mult * model_channels)]
            ch = mult * model_channels
            if blocks.wants_attention(ds, level, index):
                layers.append(blocks.level_attention(ch, blocks.num_heads, level))
            modules.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            modules.append(TimestepEmbedSequential(blocks.downsample(ch)))
            skip_channels.append(ch)
            ds *= 2
    return modules, skip_channels, ch, ds


def output_blocks(blocks: BlockFactory, model_channels: int, channel_mult: tuple, num_res_blocks: list,
                  heads: int, skip_channels: list[int], ch: int, ds: int) -> tuple[nn.ModuleList, list[int]]:
    """The decoder half: per level (deepest first) num_res_blocks + 1 ResBlocks over the skip-concatenated features
    [+ attention], an upsample after the last one of every level but the top. `skip_channels` is consumed.

    Returns (the blocks, the channels of each block's output)."""
    modules, channels = nn.ModuleList([]), []
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for index in range(num_res_blocks[level] + 1):
            layers: list[nn.Module] = [blocks.resblock(ch + skip_channels.pop(), model_channels * mult)]
            ch = model_channels * mult
            if blocks.wants_attention(ds, level, index):
                layers.append(blocks.level_attention(ch, heads, level))
            if level and index == num_res_blocks[level]:
                layers.append(blocks.upsample(ch))
                ds //= 2
            modules.append(TimestepEmbedSequential(*layers))
            channels.append(ch)
    return modules, channels


class UNetModel(nn.Module):
    """The full U-Net with timestep embedding, optional class / cross-attention conditioning (original signature).

    `attention_resolutions` are downsampling factors (1, 2, 4, ...) at which attention is added.
    Heads: `num_heads` heads per attention block, or channels // `num_head_channels` heads when that is set; with
    `legacy=True` the original's head arithmetic is reproduced exactly. `use_fp16` casts the torso's input to float16
    as the original (run it under `torch.autocast`, or call `convert_to_fp16()` to store the torso in float16).
    `transformer_depth` may also be a per-level list (the middle block uses the last level's depth).
    `norm_num_groups` (not in the original; default 32 as there) sets the groups of every GroupNorm, for narrow models.
    Not supported: `use_spatial_transformer` with dims != 2 (raises NotImplementedError).
    """

    def __init__(self, image_size, in_channels: int, model_channels: int, out_channels: int, num_res_blocks,
                 attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8), conv_resample: bool = True,
                 dims: int = 2, num_classes=None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = -1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, use_spatial_transformer: bool = False,
                 transformer_depth=1, context_dim=None, n_embed: int | None = None, legacy: bool = True,
                 disable_self_attentions=None, num_attention_blocks=None, disable_middle_self_attn: bool = False,
                 use_linear_in_transformer: bool = False, adm_in_channels: int | None = None,
                 norm_num_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        context_dim = _as_list(context_dim, "context_dim")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError("UNetModel: context_dim is set but use_spatial_transformer is False; cross-attention "
                             "conditioning needs use_spatial_transformer: True")
        if use_spatial_transformer and dims != 2:
            raise NotImplementedError(f"UNetModel: use_spatial_transformer supports dims=2 only, got dims={dims}")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels (both are -1)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        channel_mult = tuple(_as_list(channel_mult, "channel_mult"))
        n_levels = len(channel_mult)
        self.num_res_blocks = _per_level(num_res_blocks, n_levels, "num_res_blocks")
        depths = _per_level(transformer_depth, n_levels, "transformer_depth")
        if disable_self_attentions is not None:
            disable_self_attentions = _per_level(disable_self_attentions, n_levels, "disable_self_attentions")
        if num_attention_blocks is not None:
            num_attention_blocks = _per_level(num_attention_blocks, n_levels, "num_attention_blocks")
            if any(a > r for a, r in zip(num_attention_blocks, self.num_res_blocks)):
                raise ValueError(f"UNetModel: num_attention_blocks {num_attention_blocks} exceeds num_res_blocks "
                                 f"{self.num_res_blocks} at some level")
        if num_classes == "sequential" and adm_in_channels is None:
            raise ValueError("UNetModel: num_classes='sequential' needs adm_in_channels")

        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.dropout, self.dims = model_channels, dropout, dims
        self.attention_resolutions = tuple(int(r) for r in _as_list(attention_resolutions, "attention_resolutions"))
        self.channel_mult, self.conv_resample = channel_mult, conv_resample
        self.num_classes, self.use_checkpoint, self.use_fp16 = num_classes, use_checkpoint, use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads, self.num_head_channels = num_heads, num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.context_dim = context_dim
        self.predict_codebook_ids = n_embed is not None

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(linear(model_channels, time_embed_dim), nn.SiLU(),
                                        linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = self._make_label_emb(num_classes, time_embed_dim, adm_in_channels)

        blocks = BlockFactory(
            time_embed_dim=time_embed_dim, dims=dims, conv_resample=conv_resample, resblock_updown=resblock_updown,
            res=dict(dropout=dropout, dims=dims, use_checkpoint=use_checkpoint,
                     use_scale_shift_norm=use_scale_shift_norm, norm_num_groups=norm_num_groups),
            num_heads=num_heads, num_head_channels=num_head_channels, legacy=legacy,
            use_spatial_transformer=use_spatial_transformer, context_dim=context_dim,
            use_linear_in_transformer=use_linear_in_transformer, use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order, norm_num_groups=norm_num_groups,
            attention_resolutions=self.attention_resolutions, num_attention_blocks=num_attention_blocks,
            disable_self_attentions=disable_self_attentions, depths=depths)
        # Built in the original's order (so a seed gives the original's initial weights): down, middle, up.
        self.input_blocks, skip_channels, ch, ds = input_blocks(blocks, in_channels, model_channels, channel_mult,
                                                                self.num_res_blocks)
        # The middle block always has attention, whatever attention_resolutions says (as the original).
        self.middle_block = TimestepEmbedSequential(
            blocks.resblock(ch), blocks.attention(ch, num_heads, depths[-1], disable_middle_self_attn),
            blocks.resblock(ch))
        middle_channels = ch
        self.output_blocks, output_channels = output_blocks(blocks, model_channels, channel_mult,
                                                            self.num_res_blocks, num_heads_upsample,
                                                            list(skip_channels), ch, ds)
        ch = output_channels[-1]
        # Channels of every block's output, summed (the original's `_feature_size`).
        self._feature_size = sum(skip_channels) + middle_channels + sum(output_channels)

        self.out = nn.Sequential(normalization(ch, num_groups=norm_num_groups), nn.SiLU(),
                                 zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)))
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch, num_groups=norm_num_groups),
                                              conv_nd(dims, model_channels, n_embed, 1))

    @staticmethod
    def _make_label_emb(num_classes, time_embed_dim: int, adm_in_channels: int | None) -> nn.Module:
        """Class embedding added to the time embedding: Embedding (int), Linear (continuous), MLP (sequential)."""
        if isinstance(num_classes, int):
            return nn.Embedding(num_classes, time_embed_dim)
        if num_classes == "continuous":
            return nn.Linear(1, time_embed_dim)
        if num_classes == "sequential":
            return nn.Sequential(nn.Sequential(linear(adm_in_channels, time_embed_dim), nn.SiLU(),
                                               linear(time_embed_dim, time_embed_dim)))
        raise ValueError(f"UNetModel: num_classes must be an int, 'continuous' or 'sequential', got {num_classes!r}")

    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def convert_to_fp16(self) -> None:
        """Store the torso (input, middle, output blocks) in float16; embeddings and the output head stay float32."""
        for part in self._torso():
            part.apply(convert_module_to_f16)

    def convert_to_fp32(self) -> None:
        """Store the torso back in float32."""
        for part in self._torso():
            part.apply(convert_module_to_f32)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context=None,
                y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Predict eps / x0 / v (whatever it was trained for) for x (B, in_channels, H, W) at `timesteps` (B,).

        context: (B, M, context_dim) (or a per-block list) for cross-attention; y: (B,) class labels when the model
        is class-conditional. Extra keyword arguments are accepted and ignored, as the original.
        """
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps (B,)")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("UNetModel: pass y if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes!r}, y given: {y is not None})")
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNetModel expects x of shape (B, {self.in_channels}, ...) with {self.dims} spatial "
                             f"dims, got {tuple(x.shape)}")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        param_dtype = self.time_embed[0].weight.dtype  # float32, or the model's dtype when it was cast wholesale
        t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False)
        emb = self.time_embed(t_emb.to(param_dtype))
        if self.num_classes is not None:
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"UNetModel: y has batch size {y.shape[0]}, x has {x.shape[0]}")
            emb = emb + self.label_emb(y if isinstance(self.num_classes, int) else y.to(param_dtype))

        # use_fp16: the torso runs in float16 (as the original); otherwise in the dtype of its weights.
        torso_dtype = torch.float16 if self.use_fp16 else self.input_blocks[0][0].weight.dtype
        if self.use_fp16:
            if not torch.is_autocast_enabled(x.device.type) and self.input_blocks[0][0].weight.dtype != torch.float16:
                raise RuntimeError("UNetModel(use_fp16=True) runs its torso in float16 as the original: call it under "
                                   "torch.autocast, or call model.convert_to_fp16() first")
            emb = emb.to(torso_dtype)
            if isinstance(context, (list, tuple)):
                context = [c.to(torso_dtype) if c is not None else None for c in context]
            elif context is not None:
                context = context.to(torso_dtype)
        h = x.to(torso_dtype)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        h = h.to(x.dtype)
        return self.id_predictor(h) if self.predict_codebook_ids else self.out(h)
