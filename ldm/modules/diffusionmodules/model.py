"""Autoencoder Encoder/Decoder of the first stage (VQGAN/LDM layout, CompVis state_dict names)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# GroupNorm groups of the original networks. A narrow model (the CPU overlay's ch 32) may want fewer: with as many
# groups as channels GroupNorm becomes a per-channel InstanceNorm, which on a plain background with one small object
# normalises away each channel's contrast and leaves the networks nearly colour-blind.
NORM_NUM_GROUPS = 32


def Normalize(in_channels: int, num_groups: int = NORM_NUM_GROUPS) -> nn.GroupNorm:
    """GroupNorm(32, eps=1e-6) used throughout the first-stage networks (`num_groups` for narrow models)."""
    if in_channels % num_groups:
        raise ValueError(f"norm_num_groups={num_groups} must divide every block's channel count, got {in_channels}")
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU."""
    return F.silu(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 conv (`conv`)."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """x2 downsampling: stride-2 3x3 conv after asymmetric (right/bottom) zero padding, or 2x2 average pooling."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            # No padding in the conv: the original pads (0, 1, 0, 1) so that even sizes halve exactly.
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """Pre-activation residual block (GroupNorm-SiLU-conv x2) with optional timestep projection and 1x1/3x3 shortcut."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int = 512, norm_num_groups: int = NORM_NUM_GROUPS):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels, norm_num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels, norm_num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions with 1x1-conv q/k/v/proj_out, via SDPA."""

    def __init__(self, in_channels: int, norm_num_groups: int = NORM_NUM_GROUPS):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels, norm_num_groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2)  # (B, H*W, C)
        # q, k, v are 1x1 convs in the checkpoint layout; one fused matmul over their stacked weights is the same map.
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).view(3 * c, c)
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(tokens, weight, bias).unsqueeze(1).chunk(3, dim=-1)  # each (B, 1 head, H*W, C)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(C), as the original
        out = F.linear(out.squeeze(1), self.proj_out.weight.view(c, c), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, height, width)


def make_attn(in_channels: int, attn_type: str = "vanilla", norm_num_groups: int = NORM_NUM_GROUPS) -> nn.Module:
    """Attention block by name: "vanilla" (AttnBlock) or "none" (identity)."""
    if attn_type == "vanilla":
        return AttnBlock(in_channels, norm_num_groups)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"attn_type '{attn_type}' is not supported (use 'vanilla' or 'none')")


def _check_resolution(resolution: int, num_resolutions: int, what: str) -> None:
    factor = 2 ** (num_resolutions - 1)
    if resolution % factor != 0:
        raise ValueError(f"{what}: resolution {resolution} is not divisible by the downsampling factor {factor} "
                         f"implied by ch_mult of length {num_resolutions}")


class Encoder(nn.Module):
    """Image -> latent moments: conv_in, per-level ResnetBlocks (+AttnBlocks at attn_resolutions) and Downsample, mid.

    `norm_num_groups` (not in the original; default 32 as there) sets the GroupNorm groups, see NORM_NUM_GROUPS.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 use_linear_attn: bool = False, attn_type: str = "vanilla",
                 norm_num_groups: int = NORM_NUM_GROUPS, **ignore_kwargs):
        super().__init__()
        if use_linear_attn:
            raise NotImplementedError("use_linear_attn is not supported; use attn_type 'vanilla' (SDPA) or 'none'")
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        _check_resolution(resolution, self.num_resolutions, "Encoder")

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.in_ch_mult = in_ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch,
                                         dropout=dropout, norm_num_groups=norm_num_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type, norm_num_groups))
            level = nn.Module()
            level.block = block
            level.attn = attn
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_num_groups=norm_num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, norm_num_groups)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_num_groups=norm_num_groups)
        self.norm_out = Normalize(block_in, norm_num_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1,
                                  padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Encoder expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = level.block[i_block](h, None)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image: conv_in, mid, per-level (num_res_blocks + 1) ResnetBlocks (+attn) and Upsample, conv_out.

    `up` is indexed by resolution level (up[0] is the full-resolution level), as in CompVis checkpoints.
    `norm_num_groups` as in `Encoder`.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, give_pre_end: bool = False,
                 tanh_out: bool = False, use_linear_attn: bool = False, attn_type: str = "vanilla",
                 norm_num_groups: int = NORM_NUM_GROUPS, **ignorekwargs):
        super().__init__()
        if use_linear_attn:
            raise NotImplementedError("use_linear_attn is not supported; use attn_type 'vanilla' (SDPA) or 'none'")
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        _check_resolution(resolution, self.num_resolutions, "Decoder")

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        self.z_channels = z_channels

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_num_groups=norm_num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, norm_num_groups)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch,
                                       dropout=dropout, norm_num_groups=norm_num_groups)

        levels: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch,
                                         dropout=dropout, norm_num_groups=norm_num_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type, norm_num_groups))
            level = nn.Module()
            level.block = block
            level.attn = attn
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            levels.insert(0, level)  # keep `up` ordered by resolution level, not by execution order
        self.up = nn.ModuleList(levels)

        self.norm_out = Normalize(block_in, norm_num_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"Decoder expects (B, {self.z_channels}, h, w) latents, got {tuple(z.shape)}")
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = level.block[i_block](h, None)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
