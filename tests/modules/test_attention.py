"""Tests for the cross-attention transformer blocks (SDPA vs a naive reference, CompVis names, context routing)."""

import pytest
import torch
from torch import nn

from ldm.modules.attention import BasicTransformerBlock, CrossAttention, FeedForward, SpatialTransformer


def naive_cross_attention(attn: CrossAttention, x, context=None, mask=None):
    """softmax(Q K^T * d^-1/2) V written out by hand, as the original einsum code."""
    context = x if context is None else context
    h, d = attn.heads, attn.dim_head

    def split(t):
        b, n, _ = t.shape
        return t.reshape(b, n, h, d).permute(0, 2, 1, 3)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(context)), split(attn.to_v(context))
    sim = q @ k.transpose(-1, -2) * d ** -0.5
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
    out = sim.softmax(dim=-1) @ v
    out = out.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], h * d)
    return attn.to_out(out)


def test_cross_attention_names():
    attn = CrossAttention(32, context_dim=16, heads=2, dim_head=8)
    assert set(attn.state_dict()) == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}
    assert attn.to_k.in_features == 16 and attn.to_q.out_features == 16


def test_cross_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim=16, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 7, 16)
    torch.testing.assert_close(attn(x, ctx), naive_cross_attention(attn, x, ctx), atol=1e-5, rtol=1e-5)
    self_attn = CrossAttention(32, heads=2, dim_head=16).eval()
    torch.testing.assert_close(self_attn(x), naive_cross_attention(self_attn, x), atol=1e-5, rtol=1e-5)


def test_cross_attention_key_mask_matches_naive_reference():
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=8, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = attn(x, ctx, mask=mask)
    torch.testing.assert_close(out, naive_cross_attention(attn, x, ctx, mask), atol=1e-5, rtol=1e-5)
    # Masked keys have no influence.
    ctx2 = ctx.clone()
    ctx2[1, 3:] = 100.0
    torch.testing.assert_close(attn(x, ctx2, mask=mask)[1], out[1])


def test_cross_attention_rejects_wrong_context_dim():
    attn = CrossAttention(32, context_dim=16, heads=2, dim_head=8)
    with pytest.raises(ValueError, match="context_dim"):
        attn(torch.randn(1, 4, 32), torch.randn(1, 3, 12))


def test_feedforward_names():
    assert set(FeedForward(8, glu=True).state_dict()) == {"net.0.proj.weight", "net.0.proj.bias", "net.2.weight",
                                                          "net.2.bias"}
    ff = FeedForward(8, dim_out=4, mult=2, glu=False)
    assert set(ff.state_dict()) == {"net.0.0.weight", "net.0.0.bias", "net.2.weight", "net.2.bias"}
    assert ff(torch.randn(2, 3, 8)).shape == (2, 3, 4)
    assert FeedForward(8, glu=True).net[0].proj.out_features == 2 * 32  # GEGLU doubles the projection


def test_basic_transformer_block_names_and_disable_self_attn():
    block = BasicTransformerBlock(32, n_heads=2, d_head=16, context_dim=24)
    prefixes = {k.split(".")[0] for k in block.state_dict()}
    assert prefixes == {"attn1", "attn2", "ff", "norm1", "norm2", "norm3"}
    assert block.attn1.to_k.in_features == 32 and block.attn2.to_k.in_features == 24
    no_sa = BasicTransformerBlock(32, n_heads=2, d_head=16, context_dim=24, disable_self_attn=True)
    assert no_sa.attn1.to_k.in_features == 24
    assert no_sa(torch.randn(1, 5, 32), torch.randn(1, 3, 24)).shape == (1, 5, 32)


def test_basic_transformer_block_checkpoint_same_gradients():
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, n_heads=2, d_head=8, context_dim=8, checkpoint=False)
    x, ctx = torch.randn(2, 6, 16, requires_grad=True), torch.randn(2, 3, 8, requires_grad=True)
    results = []
    for flag in (False, True):
        block.checkpoint = flag
        block.zero_grad()
        x.grad = ctx.grad = None
        block(x, ctx).square().sum().backward()
        results.append([x.grad.clone(), ctx.grad.clone()] + [p.grad.clone() for p in block.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def _randomise(module: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def test_spatial_transformer_names_zero_init_and_shapes():
    st = SpatialTransformer(32, n_heads=2, d_head=8, depth=2, context_dim=12)
    keys = set(st.state_dict())
    assert {"norm.weight", "proj_in.weight", "proj_out.weight", "transformer_blocks.1.attn2.to_k.weight"} <= keys
    assert st.proj_in.weight.shape == (16, 32, 1, 1) and st.norm.eps == 1e-6
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 5, 12)
    torch.testing.assert_close(st(x, ctx), x)  # zero-initialised proj_out: identity at init
    _randomise(st)
    assert not torch.allclose(st(x, ctx), x)


def test_spatial_transformer_linear_projection():
    st = SpatialTransformer(32, n_heads=2, d_head=8, context_dim=12, use_linear=True)
    assert st.proj_in.weight.shape == (16, 32) and st.proj_out.weight.shape == (32, 16)
    _randomise(st)
    assert st(torch.randn(1, 32, 3, 5), torch.randn(1, 4, 12)).shape == (1, 32, 3, 5)


def test_spatial_transformer_context_list_per_depth_and_none():
    st = SpatialTransformer(32, n_heads=2, d_head=8, depth=2, context_dim=[12, 20]).eval()
    assert st.transformer_blocks[0].attn2.to_k.in_features == 12
    assert st.transformer_blocks[1].attn2.to_k.in_features == 20
    _randomise(st)
    x, c1, c2 = torch.randn(1, 32, 4, 4), torch.randn(1, 3, 12), torch.randn(1, 6, 20)
    h = st.proj_in(st.norm(x)).flatten(2).transpose(1, 2)
    h = st.transformer_blocks[1](st.transformer_blocks[0](h, c1), c2)
    expected = st.proj_out(h.transpose(1, 2).reshape(1, 16, 4, 4)) + x
    torch.testing.assert_close(st(x, [c1, c2]), expected)
    with pytest.raises(ValueError, match="context entries"):
        st(x, [c1, c2, c2])
    # No context_dim: both attentions are self-attention and context=None works.
    self_only = SpatialTransformer(32, n_heads=2, d_head=8)
    assert self_only(x).shape == x.shape


def test_spatial_transformer_channels_last_and_bf16_autocast():
    st = SpatialTransformer(32, n_heads=2, d_head=16, context_dim=8).eval()
    _randomise(st)
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 8)
    ref = st(x, ctx)
    torch.testing.assert_close(st(x.contiguous(memory_format=torch.channels_last), ctx), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st(x, ctx)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("context_dim", [None, 16], ids=["self-attention", "cross-attention"])
def test_gradients_match_the_naive_reference(context_dim):
    """Input, context and every projection's gradients through SDPA equal those of the written-out attention."""
    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim=context_dim, heads=4, dim_head=8)
    x = torch.randn(2, 10, 32, requires_grad=True)
    ctx = None if context_dim is None else torch.randn(2, 7, context_dim, requires_grad=True)
    grads = []
    for fn in (attn, lambda x, ctx: naive_cross_attention(attn, x, ctx)):
        attn.zero_grad()
        fn(x, ctx).square().sum().backward()
        inputs = [x] + ([ctx] if ctx is not None else [])
        grads.append([t.grad.clone() for t in inputs] + [p.grad.clone() for p in attn.parameters()])
        for t in inputs:
            t.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
