"""Export our models as diffusers folders, and read diffusers folders back as our config + state_dict.

Layout written by `export_diffusers` (everything `from_pretrained` loads offline, weights as safetensors):
stage 2: `unet/`, `scheduler/`, `vae/` (latent models), and for a Hugging Face text encoder `text_encoder/`,
`tokenizer/` and `model_index.json` (StableDiffusionPipeline); other conditioners get a README.md saying why the
pipeline needs our encoder. A pixel-space unconditional model gets a DDPMPipeline `model_index.json`.
Autoencoder runs: the VAE / VQ model at the folder root (`AutoencoderKL.from_pretrained(folder)`).
The folder is built under a temporary name next to `out_dir` and renamed when complete.
Reading (`load_diffusers`, `read_checkpoint`, ...) lives in `diffusers_read` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.files import atomic_write, staging_dir
from ldm.interop.diffusers_config import schedule_to_diffusers, unet_to_diffusers, vae_to_diffusers
from ldm.interop.diffusers_keys import KeyMapError, unet_key_map, unet_layout, vae_key_map
from ldm.interop.diffusers_read import (CONFIG_NAME, MODEL_INDEX, SCHEDULER_NAME, WEIGHTS_NAME,  # noqa: F401
                                        diffusers_model_config, diffusers_state_dict, is_diffusers_path,
                                        load_diffusers, read_checkpoint)

# The autoencoder's own weights (not its loss, EMA or colorize buffers).
AE_WEIGHT_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.")


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version
        return version("diffusers")
    except Exception:  # diffusers is only needed to load the folder, not to write it
        return "0.30.0"


# ------------------------------------------------------------------------------------------------------ writing
def _write_json(path: str, obj: Mapping[str, Any]) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def _write_weights(path: str, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    from safetensors.torch import save

    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    data = save(tensors)
    atomic_write(path, lambda f: f.write(data), expected_bytes=len(data))


def _write_part(folder: str, cls: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                dtype: torch.dtype) -> None:
    """One diffusers model folder: config.json (with _class_name) and the safetensors weights."""
    _write_json(os.path.join(folder, CONFIG_NAME), {"_class_name": cls, "_diffusers_version": _diffusers_version(),
                                                    **config})
    _write_weights(os.path.join(folder, WEIGHTS_NAME), state, dtype)


def _model_section(config: Any) -> dict[str, Any]:
    """The resolved `model:` section ({target, params}) of a merged config (or the section itself)."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    section = config.get("model", config)
    if "target" not in section:
        raise KeyMapError("export_diffusers: the config has no model.target")
    section = dict(section)
    section["params"] = dict(section.get("params") or {})
    return section


@contextlib.contextmanager
def _weights(model: torch.nn.Module, use_ema: bool, warnings: list[str]):
    """Within the block the model holds the weights to export (EMA swapped in when asked and present)."""
    if use_ema and getattr(model, "use_ema", False):
        with model.ema_scope():
            yield
        return
    if use_ema:
        warnings.append(f"{type(model).__name__} has no EMA weights: exported its training weights")
    yield


def export_diffusers(model: torch.nn.Module, config: Any, out_dir: str, dtype: torch.dtype = torch.float32,
                     use_ema: bool = True) -> list[str]:
    """Write `model` (LatentDiffusion, pixel DDPM, AutoencoderKL or VQModel; `config` its merged config) as a
    diffusers folder at `out_dir` (must not exist or be empty); returns warnings for the user."""
    from ldm.models.autoencoders.adversarial import AdversarialAutoencoder

    section = _model_section(config)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"export_diffusers: {out_dir} exists and is not an empty folder")
    staging = staging_dir(out_dir)
    warnings: list[str] = []
    try:
        with torch.no_grad(), _weights(model, use_ema, warnings):
            if isinstance(model, AdversarialAutoencoder):
                _export_first_stage(model, section, staging, dtype)
            else:
                _export_diffusion(model, section, staging, dtype, warnings)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return warnings


def _first_stage_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    if getattr(getattr(module, "quantize", None), "l2_normalize", False):
        raise KeyMapError("the VQ codebook uses l2_normalize: diffusers' VectorQuantizer has no cosine lookup")
    return {k: v for k, v in module.state_dict().items() if k.startswith(AE_WEIGHT_PREFIXES)}


def _export_first_stage(module: torch.nn.Module, section: Mapping[str, Any], folder: str, dtype: torch.dtype,
                        scaling_factor: float = 1.0, latents_mean=None, latents_std=None) -> str:
    params = section["params"]
    cls, cfg = vae_to_diffusers(section["target"], params, scaling_factor, latents_mean, latents_std)
    state = vae_key_map(params["ddconfig"]).to_diffusers(_first_stage_state(module))
    _write_part(folder, cls, cfg, state, dtype)
    return cls


