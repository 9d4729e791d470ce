"""Tests for UNetModel: CompVis state_dict names, SD v1 key count, shapes per conditioning mode, checkpointing."""

import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import AttentionBlock, ResBlock, UNetModel
from ldm.util import instantiate_from_config

SMALL = dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
             attention_resolutions=(2,), channel_mult=(1, 2))
SMALL_XATTN = dict(SMALL, use_spatial_transformer=True, context_dim=16, num_heads=2)
SD_V1 = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
             num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
             transformer_depth=1, context_dim=768, use_checkpoint=True, legacy=False)


def _randomise(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give every parameter (including the zero-initialised ones) random values so outputs and grads are non-trivial."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def _resblock(prefix, skip=False):
    names = [f"{prefix}.in_layers.0", f"{prefix}.in_layers.2", f"{prefix}.emb_layers.1", f"{prefix}.out_layers.0",
             f"{prefix}.out_layers.3"] + ([f"{prefix}.skip_connection"] if skip else [])
    return [f"{n}.{w}" for n in names for w in ("weight", "bias")]


def _transformer(prefix):
    b = f"{prefix}.transformer_blocks.0"
    keys = [f"{b}.attn{i}.to_{q}.weight" for i in (1, 2) for q in "qkv"]
    with_bias = [f"{prefix}.norm", f"{prefix}.proj_in", f"{prefix}.proj_out", f"{b}.attn1.to_out.0",
                 f"{b}.attn2.to_out.0",
                 f"{b}.ff.net.0.proj", f"{b}.ff.net.2", f"{b}.norm1", f"{b}.norm2", f"{b}.norm3"]
    return keys + [f"{n}.{w}" for n in with_bias for w in ("weight", "bias")]


def _wb(*names):
    return [f"{n}.{w}" for n in names for w in ("weight", "bias")]


def test_state_dict_names_match_compvis_layout():
    # channel_mult (1, 2), one ResBlock per level, attention at ds=2 only, middle block always with attention.
    expected = (
        _wb("time_embed.0", "time_embed.2", "input_blocks.0.0")
        + _resblock("input_blocks.1.0")                                   # level 0 (ds=1): no attention
        + _wb("input_blocks.2.0.op")                                      # Downsample conv
        + _resblock("input_blocks.3.0", skip=True) + _transformer("input_blocks.3.1")  # level 1 (ds=2)
        + _resblock("middle_block.0") + _transformer("middle_block.1") + _resblock("middle_block.2")
        + _resblock("output_blocks.0.0", skip=True) + _transformer("output_blocks.0.1")
        + _resblock("output_blocks.1.0", skip=True) + _transformer("output_blocks.1.1")
        + _wb("output_blocks.1.2.conv")                                   # Upsample after the attention: `.2`
        + _resblock("output_blocks.2.0", skip=True) + _resblock("output_blocks.3.0", skip=True)
        + _wb("out.0", "out.2")
    )
    model = UNetModel(**SMALL_XATTN)
    assert sorted(model.state_dict()) == sorted(expected)
    # 64 channels at level 1 = 2 heads x 32; context_dim 16.
    assert model.state_dict()["input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"].shape == (64, 16)
    assert model.state_dict()["middle_block.1.proj_in.weight"].shape == (64, 64, 1, 1)
    assert model.state_dict()["out.2.weight"].shape == (4, 32, 3, 3)


def test_upsample_index_without_attention_and_with_two_resblocks():
    model = UNetModel(**dict(SMALL_XATTN, num_res_blocks=2, attention_resolutions=(1,)))
    keys = model.state_dict()
    assert "input_blocks.3.0.op.weight" in keys
    assert "input_blocks.4.1.proj_in.weight" not in keys  # ds=2 has no attention here
    assert "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "output_blocks.2.1.conv.weight" in keys  # no attention at level 1: Upsample at `.1`


def test_stable_diffusion_v1_key_count_on_meta_device():
    with torch.device("meta"):
        model = UNetModel(**SD_V1)
    sd = model.state_dict()
    assert len(sd) == 686
    assert sum(p.numel() for p in model.parameters()) == 859_520_964
    assert sd["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert model.input_blocks[1][1].transformer_blocks[0].attn1.heads == 8
    assert sd["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd["output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)


def test_builds_from_a_compvis_style_omegaconf_config():
    cfg = OmegaConf.create({"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": dict(SMALL_XATTN, attention_resolutions=[2], channel_mult=[1, 2],
                                           context_dim=16)})
    model = instantiate_from_config(cfg)
    assert isinstance(model, UNetModel) and model.attention_resolutions == (2,)


def _run(model, batch=2, size=8, **kw):
    x = torch.randn(batch, model.in_channels, size, size)
    return model(x, torch.randint(0, 1000, (batch,)), **kw)


def test_plain_unet_without_attention_and_with_attention_blocks():
    plain = UNetModel(**dict(SMALL, attention_resolutions=(), num_heads=2))
    assert not any(isinstance(m, (AttentionBlock, SpatialTransformer)) for m in plain.input_blocks.modules())
    assert _run(plain).shape == (2, 4, 8, 8)
    adm = UNetModel(**dict(SMALL, num_heads=2))
    assert isinstance(adm.input_blocks[3][1], AttentionBlock) and isinstance(adm.middle_block[1], AttentionBlock)
    assert set(adm.middle_block[1].state_dict()) == set(_wb("norm", "qkv", "proj_out"))
    _randomise(adm)
    assert _run(adm).shape == (2, 4, 8, 8)


def test_crossattn_model_uses_context():
    torch.manual_seed(0)
    model = UNetModel(**SMALL_XATTN).eval()
    _randomise(model)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 500])
    out1 = model(x, t, context=torch.randn(2, 7, 16))
    out2 = model(x, t, context=torch.randn(2, 7, 16))
    assert out1.shape == (2, 4, 8, 8) and not torch.allclose(out1, out2)
    assert model(x, torch.tensor(5), context=torch.randn(2, 3, 16)).shape == (2, 4, 8, 8)  # scalar t broadcasts


