"""Reading diffusers folders as our config + state_dict (the import side of `ldm.interop.diffusers`).

Nothing here runs code from the folder: configs are read as JSON and weights through `ldm.checkpoint`
(safetensors, or weights_only for .bin). The folder is never written to.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import CheckpointError, load_state_dict
from ldm.diffusion.schedule import COSINE_S, DiffusionSchedule
from ldm.interop.diffusers_config import (UNET_TARGET, schedule_from_diffusers, unet_from_diffusers,
                                          vae_from_diffusers)
from ldm.interop.diffusers_keys import KeyMapError, unet_key_map, unet_layout, vae_key_map

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
SCHEDULER_NAME = "scheduler_config.json"
MODEL_INDEX = "model_index.json"
VAE_CLASSES = ("AutoencoderKL", "VQModel")
UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")
LDM_TARGET = "ldm.models.diffusion.ddpm.LatentDiffusion"
DDPM_TARGET = "ldm.models.diffusion.ddpm.DDPM"
VQ_INTERFACE_TARGET = "ldm.models.autoencoder.VQModelInterface"
CLIP_TARGET = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
HF_TEXT_TARGET = "ldm.modules.encoders.modules.FrozenHFTextEncoder"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read diffusers config {path}: {err}") from err


def _is_model_dir(path: str, classes: Iterable[str]) -> bool:
    config = os.path.join(path, CONFIG_NAME)
    return os.path.isfile(config) and _read_json(config).get("_class_name") in tuple(classes)


def is_diffusers_path(path: str) -> bool:
    """Whether `path` is a diffusers folder (pipeline, or one UNet / VAE model) or a weights file inside one."""
    if os.path.isfile(path):
        name = os.path.basename(path)
        return name.startswith("diffusion_pytorch_model") and os.path.isfile(
            os.path.join(os.path.dirname(path), CONFIG_NAME))
    if not os.path.isdir(path):
        return False
    return (os.path.isfile(os.path.join(path, MODEL_INDEX)) or os.path.isdir(os.path.join(path, "unet"))
            or _is_model_dir(path, VAE_CLASSES + UNET_CLASSES))


def _read_weights(folder: str) -> dict[str, torch.Tensor]:
    """The weights of one diffusers / transformers model folder, float tensors as float32 (safetensors first)."""
    names = ["diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
             "pytorch_model.bin"]
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    state: dict[str, torch.Tensor] = {}
    if paths:
        state = load_state_dict(paths[0])
    else:
        index = sorted(glob.glob(os.path.join(folder, "*.safetensors.index.json")))
        variants = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if index:
            for shard in sorted(set(_read_json(index[0]).get("weight_map", {}).values())):
                state.update(load_state_dict(os.path.join(folder, shard)))
        elif variants:  # e.g. diffusion_pytorch_model.fp16.safetensors
            state = load_state_dict(variants[0])
        else:
            raise CheckpointError(f"no weights (*.safetensors or *.bin) in diffusers folder {folder}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _folder_of(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)


def _part(root: str, name: str, classes: Iterable[str]) -> str | None:
    """Folder of part `name` (unet / vae) of a pipeline folder, or the root when it is that model itself."""
    sub = os.path.join(root, name)
    if os.path.isfile(os.path.join(sub, CONFIG_NAME)):
        return sub
    return root if _is_model_dir(root, classes) else None


def diffusers_state_dict(path: str, parts: Iterable[str] = ("unet", "vae", "text_encoder")) -> dict[str, torch.Tensor]:
    """Our state_dict from a diffusers folder: `model.diffusion_model.*`, `first_stage_model.*` and
    `cond_stage_model.*` for a pipeline; the autoencoder's own keys for a lone VAE / VQ model folder."""
    root = _folder_of(path)
    if not is_diffusers_path(root):
        raise CheckpointError(f"{path} is not a diffusers folder (no model_index.json, unet/ or config.json)")
    parts = set(parts)
    state: dict[str, torch.Tensor] = {}
    unet_dir = _part(root, "unet", UNET_CLASSES)
    vae_dir = _part(root, "vae", VAE_CLASSES)
    if unet_dir is None and vae_dir == root:  # a lone autoencoder: keys as the autoencoder's own
        config = _read_json(os.path.join(root, CONFIG_NAME))
        first = vae_from_diffusers(config["_class_name"], config)
        return vae_key_map(first["params"]["ddconfig"]).to_ours(_read_weights(root))
    if "unet" in parts and unet_dir is not None:
        config = _read_json(os.path.join(unet_dir, CONFIG_NAME))
        params = unet_from_diffusers(config.get("_class_name", "UNet2DConditionModel"), config)
        unet = unet_key_map(unet_layout(params)).to_ours(_read_weights(unet_dir))
        state.update({f"model.diffusion_model.{k}": v for k, v in unet.items()})
        state.update(_schedule_buffers(root))
    if "vae" in parts and vae_dir is not None:
        config = _read_json(os.path.join(vae_dir, CONFIG_NAME))
        first = vae_from_diffusers(config.get("_class_name", "AutoencoderKL"), config)
        vae = vae_key_map(first["params"]["ddconfig"]).to_ours(_read_weights(vae_dir))
        state.update({f"first_stage_model.{k}": v for k, v in vae.items()})
        state["scale_factor"] = torch.tensor(float(config.get("scaling_factor") or 1.0))
    text_dir = os.path.join(root, "text_encoder")
    if "text_encoder" in parts and os.path.isfile(os.path.join(text_dir, CONFIG_NAME)):
        clip = _text_class(root).startswith("CLIPText")
        prefix = "cond_stage_model.transformer." + ("text_model." if clip else "")
        for k, v in _read_weights(text_dir).items():
            state[prefix + (k[len("text_model."):] if clip and k.startswith("text_model.") else k)] = v
    if not state:
        raise CheckpointError(f"diffusers folder {root} has none of the parts {sorted(parts)}")
    return state


