"""One mapping between our (CompVis) state_dict names and diffusers' names, used in both directions.

The mapping is derived from the architecture (levels, residual blocks per level, where attention sits, heads), so
any `channel_mult` length or `num_res_blocks` works. Most entries rename a module prefix; two kinds of tensors also
change shape: 1x1 convs of our attention blocks are diffusers `Linear`s (`to_q`, `to_out.0`, ...), and the fused
`qkv` conv of the ADM `AttentionBlock` is split into `to_q/to_k/to_v` (per-head [q, k, v] layout when legacy).
`UNetLayout` holds the architecture facts the mapping and the config translation (`diffusers_config`) share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Our ResBlock (openaimodel) -> diffusers ResnetBlock2D.
UNET_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# Our first-stage ResnetBlock -> diffusers ResnetBlock2D (the other names agree).
AE_RESBLOCK = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
# Our first-stage AttnBlock (1x1 convs) -> diffusers Attention (Linear layers).
AE_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


class KeyMapError(ValueError):
    """A state_dict key (or tensor) that the mapping does not cover; the message names it."""


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, (int, str)) or value is None else list(value)


@dataclass(frozen=True)
class UNetLayout:
    """The facts of a UNetModel that decide diffusers names and config: levels, blocks, attention, heads."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_levels: tuple[bool, ...]
    spatial: bool  # SpatialTransformer (UNet2DConditionModel) or ADM AttentionBlock (UNet2DModel)
    resblock_updown: bool
    label_emb: str | None  # "embedding", "sequential" or None
    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    qkv_legacy: bool

    @property
    def n_levels(self) -> int:
        """Number of resolution levels."""
        return len(self.channel_mult)

    def channels(self, level: int) -> int:
        """Feature channels at `level`."""
        return self.model_channels * self.channel_mult[level]

    def heads(self, ch: int, up: bool = False) -> int:
        """Attention heads of a block at `ch` channels (the original's arithmetic; `up`: an output block)."""
        if self.num_head_channels != -1:
            if ch % self.num_head_channels:
                raise KeyMapError(f"UNet: {ch} channels are not divisible by num_head_channels "
                                  f"{self.num_head_channels}")
            return ch // self.num_head_channels
        heads = self.num_heads_upsample if up and not self.spatial else self.num_heads
        if ch % heads:
            raise KeyMapError(f"UNet: {ch} channels are not divisible into {heads} heads")
        return heads


def unet_layout(params: Mapping[str, Any]) -> UNetLayout:
    """The layout of our UNetModel from its config params; KeyMapError for what diffusers cannot express."""
    p = dict(params)

    def unsupported(key: str, why: str) -> KeyMapError:
        return KeyMapError(f"unet_config.params.{key}={p.get(key)!r}: {why}; diffusers has no equivalent")

    mult = tuple(int(m) for m in _as_list(p.get("channel_mult", (1, 2, 4, 8))))
    n = len(mult)
    nrb = _as_list(p["num_res_blocks"])
    nrb = tuple(int(nrb[0]) for _ in range(n)) if len(nrb) == 1 else tuple(int(r) for r in nrb)
    if len(nrb) != n:
        raise unsupported("num_res_blocks", f"needs one entry per level ({n})")
    if int(p.get("dims", 2)) != 2:
        raise unsupported("dims", "only 2-D UNets convert")
    if not p.get("conv_resample", True):
        raise unsupported("conv_resample", "resampling without convolutions")
    if p.get("num_attention_blocks") is not None:
        raise unsupported("num_attention_blocks", "attention on only some blocks of a level")
    if p.get("n_embed") is not None:
        raise unsupported("n_embed", "codebook-id prediction")
    if p.get("disable_middle_self_attn"):
        raise unsupported("disable_middle_self_attn", "a middle block without self-attention")
    if p.get("use_fp16"):
        raise unsupported("use_fp16", "a float16 torso (export in float32 and pass dtype instead)")
    spatial = bool(p.get("use_spatial_transformer", False))
    if spatial and p.get("context_dim") is None:
        raise unsupported("context_dim", "a SpatialTransformer without cross-attention context")
    if spatial and p.get("resblock_updown"):
        raise unsupported("resblock_updown", "ResBlock resampling together with SpatialTransformer blocks")
    classes = p.get("num_classes")
    if classes is None:
        label = None
    elif isinstance(classes, int):
        label = "embedding"
    elif classes == "sequential":
        label = "sequential"
    else:
        raise unsupported("num_classes", "continuous class labels")
    resolutions = {int(r) for r in _as_list(p.get("attention_resolutions", ()))}
    heads = int(p.get("num_heads", -1))
    up_heads = int(p.get("num_heads_upsample", -1))
    return UNetLayout(model_channels=int(p["model_channels"]), channel_mult=mult, num_res_blocks=nrb,
                      attn_levels=tuple(2 ** i in resolutions for i in range(n)), spatial=spatial,
                      resblock_updown=bool(p.get("resblock_updown", False)), label_emb=label, num_heads=heads,
                      num_head_channels=int(p.get("num_head_channels", -1)),
                      num_heads_upsample=heads if up_heads == -1 else up_heads,
                      qkv_legacy=not p.get("use_new_attention_order", False))


