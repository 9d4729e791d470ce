"""Tests for the U-Net blocks (ResBlock, resampling, AttentionBlock head orders, TimestepEmbedSequential routing)."""

import pytest
import torch
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import (AttentionBlock, Downsample, ResBlock, TimestepBlock,
                                                      TimestepEmbedSequential, Upsample)


def _randomise(module: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_resblock_names_and_skip_types():
    same = ResBlock(32, 16, dropout=0.0)
    assert isinstance(same.skip_connection, nn.Identity)
    layers = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
    assert set(same.state_dict()) == {f"{n}.{w}" for n in layers for w in ("weight", "bias")}
    assert ResBlock(32, 16, 0.0, out_channels=64).skip_connection.kernel_size == (1, 1)
    assert ResBlock(32, 16, 0.0, out_channels=64, use_conv=True).skip_connection.kernel_size == (3, 3)
    assert torch.all(same.out_layers[3].weight == 0)  # zero-initialised last conv


def test_resblock_is_identity_at_init_and_adds_the_embedding():
    block = ResBlock(32, 16, 0.0)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    torch.testing.assert_close(block(x, emb), x)
    _randomise(block)
    h = block.in_layers(x) + block.emb_layers(emb)[:, :, None, None]
    torch.testing.assert_close(block(x, emb), x + block.out_layers(h))


def test_resblock_scale_shift_norm_equation():
    block = ResBlock(32, 16, 0.0, out_channels=64, use_scale_shift_norm=True)
    _randomise(block)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    scale, shift = block.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
    h = block.out_layers[0](block.in_layers(x)) * (1 + scale) + shift
    expected = block.skip_connection(x) + block.out_layers[3](block.out_layers[1](h))
    torch.testing.assert_close(block(x, emb), expected)


@pytest.mark.parametrize("up,down,size", [(True, False, 8), (False, True, 2)])
def test_resblock_up_down(up, down, size):
    block = ResBlock(32, 16, 0.0, up=up, down=down)
    _randomise(block)
    assert block(torch.randn(1, 32, 4, 4), torch.randn(1, 16)).shape == (1, 32, size, size)
    with pytest.raises(ValueError, match="both"):
        ResBlock(32, 16, 0.0, up=True, down=True)


def test_upsample_downsample_shapes_and_names():
    assert set(Upsample(8, True).state_dict()) == {"conv.weight", "conv.bias"}
    assert set(Downsample(8, True, out_channels=16).state_dict()) == {"op.weight", "op.bias"}
    assert Upsample(8, True, out_channels=4)(torch.randn(1, 8, 3, 5)).shape == (1, 4, 6, 10)
    assert Downsample(8, True)(torch.randn(1, 8, 6, 10)).shape == (1, 8, 3, 5)
    assert Downsample(8, False)(torch.randn(1, 8, 6, 10)).shape == (1, 8, 3, 5)
    # dims=3 resamples only the two inner axes.
    assert Upsample(8, True, dims=3)(torch.randn(1, 8, 3, 4, 4)).shape == (1, 8, 3, 8, 8)
    assert Downsample(8, True, dims=3)(torch.randn(1, 8, 3, 4, 4)).shape == (1, 8, 3, 2, 2)
    with pytest.raises(ValueError, match="expects 8 input channels"):
        Upsample(8, True)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="without conv"):
        Downsample(8, False, out_channels=16)


def naive_attention_block(block: AttentionBlock, x: torch.Tensor, new_order: bool) -> torch.Tensor:
    """The original QKV attention written with einsum and q, k scaled by C^-1/4 each."""
    b, c, *spatial = x.shape
    xf = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(xf))
    heads, length = block.num_heads, xf.shape[-1]
    ch = c // heads
    if new_order:
        q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    scale = ch ** -0.25
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)
    return (xf + block.proj_out(a)).reshape(b, c, *spatial)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_naive_reference(new_order):
    block = AttentionBlock(64, num_heads=4, use_new_attention_order=new_order)
    assert set(block.state_dict()) == {"norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj_out.weight",
                                       "proj_out.bias"}
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(block(x), x)  # zero-initialised proj_out
    _randomise(block)
    torch.testing.assert_close(block(x), naive_attention_block(block, x, new_order), atol=1e-5, rtol=1e-5)


def test_attention_block_head_orders_differ_and_head_channels():
    legacy, new = AttentionBlock(64, num_heads=4), AttentionBlock(64, num_heads=4, use_new_attention_order=True)
    _randomise(legacy)
    new.load_state_dict(legacy.state_dict())
    x = torch.randn(1, 64, 3, 3)
    assert not torch.allclose(legacy(x), new(x))  # same weights, different qkv channel layout
    assert AttentionBlock(64, num_head_channels=16).num_heads == 4
    with pytest.raises(ValueError, match="num_head_channels"):
        AttentionBlock(64, num_head_channels=24)


def test_attention_block_checkpoint_same_gradients():
    grads, x0 = [], torch.randn(1, 32, 4, 4)
    for flag in (False, True):
        block = AttentionBlock(32, num_heads=2, use_checkpoint=flag)
        _randomise(block)
        x = x0.clone().requires_grad_()
        block(x).square().sum().backward()
        grads.append([x.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_timestep_embed_sequential_routes_emb_and_context():
    seen = {}

    class NeedsEmb(TimestepBlock):
        def forward(self, x, emb):
            seen["emb"] = emb
            return x

    class Spy(SpatialTransformer):
        def forward(self, x, context=None):
            seen["context"] = context
            return x

    seq = TimestepEmbedSequential(NeedsEmb(), Spy(32, 2, 16, context_dim=8), nn.Identity())
    x, emb, ctx = torch.randn(1, 32, 2, 2), torch.randn(1, 4), torch.randn(1, 3, 8)
    assert seq(x, emb, ctx) is x
    assert seen["emb"] is emb and seen["context"] is ctx