def _schedule_buffers(root: str) -> dict[str, torch.Tensor]:
    """The 12 schedule buffers of the folder's scheduler (as in CompVis checkpoints; none without a scheduler)."""
    path = os.path.join(root, "scheduler", SCHEDULER_NAME)
    if not os.path.isfile(path):
        return {}
    p = schedule_from_diffusers(_read_json(path))
    schedule = DiffusionSchedule.from_config(p.get("beta_schedule", "linear"), p["timesteps"], p["linear_start"],
                                             p["linear_end"], p.get("cosine_s", COSINE_S), p.get("given_betas"),
                                             zero_terminal_snr=p["zero_terminal_snr"])
    return schedule.buffers()


def _text_class(root: str) -> str:
    index = os.path.join(root, MODEL_INDEX)
    entry = _read_json(index).get("text_encoder") if os.path.isfile(index) else None
    if entry and entry[1]:
        return str(entry[1])
    architectures = _read_json(os.path.join(root, "text_encoder", CONFIG_NAME)).get("architectures") or [""]
    return str(architectures[0])


def _text_folder(root: str) -> str:
    """A folder with the text model and its tokenizer together (our encoders read both from one folder).

    Our exports put the tokenizer next to the model; for other folders a view of symlinks to text_encoder/ and
    tokenizer/ is made under ~/.cache/ldm/diffusers_text/ (the diffusers folder itself is never written to).
    """
    text_dir, tok_dir = os.path.join(root, "text_encoder"), os.path.join(root, "tokenizer")
    if any(os.path.isfile(os.path.join(text_dir, n)) for n in TOKENIZER_FILES) or not os.path.isdir(tok_dir):
        return text_dir
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    view = os.path.join(cache, "ldm", "diffusers_text", hashlib.sha1(root.encode()).hexdigest()[:16])
    os.makedirs(view, exist_ok=True)
    for src in (text_dir, tok_dir):
        for name in os.listdir(src):
            link = os.path.join(view, name)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.join(src, name), link)
    return view


def _cond_stage_config(root: str) -> dict[str, Any]:
    cls = _text_class(root)
    text_config = _read_json(os.path.join(root, "text_encoder", CONFIG_NAME))
    tok_config_path = os.path.join(root, "tokenizer", "tokenizer_config.json")
    tok_config = _read_json(tok_config_path) if os.path.isfile(tok_config_path) else {}
    limit = int(text_config.get("max_position_embeddings") or 77)
    max_length = int(tok_config.get("model_max_length") or 77)
    max_length = min(max_length, limit) if max_length > 0 else 77
    folder = _text_folder(root)
    if cls.startswith("CLIPTextModel"):
        if cls != "CLIPTextModel":
            raise KeyMapError(f"text encoder {cls}: only CLIPTextModel (last hidden state) has an equivalent")
        return {"target": CLIP_TARGET, "params": {"version": folder, "max_length": max_length,
                                                  "expected_vocab_size": None}}
    return {"target": HF_TEXT_TARGET, "params": {
        "path_or_id": folder, "max_length": max_length,
        "use_attention_mask": bool(text_config.get("use_attention_mask", False))}}