def test_concat_style_in_channels():
    model = UNetModel(**dict(SMALL, in_channels=9, out_channels=4, num_heads=2))
    assert _run(model).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]))


def test_class_conditional():
    model = UNetModel(**dict(SMALL, num_classes=10, num_heads=2)).eval()
    assert model.label_emb.weight.shape == (10, 128)
    _randomise(model)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    a, b = model(x, t, y=torch.tensor([1, 2])), model(x, t, y=torch.tensor([3, 4]))
    assert a.shape == (2, 4, 8, 8) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with pytest.raises(ValueError, match="class-conditional"):
        UNetModel(**dict(SMALL, num_heads=2))(x, t, y=torch.tensor([1, 2]))


def test_continuous_and_sequential_label_embeddings():
    cont = UNetModel(**dict(SMALL, num_classes="continuous", num_heads=2))
    assert cont.label_emb.weight.shape == (128, 1)
    assert _run(cont, y=torch.rand(2, 1)).shape == (2, 4, 8, 8)
    seq = UNetModel(**dict(SMALL, num_classes="sequential", adm_in_channels=12, num_heads=2))
    assert {"label_emb.0.0.weight", "label_emb.0.2.weight"} <= set(seq.state_dict())
    assert _run(seq, y=torch.randn(2, 12)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="adm_in_channels"):
        UNetModel(**dict(SMALL, num_classes="sequential", num_heads=2))


def test_scale_shift_norm_and_resblock_updown():
    model = UNetModel(**dict(SMALL, use_scale_shift_norm=True, resblock_updown=True, num_heads=2))
    down, up = model.input_blocks[2][0], model.output_blocks[1][2]
    assert isinstance(down, ResBlock) and isinstance(up, ResBlock)
    assert model.input_blocks[1][0].emb_layers[1].out_features == 2 * 32  # scale and shift
    _randomise(model)
    assert _run(model).shape == (2, 4, 8, 8)