class KeyMap:
    """Prefix renames plus the tensors that change shape, applied to whole state dicts in either direction."""

    def __init__(self) -> None:
        self.prefixes: dict[str, str] = {}
        self.linear: dict[str, int] = {}  # our prefix of a 1x1 conv -> its weight's ndim (diffusers: Linear)
        # our fused qkv prefix -> (their attention prefix, heads, legacy per-head layout)
        self.qkv: dict[str, tuple[str, int, bool]] = {}

    def add(self, ours: str, theirs: str, conv_ndim: int | None = None) -> None:
        """Rename module prefix `ours` to `theirs`; `conv_ndim`: a 1x1 conv of ours that is a Linear there."""
        self.prefixes[ours] = theirs
        if conv_ndim:
            self.linear[ours] = conv_ndim

    def add_block(self, ours: str, theirs: str, table: Mapping[str, str]) -> None:
        """Rename the children of one block through `table`."""
        for a, b in table.items():
            self.add(f"{ours}.{a}", f"{theirs}.{b}")

    @staticmethod
    def _split(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in table:
                return prefix, ".".join(parts[i:])
        return None

    def to_diffusers(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our names -> diffusers names (a new dict; tensors are shared unless reshaped or split)."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            if module in self.qkv:
                theirs, heads, legacy = self.qkv[module]
                for name, part in zip(("to_q", "to_k", "to_v"), split_qkv(value, heads, legacy)):
                    out[f"{theirs}.{name}.{leaf}"] = part
                continue
            found = self._split(key, self.prefixes)
            if found is None:
                raise KeyMapError(f"no diffusers name for our state_dict key '{key}'")
            prefix, rest = found
            if prefix in self.linear and rest == "weight":
                value = value.reshape(value.shape[0], -1)
            out[f"{self.prefixes[prefix]}.{rest}"] = value
        return out

    def to_ours(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Diffusers names -> our names; KeyMapError for a key this architecture has no place for."""
        state = dict(state)
        out: dict[str, torch.Tensor] = {}
        for ours, (theirs, heads, legacy) in self.qkv.items():
            for leaf in ("weight", "bias"):
                names = [f"{theirs}.{n}.{leaf}" for n in ("to_q", "to_k", "to_v")]
                if any(n in state for n in names):
                    missing = [n for n in names if n not in state]
                    if missing:
                        raise KeyMapError(f"diffusers state_dict lacks {missing[0]} (needed with {names[0]})")
                    out[f"{ours}.{leaf}"] = merge_qkv([state.pop(n) for n in names], heads, legacy)
        reverse = {theirs: ours for ours, theirs in self.prefixes.items()}
        for key, value in state.items():
            found = self._split(key, reverse)
            if found is None:
                raise KeyMapError(f"diffusers state_dict key '{key}' has no place in this architecture")
            prefix, rest = found
            ours = reverse[prefix]
            if ours in self.linear and rest == "weight":
                value = value.reshape(*value.shape, *([1] * (self.linear[ours] - value.dim())))
            out[f"{ours}.{rest}"] = value
        return out


def split_qkv(value: torch.Tensor, heads: int, legacy: bool) -> list[torch.Tensor]:
    """Fused qkv conv1d weight (3C, C, 1) or bias (3C,) -> [q, k, v] Linear tensors (C, C) / (C,)."""
    three_c = value.shape[0]
    c = three_c // 3
    grouped = value.reshape(heads, 3, c // heads, -1) if legacy else value.reshape(3, heads, c // heads, -1)
    parts = grouped.unbind(1) if legacy else grouped.unbind(0)
    shape = (c, -1) if value.dim() > 1 else (c,)
    return [p.reshape(shape).contiguous() for p in parts]


def merge_qkv(parts: list[torch.Tensor], heads: int, legacy: bool) -> torch.Tensor:
    """Inverse of `split_qkv`: [q, k, v] -> the fused qkv conv1d weight (3C, C, 1) or bias (3C,)."""
    c = parts[0].shape[0]
    grouped = [p.reshape(heads, c // heads, -1) for p in parts]
    fused = torch.stack(grouped, dim=1 if legacy else 0).reshape(3 * c, -1)
    return fused.unsqueeze(-1).contiguous() if parts[0].dim() > 1 else fused.reshape(3 * c).contiguous()


def _unet_attention(m: KeyMap, layout: UNetLayout, ours: str, theirs: str, ch: int, up: bool = False) -> None:
    if layout.spatial:  # SpatialTransformer and Transformer2DModel use the same child names
        m.add(ours, theirs)
        return
    m.add(f"{ours}.norm", f"{theirs}.group_norm")
    m.qkv[f"{ours}.qkv"] = (theirs, layout.heads(ch, up), layout.qkv_legacy)
    m.add(f"{ours}.proj_out", f"{theirs}.to_out.0", conv_ndim=3)


def unet_key_map(layout: UNetLayout) -> KeyMap:
    """Our UNetModel keys <-> diffusers UNet2DConditionModel (SpatialTransformer) / UNet2DModel (ADM attention)."""
    m = KeyMap()
    m.add("time_embed.0", "time_embedding.linear_1")
    m.add("time_embed.2", "time_embedding.linear_2")
    if layout.label_emb == "embedding":
        m.add("label_emb", "class_embedding")
    elif layout.label_emb == "sequential":
        m.add("label_emb.0.0", "class_embedding.linear_1")
        m.add("label_emb.0.2", "class_embedding.linear_2")
    m.add("input_blocks.0.0", "conv_in")
    n, k = layout.n_levels, 1
    for level in range(n):
        ch = layout.channels(level)
        for j in range(layout.num_res_blocks[level]):
            m.add_block(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", UNET_RESBLOCK)
            if layout.attn_levels[level]:
                _unet_attention(m, layout, f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", ch)
            k += 1
        if level != n - 1:
            if layout.resblock_updown:
                m.add_block(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", UNET_RESBLOCK)
            else:
                m.add(f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    ch = layout.channels(n - 1)
    m.add_block("middle_block.0", "mid_block.resnets.0", UNET_RESBLOCK)
    _unet_attention(m, layout, "middle_block.1", "mid_block.attentions.0", ch)
    m.add_block("middle_block.2", "mid_block.resnets.1", UNET_RESBLOCK)
    k = 0
    for j in range(n):  # diffusers orders up blocks by execution: up_blocks.0 is the deepest level
        level = n - 1 - j
        ch = layout.channels(level)
        for r in range(layout.num_res_blocks[level] + 1):
            m.add_block(f"output_blocks.{k}.0", f"up_blocks.{j}.resnets.{r}", UNET_RESBLOCK)
            sub = 1
            if layout.attn_levels[level]:
                _unet_attention(m, layout, f"output_blocks.{k}.1", f"up_blocks.{j}.attentions.{r}", ch, up=True)
                sub = 2
            if level and r == layout.num_res_blocks[level]:
                if layout.resblock_updown:
                    m.add_block(f"output_blocks.{k}.{sub}", f"up_blocks.{j}.upsamplers.0", UNET_RESBLOCK)
                else:
                    m.add(f"output_blocks.{k}.{sub}.conv", f"up_blocks.{j}.upsamplers.0.conv")
            k += 1
    m.add("out.0", "conv_norm_out")
    m.add("out.2", "conv_out")
    return m


def ae_attn_levels(ddconfig: Mapping[str, Any]) -> list[bool]:
    """Per resolution level of our Encoder/Decoder: whether it has attention blocks (attn_resolutions in pixels)."""
    resolutions = {int(r) for r in _as_list(ddconfig.get("attn_resolutions", ()))}
    vanilla = ddconfig.get("attn_type", "vanilla") == "vanilla"
    n = len(_as_list(ddconfig["ch_mult"]))
    return [vanilla and int(ddconfig["resolution"]) // 2 ** i in resolutions for i in range(n)]


def _ae_attention(m: KeyMap, ours: str, theirs: str) -> None:
    m.add(f"{ours}.norm", f"{theirs}.group_norm")
    for a, b in AE_ATTENTION.items():
        m.add(f"{ours}.{a}", f"{theirs}.{b}", conv_ndim=4)


def vae_key_map(ddconfig: Mapping[str, Any]) -> KeyMap:
    """Our first-stage keys (AutoencoderKL / VQModel) <-> diffusers AutoencoderKL / VQModel."""
    m = KeyMap()
    n = len(_as_list(ddconfig["ch_mult"]))
    nrb = int(ddconfig["num_res_blocks"])
    attn = ae_attn_levels(ddconfig)
    for name in ("quant_conv", "post_quant_conv", "quantize.embedding", "encoder.conv_in", "encoder.conv_out",
                 "decoder.conv_in", "decoder.conv_out"):
        m.add(name, name)
    for part in ("encoder", "decoder"):
        m.add(f"{part}.norm_out", f"{part}.conv_norm_out")
        m.add_block(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", AE_RESBLOCK)
        _ae_attention(m, f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
        m.add_block(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", AE_RESBLOCK)
    for level in range(n):
        for j in range(nrb):
            m.add_block(f"encoder.down.{level}.block.{j}", f"encoder.down_blocks.{level}.resnets.{j}", AE_RESBLOCK)
            if attn[level]:
                _ae_attention(m, f"encoder.down.{level}.attn.{j}", f"encoder.down_blocks.{level}.attentions.{j}")
        if level != n - 1:
            m.add(f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv")
        up = n - 1 - level  # the decoder's `up` is indexed by resolution level, diffusers' up_blocks by execution
        for j in range(nrb + 1):
            m.add_block(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", AE_RESBLOCK)
            if attn[level]:
                _ae_attention(m, f"decoder.up.{level}.attn.{j}", f"decoder.up_blocks.{up}.attentions.{j}")
        if level != 0:
            m.add(f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
    return m
