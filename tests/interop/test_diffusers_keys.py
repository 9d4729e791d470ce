"""The generic CompVis <-> diffusers key and config mapping: exact round trips and equal outputs for several shapes."""
import diffusers
import pytest
import torch

from ldm.diffusion.schedule import DiffusionSchedule
from ldm.interop.diffusers_config import (schedule_from_diffusers, schedule_to_diffusers, unet_from_diffusers,
                                          unet_to_diffusers, vae_from_diffusers, vae_to_diffusers)
from ldm.interop.diffusers_keys import (KeyMapError, merge_qkv, split_qkv, unet_key_map, unet_layout,
                                        vae_key_map)
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.util import instantiate_from_config

BASE = dict(image_size=8, in_channels=4, out_channels=4, model_channels=16, norm_num_groups=8)
UNETS = {
    # SD-like: 2 levels, 1 block, conv proj_in, fixed heads
    "text_2lvl_conv": dict(BASE, num_res_blocks=1, attention_resolutions=[2], channel_mult=[1, 2], num_heads=2,
                           use_spatial_transformer=True, context_dim=24),
    # SD2-like: 3 levels, 2 blocks, linear proj_in, channels per head, per-level depth, inpainting's 9 inputs
    "inpaint_3lvl_linear": dict(BASE, in_channels=9, num_res_blocks=2, attention_resolutions=[1, 4],
                                channel_mult=[1, 2, 2], num_head_channels=8, use_spatial_transformer=True,
                                context_dim=24, use_linear_in_transformer=True, transformer_depth=[1, 2, 1]),
    # 4 levels, SD 2.x only-cross-attention on some levels
    "text_4lvl_only_cross": dict(BASE, num_res_blocks=1, attention_resolutions=[1, 2, 4], channel_mult=[1, 1, 2, 2],
                                 num_heads=2, use_spatial_transformer=True, context_dim=24,
                                 disable_self_attentions=[True, False, False, False]),
    # class-conditional ADM UNet (label_emb): UNet2DModel, scale-shift norm, ResBlock resampling
    "class_adm_updown": dict(BASE, in_channels=3, out_channels=3, num_res_blocks=1, attention_resolutions=[2],
                             channel_mult=[1, 2, 2], num_head_channels=8, num_classes=5, use_scale_shift_norm=True,
                             resblock_updown=True),
    # unconditional ADM UNet, legacy per-head qkv layout with 2 heads
    "uncond_adm_legacy": dict(BASE, num_res_blocks=2, attention_resolutions=[2], channel_mult=[1, 2], num_heads=2),
    # adm label embedding (SDXL-style "sequential") on a cross-attention UNet
    "text_adm_vector": dict(BASE, num_res_blocks=1, attention_resolutions=[2], channel_mult=[1, 2], num_heads=2,
                            use_spatial_transformer=True, context_dim=24, num_classes="sequential",
                            adm_in_channels=12),
}


def _inputs(params, g):
    x = torch.randn(2, params["in_channels"], 8, 8, generator=g)
    ours, theirs = {}, {}
    if params.get("context_dim"):
        ours["context"] = theirs["encoder_hidden_states"] = torch.randn(2, 5, params["context_dim"], generator=g)
    if isinstance(params.get("num_classes"), int):
        ours["y"] = theirs["class_labels"] = torch.tensor([1, 4])
    elif params.get("num_classes") == "sequential":
        ours["y"] = theirs["class_labels"] = torch.randn(2, params["adm_in_channels"], generator=g)
    return x, ours, theirs


@pytest.mark.parametrize("name", sorted(UNETS))
def test_unet_round_trip_and_same_outputs(name, tiny):
    params = UNETS[name]
    ours = tiny.randomize(UNetModel(**params).eval())
    cls, config = unet_to_diffusers(params)
    assert cls == ("UNet2DConditionModel" if params.get("use_spatial_transformer") else "UNet2DModel")
    theirs = getattr(diffusers, cls)(**config).eval()
    keymap = unet_key_map(unet_layout(params))
    converted = keymap.to_diffusers(ours.state_dict())
    theirs.load_state_dict(converted, strict=True)  # every diffusers key filled, shapes equal
    back = keymap.to_ours(converted)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())  # exact

    g = torch.Generator().manual_seed(1)
    x, kw_ours, kw_theirs = _inputs(params, g)
    t = torch.tensor([3, 70])
    with torch.no_grad():
        out = ours(x, t, **kw_ours)
        diff = (out - theirs(x, t, **kw_theirs).sample).abs().max().item()
    print(f"UNet {name}: max |ours - diffusers| = {diff:.2e} (output max {out.abs().max():.2f})")
    assert out.abs().max() > 0.1  # a real signal, not zeros
    assert diff <= 1e-5

    # diffusers config -> our params builds the same architecture (same keys and shapes)
    rebuilt = UNetModel(**unet_from_diffusers(cls, dict(theirs.config))).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in ours.state_dict().items()}


@pytest.mark.parametrize("kind,dd", [("kl", {}), ("kl", dict(ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[])),
                                     ("vq", dict(ch_mult=[1, 1, 2], attn_resolutions=[4]))])