def test_num_head_channels_sets_heads_per_level():
    model = UNetModel(**dict(SMALL_XATTN, num_heads=-1, num_head_channels=16))
    block = model.input_blocks[3][1].transformer_blocks[0].attn1
    assert (block.heads, block.dim_head) == (64 // 16, 16)
    adm = UNetModel(**dict(SMALL, num_head_channels=16))
    assert adm.middle_block[1].num_heads == 4
    _randomise(model)
    assert _run(model, context=torch.randn(2, 3, 16)).shape == (2, 4, 8, 8)


def test_legacy_head_semantics_for_attention_blocks():
    # legacy=True, num_head_channels=-1: the output blocks use num_heads_upsample, as the original.
    legacy = UNetModel(**dict(SMALL, num_heads=2, num_heads_upsample=4, legacy=True))
    assert legacy.input_blocks[3][1].num_heads == 2 and legacy.output_blocks[0][1].num_heads == 4
    # legacy=False passes dim_head = ch // num_heads, so num_heads wins everywhere.
    new = UNetModel(**dict(SMALL, num_heads=2, num_heads_upsample=4, legacy=False))
    assert new.output_blocks[0][1].num_heads == 2


def test_sd2_options_linear_projection_attention_counts_and_disabled_self_attention():
    model = UNetModel(**dict(SMALL_XATTN, num_res_blocks=2, attention_resolutions=(1, 2),
                             use_linear_in_transformer=True,
                             num_attention_blocks=[1, 2], disable_self_attentions=[True, False],
                             disable_middle_self_attn=True, transformer_depth=2))
    keys = model.state_dict()
    assert keys["input_blocks.1.1.proj_in.weight"].dim() == 2  # Linear projections
    assert "input_blocks.2.1.proj_in.weight" not in keys  # only 1 attention block at level 0
    assert "input_blocks.5.1.transformer_blocks.1.attn1.to_q.weight" in keys  # depth 2
    assert model.input_blocks[1][1].transformer_blocks[0].attn1.to_k.in_features == 16  # self-attention disabled
    assert model.middle_block[1].transformer_blocks[0].attn1.to_k.in_features == 16
    assert model.input_blocks[4][1].transformer_blocks[0].attn1.to_k.in_features == 64
    _randomise(model)
    assert _run(model, context=torch.randn(2, 3, 16)).shape == (2, 4, 8, 8)


def test_codebook_prediction_head():
    model = UNetModel(**dict(SMALL, num_heads=2, n_embed=17))
    assert _run(model).shape == (2, 17, 8, 8)


def test_zero_initialised_output_gives_zero_at_init():
    model = UNetModel(**SMALL_XATTN)
    out = _run(model, context=torch.randn(2, 3, 16))
    assert torch.count_nonzero(out) == 0


def test_use_checkpoint_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model = UNetModel(**dict(SMALL_XATTN, use_checkpoint=flag, num_heads=2))
        _randomise(model)
        torch.manual_seed(0)
        x, ctx = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 3, 16)
        model(x, torch.tensor([1, 900]), context=ctx).square().mean().backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    assert all(g is not None for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_use_fp16_torso():
    model = UNetModel(**dict(SMALL_XATTN, use_fp16=True))
    _randomise(model)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([7]), torch.randn(1, 3, 16)
    with pytest.raises(RuntimeError, match="autocast"):
        model(x, t, context=ctx)
    ref = UNetModel(**SMALL_XATTN)
    ref.load_state_dict(model.state_dict())
    model.convert_to_fp16()
    assert model.input_blocks[3][1].proj_in.weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32 and model.out[2].weight.dtype == torch.float32
    out = model(x, t, context=ctx)
    assert out.dtype == torch.float32
    expected = ref(x, t, context=ctx)
    assert (out - expected).abs().max() < 0.02 * expected.abs().max()


def test_bf16_autocast_and_channels_last_forward():
    model = UNetModel(**SMALL_XATTN).eval()
    _randomise(model)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.randn(2, 3, 16)
    ref = model(x, t, context=ctx)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last), t, context=ctx), ref,
                               atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, context=ctx)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="use_spatial_transformer"):
        UNetModel(**dict(SMALL, num_heads=2, context_dim=16))
    with pytest.raises(ValueError, match="num_heads or num_head_channels"):
        UNetModel(**SMALL)
    with pytest.raises(ValueError, match="num_attention_blocks"):
        UNetModel(**dict(SMALL, num_heads=2, num_attention_blocks=[2, 2]))
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetModel(**dict(SMALL, num_heads=2, num_res_blocks=[1, 1, 1]))
    with pytest.raises(NotImplementedError, match="dims=2"):
        UNetModel(**dict(SMALL_XATTN, dims=3))
    with pytest.raises(ValueError, match="timesteps"):
        UNetModel(**dict(SMALL, num_heads=2))(torch.randn(1, 4, 8, 8))


def test_one_dimensional_unet():
    model = UNetModel(**dict(SMALL, dims=1, num_heads=2))
    _randomise(model)
    assert model(torch.randn(2, 4, 16), torch.tensor([1, 2])).shape == (2, 4, 16)


@pytest.mark.parametrize("attention", [dict(use_spatial_transformer=True, context_dim=16), dict()])
def test_norm_num_groups_reaches_every_groupnorm_and_keeps_the_state_dict(attention):
    config = dict(SMALL, num_heads=2, **attention)
    default, narrow = UNetModel(**config), UNetModel(**config, norm_num_groups=8)
    norms = [m for m in narrow.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {8}
    assert {m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    narrow.load_state_dict(default.state_dict())  # same names and shapes: only the grouping differs
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    context = torch.randn(2, 5, 16) if attention else None
    assert narrow(x, t, context=context).shape == x.shape
    with pytest.raises(ValueError, match="GroupNorm with 24 groups needs channels divisible by 24, got 32"):
        UNetModel(**config, norm_num_groups=24)


@pytest.mark.parametrize("config", [dict(SMALL_XATTN, use_checkpoint=True), dict(SMALL, num_heads=2, legacy=True)],
                         ids=["spatial-transformer", "attention-block"])
def test_channels_last_input_stays_channels_last_with_the_same_numbers(config):
    """Every block keeps a channels_last input in channels_last (mixed layouts make every later op copy), and the
    numbers (output, input and parameter gradients) are those of the NCHW run."""
    model = UNetModel(**config)
    _randomise(model)
    context = torch.randn(2, 3, 16) if "context_dim" in config else None
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.zero_grad()
        torch.manual_seed(0)
        x = torch.randn(2, 4, 8, 8).contiguous(memory_format=fmt).requires_grad_(True)
        out = model(x, torch.tensor([1, 900]), context=context)
        assert out.is_contiguous(memory_format=fmt)
        out.square().mean().backward()
        results.append([out.detach(), x.grad] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