def diffusers_model_config(path: str) -> dict[str, Any]:
    """Our model config ({target, params}) for a diffusers folder; KeyMapError when it cannot be represented."""
    root = _folder_of(path)
    if not is_diffusers_path(root):
        raise KeyMapError(f"{path} is not a diffusers folder (no model_index.json, unet/ or config.json)")
    unet_dir, vae_dir = _part(root, "unet", UNET_CLASSES), _part(root, "vae", VAE_CLASSES)
    if unet_dir is None:
        if vae_dir is None:
            raise KeyMapError(f"diffusers folder {root} has neither a UNet nor an autoencoder")
        config = _read_json(os.path.join(vae_dir, CONFIG_NAME))
        return vae_from_diffusers(config["_class_name"], config)
    unet_config = _read_json(os.path.join(unet_dir, CONFIG_NAME))
    unet_cls = unet_config.get("_class_name", "UNet2DConditionModel")
    unet = unet_from_diffusers(unet_cls, unet_config)
    sched_path = os.path.join(root, "scheduler", SCHEDULER_NAME)
    sched = _read_json(sched_path) if os.path.isfile(sched_path) else {}
    schedule = schedule_from_diffusers(sched)
    if unet["in_channels"] != unet["out_channels"]:
        raise KeyMapError(f"{root}: the UNet takes {unet['in_channels']} input channels for {unet['out_channels']} "
                          "output channels (inpainting / super-resolution concat inputs); give your own config and "
                          "load the weights with model.params.ckpt_path=<folder>")
    if "num_classes" in unet:
        raise KeyMapError(f"{root}: class-conditional UNets (class_embedding) have no stage-2 config here; give your "
                          "own config and load the weights with model.params.ckpt_path=<folder>")
    params: dict[str, Any] = {**schedule, "unet_config": {"target": UNET_TARGET, "params": unet},
                              "image_size": unet["image_size"], "channels": unet["out_channels"],
                              "first_stage_key": "image", "monitor": "val/loss_simple_ema", "use_ema": True}
    has_text = os.path.isfile(os.path.join(root, "text_encoder", CONFIG_NAME))
    if unet.get("use_spatial_transformer") and not has_text:
        raise KeyMapError(f"{root}: the UNet cross-attends to a context but the folder has no text_encoder/ (a model "
                          "exported with our own encoder); give the original config, or your own, with "
                          "model.params.ckpt_path=<folder>")
    if vae_dir is None:
        if has_text:
            raise KeyMapError(f"{root}: a pixel-space text model has no equivalent config here")
        params["clip_denoised"] = bool(sched.get("clip_sample", True))
        return {"target": DDPM_TARGET, "params": params}
    vae_config = _read_json(os.path.join(vae_dir, CONFIG_NAME))
    if vae_config.get("latents_mean") is not None:
        raise KeyMapError(f"{vae_dir}: latents_mean/latents_std (per-channel latent statistics) are not read back")
    params["first_stage_config"] = vae_from_diffusers(vae_config["_class_name"], vae_config, VQ_INTERFACE_TARGET)
    params["scale_factor"] = float(vae_config.get("scaling_factor") or 1.0)
    if has_text:
        params.update(cond_stage_config=_cond_stage_config(root), cond_stage_key="caption",
                      conditioning_key="crossattn", cond_stage_trainable=False)
    else:
        params.update(cond_stage_config="__is_unconditional__", conditioning_key=None)
    return {"target": LDM_TARGET, "params": params}


def load_diffusers(folder: str) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """(our model config as OmegaConf {target, params}, our state_dict) for a diffusers folder."""
    return OmegaConf.create(diffusers_model_config(folder)), diffusers_state_dict(folder)


def read_checkpoint(path: str, parts: Iterable[str] = ("unet", "vae", "text_encoder")) -> dict[str, torch.Tensor]:
    """`ldm.checkpoint.load_state_dict`, plus diffusers folders (and weights files inside one), converted."""
    if is_diffusers_path(path):
        try:
            return diffusers_state_dict(path, parts)
        except KeyMapError as err:
            raise CheckpointError(f"cannot convert diffusers folder {path}: {err}") from err
    return load_state_dict(path)
