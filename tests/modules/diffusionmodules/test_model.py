import pytest
import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules.model import AttnBlock, Decoder, Downsample, Encoder

# The paper's first-stage architectures (ch shrunk for speed; the layout does not depend on ch).
ARCHS = {
    4: dict(z_channels=3, ch_mult=[1, 2, 4], attn_resolutions=[]),
    8: dict(z_channels=4, ch_mult=[1, 2, 4, 4], attn_resolutions=[]),
    16: dict(z_channels=16, ch_mult=[1, 1, 2, 2, 4], attn_resolutions=[16]),
    32: dict(z_channels=64, ch_mult=[1, 1, 2, 2, 4, 4], attn_resolutions=[16, 8]),
}


def ddconfig(f, resolution=64, ch=32):
    return dict(double_z=True, resolution=resolution, in_channels=3, out_ch=3, ch=ch, num_res_blocks=1, dropout=0.0,
                **ARCHS[f])


@pytest.mark.parametrize("f", sorted(ARCHS))
def test_encoder_decoder_shapes(f):
    cfg = ddconfig(f)
    enc, dec = Encoder(**cfg), Decoder(**cfg)
    x = torch.randn(2, 3, 64, 64)
    moments = enc(x)
    z = cfg["z_channels"]
    assert moments.shape == (2, 2 * z, 64 // f, 64 // f)
    out = dec(torch.randn(2, z, 64 // f, 64 // f))
    assert out.shape == (2, 3, 64, 64)
    assert dec.z_shape == (1, z, 64 // f, 64 // f)


def test_compvis_state_dict_names_f8():
    cfg = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
               num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    enc, dec = Encoder(**cfg), Decoder(**cfg)
    enc_keys, dec_keys = set(enc.state_dict()), set(dec.state_dict())
    for key in ["conv_in.weight", "down.0.block.0.norm1.weight", "down.0.block.1.conv2.bias",
                "down.1.block.0.nin_shortcut.weight", "down.0.downsample.conv.weight", "mid.block_1.norm1.weight",
                "mid.attn_1.q.weight", "mid.attn_1.proj_out.bias", "mid.block_2.conv2.weight", "norm_out.weight",
                "conv_out.weight"]:
        assert key in enc_keys, key
    assert "down.3.downsample.conv.weight" not in enc_keys
    for key in ["conv_in.weight", "mid.attn_1.k.weight", "up.3.upsample.conv.weight", "up.3.block.2.conv1.weight",
                "up.1.block.0.nin_shortcut.weight", "up.0.block.2.norm2.bias", "norm_out.bias", "conv_out.weight"]:
        assert key in dec_keys, key
    assert "up.0.upsample.conv.weight" not in dec_keys
    # `up` is indexed by resolution level: level 3 (lowest resolution) has the most channels.
    assert dec.state_dict()["up.3.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert dec.state_dict()["up.0.block.0.conv1.weight"].shape == (128, 256, 3, 3)
    assert dec.state_dict()["conv_out.weight"].shape == (3, 128, 3, 3)
    assert enc.state_dict()["conv_out.weight"].shape == (8, 512, 3, 3)
    # Known parameter count of the SD / LDM kl-f8 encoder + decoder (83.65M incl. quant convs; 34.16M + 49.49M).
    n = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in dec.parameters())
    assert n == 34163592 + 49490179


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 6, 5)
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, -1).permute(0, 2, 1)
    k = k.reshape(b, c, -1)
    w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)
    out = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    ref = x + block.proj_out(out)
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


def test_downsample_pads_right_and_bottom():
    down = Downsample(1, with_conv=True)
    torch.nn.init.zeros_(down.conv.bias)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left input of each 3x3 window
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(down(x), x[:, :, ::2, ::2])
    assert Downsample(1, with_conv=False)(x).shape == (1, 1, 2, 2)
    torch.testing.assert_close(Downsample(1, with_conv=False)(x), F.avg_pool2d(x, 2))


def test_bad_shapes_raise_clear_errors():
    enc = Encoder(**ddconfig(8))
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="not divisible"):
        Encoder(**ddconfig(8, resolution=60))


def test_norm_num_groups_sets_every_groupnorm_and_keeps_the_state_dict():
    """Default 32 as the original; a narrow model may use fewer groups (same parameters, so checkpoints still load)."""
    cfg = ddconfig(8)
    default, narrow = Encoder(**cfg), Encoder(**cfg, norm_num_groups=8)
    groups = {m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {32}
    for net in (narrow, Decoder(**cfg, norm_num_groups=8)):
        assert {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    narrow.load_state_dict(default.state_dict())
    with pytest.raises(ValueError, match="norm_num_groups=24"):
        Encoder(**cfg, norm_num_groups=24)
