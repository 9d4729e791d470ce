"""Our config params <-> diffusers config dicts: UNet, first stage (VAE / VQ) and the noise schedule.

Every translation raises `KeyMapError` naming the key that the other side cannot express, instead of writing a
config that would load but compute something else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ldm.diffusion.schedule import COSINE_S, LINEAR_END, LINEAR_START, NUM_TIMESTEPS
from ldm.interop.diffusers_keys import KeyMapError, UNetLayout, ae_attn_levels, unet_layout
from ldm.modules.diffusionmodules.model import NORM_NUM_GROUPS

KL_TARGET = "ldm.models.autoencoder.AutoencoderKL"
VQ_TARGET = "ldm.models.autoencoder.VQModel"
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"

# Our beta schedule name -> diffusers' (our "linear" is linear in sqrt(beta): diffusers' "scaled_linear").
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_COSINE_S = 0.008  # diffusers' squaredcos_cap_v2 hard-codes the offset s
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
# Values a diffusers UNet config must have for our UNetModel to compute the same function.
UNET_FIXED = {"center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
              "norm_eps": 1e-5, "downsample_padding": 1, "mid_block_scale_factor": 1,
              "time_embedding_type": "positional", "conv_in_kernel": 3, "conv_out_kernel": 3,
              "addition_embed_type": None, "encoder_hid_dim": None, "time_cond_proj_dim": None,
              "class_embeddings_concat": False, "dual_cross_attention": False, "resnet_skip_time_act": False,
              "resnet_out_scale_factor": 1.0, "timestep_post_act": None, "time_embedding_dim": None,
              "time_embedding_act_fn": None, "attention_type": "default", "cross_attention_norm": None}
VAE_FIXED = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True, "shift_factor": None,
             "norm_type": "group"}


def _fixed(cfg: Mapping[str, Any], fixed: Mapping[str, Any], what: str) -> None:
    for key, want in fixed.items():
        if key in cfg and cfg[key] != want and not (cfg[key] is None and want is False):
            raise KeyMapError(f"{what} config {key}={cfg[key]!r}: only {want!r} has an equivalent here")


# ------------------------------------------------------------------------------------------------------------ UNet
def _spatial_heads(layout: UNetLayout) -> list[int]:
    return [layout.heads(layout.channels(i)) for i in range(layout.n_levels)]


def unet_to_diffusers(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(class name, config) of the diffusers UNet equal to our UNetModel with `params`."""
    layout = unet_layout(params)
    p = dict(params)
    n = layout.n_levels
    nrb = list(layout.num_res_blocks)
    cfg: dict[str, Any] = {
        "sample_size": p.get("image_size"), "in_channels": int(p["in_channels"]),
        "out_channels": int(p["out_channels"]),
        "block_out_channels": [layout.channels(i) for i in range(n)], "dropout": float(p.get("dropout", 0.0)),
        "norm_num_groups": int(p.get("norm_num_groups", 32)), "flip_sin_to_cos": True, "freq_shift": 0,
        "act_fn": "silu", "norm_eps": 1e-5, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "resnet_time_scale_shift": "scale_shift" if p.get("use_scale_shift_norm") else "default",
    }
    if layout.spatial:
        context = p.get("context_dim")
        if isinstance(context, (list, tuple)) or (not isinstance(context, int) and hasattr(context, "__len__")):
            values = set(int(c) for c in context)
            if len(values) != 1:
                raise KeyMapError(f"unet_config.params.context_dim={list(context)}: per-block context widths have no "
                                  "diffusers equivalent")
            context = values.pop()
        depth = p.get("transformer_depth", 1)
        depths = [int(depth)] * n if isinstance(depth, int) else [int(d) for d in depth]
        only_cross = p.get("disable_self_attentions")
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attn_levels]
        cfg.update({
            "down_block_types": down, "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
            "layers_per_block": nrb if len(set(nrb)) > 1 else nrb[0], "cross_attention_dim": int(context),
            "attention_head_dim": _spatial_heads(layout),  # diffusers' historic name for the number of heads
            "transformer_layers_per_block": depths,
            "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
            "only_cross_attention": [bool(x) for x in only_cross] if isinstance(only_cross, (list, tuple))
            else bool(only_cross or False),
            "upcast_attention": False,
        })
        if layout.label_emb == "embedding":
            cfg["num_class_embeds"] = int(p["num_classes"])
        elif layout.label_emb == "sequential":
            cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=int(p["adm_in_channels"]))
        return "UNet2DConditionModel", cfg
    if len(set(nrb)) > 1:
        raise KeyMapError(f"unet_config.params.num_res_blocks={nrb}: UNet2DModel needs the same count on every level")
    if layout.label_emb == "sequential":
        raise KeyMapError("unet_config.params.num_classes='sequential' without a SpatialTransformer: UNet2DModel has "
                          "no projection class embedding")
    head_dims = {ch // layout.heads(ch, up) for level in range(n) for ch in [layout.channels(level)]
                 for up in (False, True) if layout.attn_levels[level]}
    head_dims.add(layout.channels(n - 1) // layout.heads(layout.channels(n - 1)))
    if len(head_dims) != 1:
        raise KeyMapError(f"unet_config.params.num_heads={layout.num_heads}: channels per head differ between levels "
                          f"({sorted(head_dims)}); UNet2DModel has one attention_head_dim (use num_head_channels)")
    resample = "resnet" if layout.resblock_updown else "conv"
    down = [("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" if layout.resblock_updown else "DownBlock2D")
            for a in layout.attn_levels]
    up = [("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" if layout.resblock_updown else "UpBlock2D")
          for a in reversed(layout.attn_levels)]
    cfg.update({"down_block_types": down, "up_block_types": up, "mid_block_type": "UNetMidBlock2D",
                "layers_per_block": nrb[0], "attention_head_dim": head_dims.pop(), "add_attention": True,
                "attn_norm_num_groups": cfg["norm_num_groups"], "downsample_type": resample,
                "upsample_type": resample, "time_embedding_type": "positional", "center_input_sample": False})
    if layout.label_emb == "embedding":
        cfg["num_class_embeds"] = int(p["num_classes"])
    return "UNet2DModel", cfg


def _levels(cfg: Mapping[str, Any], what: str) -> tuple[list[int], int, list[int]]:
    channels = [int(c) for c in cfg["block_out_channels"]]
    base = channels[0]
    if any(c % base for c in channels):
        raise KeyMapError(f"{what} block_out_channels={channels}: not multiples of the first level's width")
    return channels, base, [c // base for c in channels]


def unet_from_diffusers(class_name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Our UNetModel params for a diffusers UNet2DConditionModel / UNet2DModel config."""
    if class_name not in ("UNet2DConditionModel", "UNet2DModel"):
        raise KeyMapError(f"unet class {class_name!r}: only UNet2DConditionModel and UNet2DModel convert")
    _fixed(cfg, UNET_FIXED, class_name)
    channels, base, mult = _levels(cfg, class_name)
    n = len(channels)
    spatial = class_name == "UNet2DConditionModel"
    down = list(cfg["down_block_types"])
    attn_word = "CrossAttn" if spatial else "Attn"
    attn = [t.startswith(attn_word) for t in down]
    up = list(cfg["up_block_types"])
    if [t.startswith(attn_word) for t in reversed(up)] != attn:
        raise KeyMapError(f"{class_name} up_block_types {up} do not mirror down_block_types {down}")
    scale_shift = cfg.get("resnet_time_scale_shift", "default")
    if scale_shift not in ("default", "scale_shift"):
        raise KeyMapError(f"{class_name} config resnet_time_scale_shift={scale_shift!r} has no equivalent")
    layers = cfg.get("layers_per_block", 2)
    params: dict[str, Any] = {
        "image_size": cfg.get("sample_size") or 64, "in_channels": int(cfg["in_channels"]),
        "out_channels": int(cfg["out_channels"]), "model_channels": base,
        "attention_resolutions": [2 ** i for i in range(n) if attn[i]],
        "num_res_blocks": int(layers) if isinstance(layers, int) else [int(x) for x in layers],
        "channel_mult": mult, "dropout": float(cfg.get("dropout", 0.0)),
        "norm_num_groups": int(cfg.get("norm_num_groups") or 32), "use_scale_shift_norm": scale_shift != "default",
        "legacy": False,
    }
    if cfg.get("num_class_embeds") is not None and cfg.get("class_embed_type") is None:
        params["num_classes"] = int(cfg["num_class_embeds"])
    elif cfg.get("class_embed_type") == "projection" and spatial:
        params.update(num_classes="sequential", adm_in_channels=int(cfg["projection_class_embeddings_input_dim"]))
    elif cfg.get("class_embed_type") is not None:
        raise KeyMapError(f"{class_name} config class_embed_type={cfg['class_embed_type']!r} has no equivalent")
    if spatial:
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
        heads = [int(heads)] * n if isinstance(heads, int) else [int(h) for h in heads]
        per_head = {channels[i] // heads[i] for i in range(n)}
        if len(set(heads)) == 1:
            params["num_heads"] = heads[0]
        elif len(per_head) == 1 and all(channels[i] % heads[i] == 0 for i in range(n)):
            params["num_head_channels"] = per_head.pop()
        else:
            raise KeyMapError(f"{class_name} attention_head_dim={heads}: neither the heads nor the channels per head "
                              "are the same on every level")
        depth = cfg.get("transformer_layers_per_block", 1)
        if cfg.get("reverse_transformer_layers_per_block") is not None:
            raise KeyMapError(f"{class_name} config reverse_transformer_layers_per_block has no equivalent")
        context = cfg.get("cross_attention_dim")
        if not isinstance(context, int):
            raise KeyMapError(f"{class_name} cross_attention_dim={context!r}: only one width for all blocks converts")
        only_cross = cfg.get("only_cross_attention", False)
        if cfg.get("mid_block_only_cross_attention"):
            raise KeyMapError(f"{class_name} config mid_block_only_cross_attention has no equivalent")
        params.update(use_spatial_transformer=True, context_dim=context,
                      transformer_depth=depth if isinstance(depth, int) else [int(d) for d in depth],
                      use_linear_in_transformer=bool(cfg.get("use_linear_projection", False)))
        if only_cross:
            params["disable_self_attentions"] = list(only_cross) if isinstance(only_cross, list) else [True] * n
    else:
        if cfg.get("downsample_type", "conv") != cfg.get("upsample_type", "conv"):
            raise KeyMapError("UNet2DModel with different downsample_type and upsample_type has no equivalent")
        params["resblock_updown"] = cfg.get("downsample_type", "conv") == "resnet"
        if not cfg.get("add_attention", True):
            raise KeyMapError("UNet2DModel config add_attention=False: our middle block always has attention")
        if cfg.get("attention_head_dim") is None:  # diffusers: one head of the block's width
            params["num_heads"] = 1
        else:
            params["num_head_channels"] = int(cfg["attention_head_dim"])
        params["use_new_attention_order"] = True
    return params


# ----------------------------------------------------------------------------------------------------- first stage
def vae_to_diffusers(target: str, params: Mapping[str, Any], scaling_factor: float = 1.0,
                     latents_mean: list[float] | None = None,
                     latents_std: list[float] | None = None) -> tuple[str, dict[str, Any]]:
    """(class name, config) of the diffusers AutoencoderKL / VQModel equal to our first stage `params`."""
    dd = dict(params["ddconfig"])
    vq = not target.endswith("AutoencoderKL")
    for key, bad in (("give_pre_end", True), ("tanh_out", True), ("resamp_with_conv", False),
                     ("use_linear_attn", True)):
        if dd.get(key, not bad) == bad:
            raise KeyMapError(f"ddconfig.{key}={bad}: diffusers' autoencoders have no equivalent")
    if dd.get("attn_type", "vanilla") not in ("vanilla", "none"):
        raise KeyMapError(f"ddconfig.attn_type={dd['attn_type']!r} has no diffusers equivalent")
    embed_dim, z = int(params["embed_dim"]), int(dd["z_channels"])
    if not vq and embed_dim != z:
        raise KeyMapError(f"embed_dim={embed_dim} differs from ddconfig.z_channels={z}: diffusers' AutoencoderKL has "
                          "one latent width for both")
    attn = ae_attn_levels(dd)
    cfg: dict[str, Any] = {
        "in_channels": int(dd["in_channels"]), "out_channels": int(dd["out_ch"]),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)],
        "block_out_channels": [int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]), "act_fn": "silu", "latent_channels": z,
        "norm_num_groups": int(dd.get("norm_num_groups", NORM_NUM_GROUPS)), "sample_size": int(dd["resolution"]),
        "scaling_factor": float(scaling_factor),
        "mid_block_add_attention": dd.get("attn_type", "vanilla") == "vanilla",
    }
    if vq:
        cfg.update(num_vq_embeddings=int(params["n_embed"]), vq_embed_dim=embed_dim, norm_type="group",
                   force_upcast=False)
        return "VQModel", cfg
    cfg.update(latents_mean=latents_mean, latents_std=latents_std, force_upcast=True, use_quant_conv=True,
               use_post_quant_conv=True)
    return "AutoencoderKL", cfg


def vae_from_diffusers(class_name: str, cfg: Mapping[str, Any], vq_target: str = VQ_TARGET) -> dict[str, Any]:
    """Our first-stage config ({target, params}) for a diffusers AutoencoderKL / VQModel config."""
    if class_name not in ("AutoencoderKL", "VQModel"):
        raise KeyMapError(f"vae class {class_name!r}: only AutoencoderKL and VQModel convert")
    _fixed(cfg, VAE_FIXED, class_name)
    channels, base, mult = _levels(cfg, class_name)
    size = int(cfg.get("sample_size") or 256)
    if isinstance(cfg.get("sample_size"), (list, tuple)):
        size = int(cfg["sample_size"][0])
    down = list(cfg["down_block_types"])
    attn = [t.startswith("Attn") for t in down]
    mid_attn = bool(cfg.get("mid_block_add_attention", True))
    if any(attn) and not mid_attn:
        raise KeyMapError(f"{class_name}: level attention without mid-block attention has no equivalent")
    factor = 2 ** (len(channels) - 1)
    size = max(size, factor) // factor * factor
    dd = {"double_z": class_name == "AutoencoderKL", "z_channels": int(cfg["latent_channels"]), "resolution": size,
          "in_channels": int(cfg["in_channels"]), "out_ch": int(cfg["out_channels"]), "ch": base, "ch_mult": mult,
          "num_res_blocks": int(cfg["layers_per_block"]), "attn_resolutions": [size // 2 ** i for i, a in
                                                                               enumerate(attn) if a],
          "dropout": 0.0, "norm_num_groups": int(cfg.get("norm_num_groups") or 32),
          "attn_type": "vanilla" if mid_attn else "none"}
    params: dict[str, Any] = {"ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}
    if class_name == "AutoencoderKL":
        params["embed_dim"] = dd["z_channels"]
        return {"target": KL_TARGET, "params": params}
    params.update(embed_dim=int(cfg.get("vq_embed_dim") or dd["z_channels"]),
                  n_embed=int(cfg["num_vq_embeddings"]))
    return {"target": vq_target, "params": params}


# --------------------------------------------------------------------------------------------------------- schedule
def schedule_to_diffusers(params: Mapping[str, Any], betas: list[float], clip_sample: bool = False,
                          cls: str = "DDIMScheduler") -> dict[str, Any]:
    """A diffusers DDIM/DDPM scheduler config with our model's training schedule (`params`: model.params)."""
    name = params.get("beta_schedule", "linear")
    zero_snr = bool(params.get("zero_terminal_snr", False))
    parameterization = params.get("parameterization", "eps")
    cfg: dict[str, Any] = {
        "_class_name": cls, "num_train_timesteps": len(betas),
        "beta_start": float(params.get("linear_start", LINEAR_START)),
        "beta_end": float(params.get("linear_end", LINEAR_END)),
        "beta_schedule": BETA_SCHEDULES.get(name, "linear"), "trained_betas": None,
        "prediction_type": PREDICTION_TYPES[parameterization], "rescale_betas_zero_snr": zero_snr,
        "clip_sample": bool(clip_sample), "clip_sample_range": 1.0, "thresholding": False,
        "timestep_spacing": "leading", "steps_offset": 1,
    }
    named = params.get("given_betas") is None and name in BETA_SCHEDULES and not (
        name == "cosine" and not math.isclose(float(params.get("cosine_s", COSINE_S)), DIFFUSERS_COSINE_S))
    if not named:  # the exact betas (already rescaled when zero_terminal_snr)
        cfg.update(trained_betas=[float(b) for b in betas], rescale_betas_zero_snr=False)
    if cls == "DDIMScheduler":
        cfg["set_alpha_to_one"] = False
    else:
        cfg["variance_type"] = "fixed_small"
    return cfg


def schedule_from_diffusers(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Our model.params schedule keys (timesteps, beta_schedule, linear_start/end, given_betas, zero_terminal_snr,
    parameterization) from a diffusers scheduler config."""
    out: dict[str, Any] = {"timesteps": int(cfg.get("num_train_timesteps", NUM_TIMESTEPS)),
                           "linear_start": float(cfg.get("beta_start", 0.0001)),
                           "linear_end": float(cfg.get("beta_end", 0.02)),
                           "zero_terminal_snr": bool(cfg.get("rescale_betas_zero_snr", False))}
    prediction = cfg.get("prediction_type", "epsilon")
    ours = {v: k for k, v in PREDICTION_TYPES.items()}
    if prediction not in ours:
        raise KeyMapError(f"scheduler prediction_type={prediction!r} has no equivalent")
    out["parameterization"] = ours[prediction]
    if cfg.get("trained_betas") is not None:
        out["given_betas"] = [float(b) for b in cfg["trained_betas"]]
        out["timesteps"] = len(out["given_betas"])
        return out
    schedule = cfg.get("beta_schedule", "linear")
    names = {v: k for k, v in BETA_SCHEDULES.items()}
    if schedule not in names:
        raise KeyMapError(f"scheduler beta_schedule={schedule!r} has no equivalent")
    out["beta_schedule"] = names[schedule]
    if schedule == "squaredcos_cap_v2":
        out["cosine_s"] = DIFFUSERS_COSINE_S
    return out
