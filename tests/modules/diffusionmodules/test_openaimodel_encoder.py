"""Tests for EncoderUNetModel (ADM classifier half U-Net) and its attention pooling head."""

import pytest
import torch

from ldm.modules.diffusionmodules.openaimodel import AttentionPool2d, EncoderUNetModel

CFG = dict(image_size=8, in_channels=4, model_channels=32, out_channels=5, num_res_blocks=1,
           attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16)


def _randomise(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_encoder_unet_output_shapes(pool):
    model = EncoderUNetModel(**CFG, pool=pool)
    _randomise(model)
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_encoder_unet_names():
    keys = set(EncoderUNetModel(**CFG, pool="attention").state_dict())
    assert {"time_embed.0.weight", "input_blocks.2.0.op.weight", "input_blocks.3.1.qkv.weight",
            "middle_block.1.proj_out.weight", "out.0.weight", "out.2.positional_embedding",
            "out.2.qkv_proj.weight", "out.2.c_proj.weight"} <= keys
    assert "out.3.weight" in EncoderUNetModel(**CFG, pool="adaptive").state_dict()


def test_adaptive_pool_is_zero_at_init_and_bad_pool_raises():
    assert torch.count_nonzero(EncoderUNetModel(**CFG)(torch.randn(1, 4, 8, 8), torch.tensor([3]))) == 0
    with pytest.raises(ValueError, match="pool"):
        EncoderUNetModel(**CFG, pool="max")


def test_attention_pool_checks_positions():
    pool = AttentionPool2d(4, 32, 16, output_dim=3)
    assert pool(torch.randn(2, 32, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="positions"):
        pool(torch.randn(2, 32, 5, 5))