def test_autoencoder_round_trip_and_same_outputs(kind, dd, tiny):
    config = tiny.first_stage_config(kind, **dd)
    ours = tiny.randomize(instantiate_from_config(config).eval(), std=0.05)
    cls, dconfig = vae_to_diffusers(config["target"], config["params"], scaling_factor=0.3)
    theirs = getattr(diffusers, cls)(**dconfig).eval()
    keymap = vae_key_map(config["params"]["ddconfig"])
    own = {k: v for k, v in ours.state_dict().items() if not k.startswith("loss.")}
    converted = keymap.to_diffusers(own)
    theirs.load_state_dict(converted, strict=True)
    back = keymap.to_ours(converted)
    assert back.keys() == own.keys() and all(torch.equal(back[k], v) for k, v in own.items())

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        if kind == "kl":
            z = ours.encode(x).mean
            enc = (z - theirs.encode(x).latent_dist.mean).abs().max().item()
            dec = (ours.decode(z) - theirs.decode(z).sample).abs().max().item()
        else:
            z = ours.encode_to_prequant(x)
            enc = (z - theirs.encode(x).latents).abs().max().item()
            dec = (ours.decode(ours.quantize(z)[0]) - theirs.decode(z).sample).abs().max().item()
    print(f"{cls} {dd}: encode {enc:.2e}, decode {dec:.2e} (latent max {z.abs().max():.2f})")
    assert z.abs().max() > 0.1
    assert enc <= 1e-5 and dec <= 1e-5
    back_config = vae_from_diffusers(cls, dict(theirs.config))
    rebuilt = instantiate_from_config(back_config).state_dict()
    assert {k: v.shape for k, v in rebuilt.items() if not k.startswith("loss.")} == {k: v.shape for k, v in own.items()}
    assert back_config["target"] == (tiny.KL if kind == "kl" else tiny.VQ)


@pytest.mark.parametrize("legacy", [True, False])
def test_qkv_split_merge_are_inverse_and_order_heads(legacy):
    weight = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(24, 8, 1)
    bias = torch.arange(24, dtype=torch.float32)
    for t in (weight, bias):
        parts = split_qkv(t, heads=2, legacy=legacy)
        assert torch.equal(merge_qkv(parts, heads=2, legacy=legacy), t)
    q_bias = split_qkv(bias, heads=2, legacy=legacy)[0]
    # legacy: per head [q, k, v] (rows 0-3 are head 0's q, rows 12-15 head 1's q); new order: q of all heads first
    assert q_bias.tolist() == (list(range(4)) + list(range(12, 16)) if legacy else list(range(8)))


@pytest.mark.parametrize("extra,key", [
    (dict(num_attention_blocks=[1, 0]), "num_attention_blocks"),
    (dict(disable_middle_self_attn=True), "disable_middle_self_attn"),
    (dict(num_classes="continuous"), "num_classes"),
    (dict(resblock_updown=True), "resblock_updown"),
])
def test_unrepresentable_unets_name_the_key(extra, key):
    with pytest.raises(KeyMapError, match=key):
        unet_to_diffusers(dict(UNETS["text_2lvl_conv"], **extra))


def test_unknown_keys_are_named(tiny):
    keymap = unet_key_map(unet_layout(UNETS["text_2lvl_conv"]))
    with pytest.raises(KeyMapError, match="'id_predictor.0.weight'"):
        keymap.to_diffusers({"id_predictor.0.weight": torch.zeros(1)})
    with pytest.raises(KeyMapError, match="'add_embedding.linear_1.weight'"):
        keymap.to_ours({"add_embedding.linear_1.weight": torch.zeros(1)})
    with pytest.raises(KeyMapError, match="z_channels"):
        vae_to_diffusers(tiny.KL, {"embed_dim": 3, "ddconfig": tiny.TINY_DD})
    with pytest.raises(KeyMapError, match="time_embedding_type"):
        unet_from_diffusers("UNet2DModel", {"time_embedding_type": "fourier", "block_out_channels": [8]})


@pytest.mark.parametrize("params", [
    dict(beta_schedule="linear", linear_start=0.00085, linear_end=0.012),          # SD's scaled_linear
    dict(beta_schedule="sqrt_linear", linear_start=1e-4, linear_end=2e-2),         # diffusers' linear
    dict(beta_schedule="cosine"),                                                  # squaredcos_cap_v2
    dict(beta_schedule="linear", zero_terminal_snr=True, parameterization="v"),
    dict(beta_schedule="sqrt"),                                                    # no name there: trained_betas
])
def test_schedule_equals_diffusers_scheduler(params):
    schedule = DiffusionSchedule.from_config(params.get("beta_schedule", "linear"), 1000,
                                             params.get("linear_start", 1e-4), params.get("linear_end", 2e-2),
                                             zero_terminal_snr=params.get("zero_terminal_snr", False))
    config = schedule_to_diffusers(params, schedule.betas.tolist())
    scheduler = diffusers.DDIMScheduler.from_config(config)
    assert torch.allclose(scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert config["prediction_type"] == {"eps": "epsilon", "v": "v_prediction"}[params.get("parameterization", "eps")]
    back = schedule_from_diffusers(config)
    again = DiffusionSchedule.from_config(back.get("beta_schedule", "linear"), back["timesteps"],
                                          back["linear_start"], back["linear_end"],
                                          given_betas=back.get("given_betas"),
                                          zero_terminal_snr=back["zero_terminal_snr"])
    assert torch.allclose(again.betas, schedule.betas, rtol=1e-6, atol=1e-9)