def _export_diffusion(model: torch.nn.Module, section: Mapping[str, Any], folder: str, dtype: torch.dtype,
                      warnings: list[str]) -> None:
    params = section["params"]
    unet_params = dict(params["unet_config"].get("params") or {})
    unet_cls, unet_cfg = unet_to_diffusers(unet_params)
    unet_state = unet_key_map(unet_layout(unet_params)).to_diffusers(model.model.diffusion_model.state_dict())
    _write_part(os.path.join(folder, "unet"), unet_cls, unet_cfg, unet_state, dtype)

    first = params.get("first_stage_config")
    pixel = not isinstance(first, Mapping) or "IdentityFirstStage" in str(first.get("target", ""))
    per_channel = getattr(model, "latent_stats", "global") == "per_channel"
    vae_cls = None
    if not pixel:
        stats = ({"latents_mean": model.latent_mean.tolist(), "latents_std": model.latent_std.tolist()}
                 if per_channel else {})
        if per_channel and not first["target"].endswith("AutoencoderKL"):
            raise KeyMapError("latent_stats: per_channel with a VQ first stage has no diffusers equivalent")
        vae_cls = _export_first_stage(model.first_stage_model, first, os.path.join(folder, "vae"), dtype,
                                      float(model.scale_factor), **stats)
    schedule = model.sampling_schedule()
    scheduler_cls = "DDPMScheduler" if pixel else "DDIMScheduler"
    _write_json(os.path.join(folder, "scheduler", SCHEDULER_NAME),
                {**schedule_to_diffusers(params, schedule.betas.tolist(), bool(model.clip_denoised), scheduler_cls),
                 "_diffusers_version": _diffusers_version()})

    from ldm.modules.encoders.frozen import FrozenHFTextEncoder

    cond = getattr(model, "cond_stage_model", None)
    key = getattr(model.model, "conditioning_key", None)
    text = _export_text_encoder(cond, folder) if isinstance(cond, FrozenHFTextEncoder) else None
    reasons = []
    if cond is not None and text is None:
        reasons.append(f"its conditioner {type(cond).__name__} is not a Hugging Face text model "
                       "(diffusers pipelines have no place for it)")
    if text is not None and cond.layer != "last":
        reasons.append(f"its text encoder uses layer={cond.layer!r}; the pipeline takes the last hidden state")
    if key not in (None, "crossattn"):
        reasons.append(f"its UNet is conditioned by {key!r} (extra input channels), not text cross-attention only")
    if per_channel:
        reasons.append("its latents are standardised per channel (latents_mean/std), which the pipelines ignore")
    if vae_cls == "VQModel":
        reasons.append("its first stage is a VQ model")
    if cond is None and not pixel:
        reasons.append("it is an unconditional latent model (diffusers' LDMPipeline expects a VQ model without "
                       "latent scaling)")
    index: dict[str, Any] = {"_diffusers_version": _diffusers_version(), "unet": ["diffusers", unet_cls],
                             "scheduler": ["diffusers", scheduler_cls]}
    if not reasons and text is not None:
        index.update({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", vae_cls],
                      "text_encoder": ["transformers", text[0]], "tokenizer": ["transformers", text[1]],
                      "safety_checker": [None, None], "feature_extractor": [None, None],
                      "image_encoder": [None, None], "requires_safety_checker": False})
    elif not reasons and pixel and cond is None:
        index["_class_name"] = "DDPMPipeline"
    else:
        _write_readme(folder, section, reasons, vae_cls)
        warnings.append("no diffusers pipeline written (" + "; ".join(reasons) + "): unet/, scheduler/"
                        + (", vae/" if vae_cls else "") + " load on their own; see README.md in the folder")
        return
    _write_json(os.path.join(folder, MODEL_INDEX), index)


def _export_text_encoder(cond: Any, folder: str) -> tuple[str, str]:
    """Save the HF text model to text_encoder/ and its tokenizer to tokenizer/ (and next to the model, so that our
    encoders, which read both from one folder, load it too); returns their class names."""
    import copy

    from ldm.modules.encoders.frozen import TextModelHolder

    hf = cond.transformer.text_model if isinstance(cond.transformer, TextModelHolder) else cond.transformer
    hf = copy.deepcopy(hf).float()
    if cond.use_attention_mask:  # StableDiffusionPipeline passes the padding mask only when the config says so
        hf.config.use_attention_mask = True
    tokenizer = copy.deepcopy(cond.tokenizer)
    tokenizer.model_max_length = cond.max_length
    hf.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)  # inside the staged folder
    for sub in ("tokenizer", "text_encoder"):
        tokenizer.save_pretrained(os.path.join(folder, sub))
    return type(hf).__name__, type(tokenizer).__name__


def _write_readme(folder: str, section: Mapping[str, Any], reasons: list[str], vae_cls: str | None) -> None:
    cond = section["params"].get("cond_stage_config")
    text = ["# Exported from ldm without a diffusers pipeline", "",
            "This folder holds the parts of the model that diffusers has classes for; there is no `model_index.json`"
            ", so `DiffusionPipeline.from_pretrained` cannot run it, because", ""]
    text += [f"- {r}" for r in reasons]
    text += ["", "Load the parts on their own (offline):", "", "```python",
             "from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel, AutoencoderKL, VQModel",
             'unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")  # or UNet2DModel, see unet/'
             'config.json', 'scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")']
    if vae_cls:
        text.append(f'vae = {vae_cls}.from_pretrained(folder, subfolder="vae")  # latents = scaling_factor * z')
    text += ["```", "", "The conditioning (text or class embeddings fed to the UNet as `encoder_hidden_states`) comes "
             "from our encoder, whose weights are in the original checkpoint (`cond_stage_model.*`):", "", "```json",
             json.dumps(cond, indent=2, default=str), "```", ""]
    data = "\n".join(text).encode()
    atomic_write(os.path.join(folder, "README.md"), lambda f: f.write(data))


