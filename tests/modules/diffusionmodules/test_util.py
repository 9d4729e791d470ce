"""Tests for the U-Net helpers: timestep embedding, float32 GroupNorm, layer factories, checkpointing."""

import math

import pytest
import torch
from torch import nn

from ldm.modules.diffusionmodules import util
from ldm.modules.diffusionmodules.util import (GroupNorm32, _Float32GroupNorm, avg_pool_nd, checkpoint, conv_nd,
                                               mean_flat, normalization, timestep_embedding, zero_module)


def test_timestep_embedding_closed_form_cos_then_sin():
    t = torch.tensor([0, 1, 17, 999])
    dim, half = 8, 4
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    for row, tv in enumerate(t.tolist()):
        for i in range(half):
            freq = math.exp(-math.log(10000) * i / half)
            assert emb[row, i].item() == pytest.approx(math.cos(tv * freq), abs=1e-5)
            assert emb[row, half + i].item() == pytest.approx(math.sin(tv * freq), abs=1e-5)
    # t = 0 -> [1, ..., 1, 0, ..., 0]: cos first.
    assert torch.equal(emb[0], torch.tensor([1.0] * half + [0.0] * half))


def test_timestep_embedding_fractional_odd_dim_max_period_and_repeat():
    t = torch.tensor([2.5, 7.0])
    emb = timestep_embedding(t, 7, max_period=100)
    assert emb.shape == (2, 7)
    assert torch.all(emb[:, -1] == 0)  # odd dim: trailing zero column
    freq = math.exp(-math.log(100) * 1 / 3)
    assert emb[0, 1].item() == pytest.approx(math.cos(2.5 * freq), abs=1e-6)
    assert emb[0, 4].item() == pytest.approx(math.sin(2.5 * freq), abs=1e-6)
    rep = timestep_embedding(t, 5, repeat_only=True)
    assert torch.equal(rep, t[:, None].expand(2, 5))


def test_timestep_embedding_rejects_non_1d():
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.zeros(2, 1), 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_groupnorm32_computes_in_float32_and_casts_back(dtype):
    torch.manual_seed(0)
    norm = normalization(64)
    assert isinstance(norm, GroupNorm32) and norm.num_groups == 32 and norm.eps == 1e-5
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = (torch.randn(2, 64, 4, 4) * 50 + 300).to(dtype)  # large mean: low-precision statistics would be off
    out = norm(x)
    assert out.dtype == dtype
    ref = nn.functional.group_norm(x.float(), 32, norm.weight, norm.bias, 1e-5).to(dtype)
    # CPU runs torch's mixed-precision kernel (float32 accumulation): the same numbers but for 1-ulp roundings.
    torch.testing.assert_close(out, ref, rtol=torch.finfo(dtype).eps, atol=1e-3)
    exact = _Float32GroupNorm.apply(x, norm.weight, norm.bias, 32, 1e-5)  # the path other devices take
    torch.testing.assert_close(exact, ref, rtol=0, atol=0)
    norm.to(dtype)  # half parameters too (use_fp16 torso)
    assert norm(x).dtype == dtype


def test_normalization_rejects_channels_not_divisible_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        normalization(48)


def test_zero_module_and_layer_factories():
    conv = zero_module(conv_nd(2, 3, 5, 3, padding=1))
    assert all(torch.all(p == 0) for p in conv.parameters())
    assert isinstance(conv_nd(1, 2, 2, 1), nn.Conv1d) and isinstance(conv_nd(3, 2, 2, 1), nn.Conv3d)
    assert isinstance(avg_pool_nd(2, kernel_size=2), nn.AvgPool2d)
    assert isinstance(util.linear(3, 4), nn.Linear)
    with pytest.raises(ValueError, match="dims=4"):
        conv_nd(4, 2, 2, 1)
    assert torch.equal(mean_flat(torch.arange(6.0).reshape(2, 3)), torch.tensor([1.0, 4.0]))


def test_checkpoint_same_outputs_and_gradients():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))
    x = torch.randn(3, 6, requires_grad=True)
    grads = []
    for flag in (False, True):
        layer.zero_grad()
        x.grad = None
        out = checkpoint(layer, (x,), layer.parameters(), flag)
        out.square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_checkpoint_under_no_grad_runs_directly():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        out = checkpoint(layer, (torch.randn(1, 2),), layer.parameters(), True)
    assert not out.requires_grad


def test_diffusion_names_are_forwarded_lazily():
    from ldm.diffusion import schedule

    assert util.make_beta_schedule is schedule.make_beta_schedule
    assert util.extract_into_tensor is schedule.extract_into_tensor
    with pytest.raises(AttributeError):
        util.no_such_name  # noqa: B018


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("path", ["module", "float32_function"])
def test_groupnorm32_low_precision_gradients_equal_float32_reference(dtype, channels_last, path):
    torch.manual_seed(0)
    norm = normalization(64)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x0 = (torch.randn(2, 64, 4, 4) * 3 + 1).to(dtype)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 64, 4, 4).to(dtype)

    x = x0.clone().requires_grad_()
    out = norm(x) if path == "module" else _Float32GroupNorm.apply(x, norm.weight, norm.bias, 32, 1e-5)
    out.backward(grad)
    ours = [out.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()]

    norm.zero_grad()
    xr = x0.clone().requires_grad_()
    ref = nn.functional.group_norm(xr.float(), 32, norm.weight, norm.bias, 1e-5).to(dtype)
    ref.backward(grad)
    for a, b in zip(ours, [ref.detach(), xr.grad, norm.weight.grad, norm.bias.grad]):
        assert a.dtype == b.dtype
        if path == "float32_function":  # what CUDA runs: bit-identical to the float32 reference
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:  # torch's CPU mixed-precision kernel: float32 accumulation, rare 1-ulp roundings
            tol = torch.finfo(a.dtype).eps
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


def test_groupnorm32_keeps_the_low_precision_input_for_backward():
    norm = normalization(32)
    x = torch.randn(2, 32, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        norm(x)
    big_float32 = [t for t in saved if t.dtype == torch.float32 and t.numel() >= x.numel()]
    assert not big_float32 and any(t.dtype == torch.bfloat16 and t.numel() == x.numel() for t in saved)
