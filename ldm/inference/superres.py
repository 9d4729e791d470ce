"""Super-resolution for scripts/superres.py: the model check from its config, input sizes, and one image's upscaling.

A super-resolution model is a LatentDiffusion with `cond_stage_key: LR_image` and concat conditioning (the original
bsr_sr layout); its conditioner maps the low-resolution image to the latent size (torch.nn.Identity when they
already agree, as with an f4 first stage at x4, or a SpatialRescaler). The output is the decoded latent: the LR
side x (conditioner scale) x (first-stage factor).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.data.degradation import LR_KEY
from ldm.errors import UsageError
from ldm.inference.codec import decode_latents
from ldm.inference.model_info import ModelInfo
from ldm.inference.sampling import sample
from ldm.modules.encoders.modules import IdentityEncoder, SpatialRescaler

IDENTITY_CONDITIONERS = ("torch.nn.Identity", "torch.nn.modules.linear.Identity",
                         f"{IdentityEncoder.__module__}.{IdentityEncoder.__name__}",
                         f"ldm.modules.encoders.modules.{IdentityEncoder.__name__}")


def lr_to_latent_scale(config: DictConfig | Mapping[str, Any]) -> float:
    """How the model's conditioner scales the LR image to the latent grid (1.0 for an identity), checked from the
    config: UsageError when the model is not a super-resolution model."""
    model = config["model"]
    model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    params = dict(model.get("params", {}) or {})
    key = params.get("conditioning_key") or ("concat" if params.get("concat_mode", True) else "crossattn")
    if params.get("cond_stage_key") != LR_KEY or key != "concat":
        raise UsageError(f"this model is not a super-resolution model: it needs cond_stage_key '{LR_KEY}' with "
                         f"conditioning_key concat (it has cond_stage_key {params.get('cond_stage_key')!r}, "
                         f"conditioning_key {key!r}); train one with configs/ldm_sr.yaml")
    cond = params.get("cond_stage_config") or {}
    target = str(cond.get("target", "")) if isinstance(cond, Mapping) else str(cond)
    if target in IDENTITY_CONDITIONERS:
        return 1.0
    if target.endswith("." + SpatialRescaler.__name__):
        defaults = inspect.signature(SpatialRescaler).parameters
        p = cond.get("params", {}) or {}
        stages = int(p.get("n_stages", defaults["n_stages"].default))
        return float(p.get("multiplier", defaults["multiplier"].default)) ** stages
    raise UsageError(f"the super-resolution conditioner {target} is not supported here (torch.nn.Identity or "
                     f"{SpatialRescaler.__name__})")


def check_lr_size(height: int, width: int, scale: float, info: ModelInfo, what: str) -> tuple[int, int]:
    """The output (height, width) of an LR input, which must map to a latent grid the UNet can halve enough."""
    multiple = max(1, info.size_multiple // info.factor)  # the UNet's own downsampling
    latent = (height * scale, width * scale)
    if any(abs(s - round(s)) > 1e-6 or round(s) < 1 or round(s) % multiple for s in latent):
        need = max(1, round(multiple / scale))
        raise UsageError(f"{what}: a {width}x{height} (WxH) input gives a {latent[1]:g}x{latent[0]:g} latent, which "
                         f"must be whole multiples of {multiple}; use sides that are multiples of {need}")
    return round(latent[0]) * info.factor, round(latent[1]) * info.factor


@torch.no_grad()
def upscale(model: Any, low_res: torch.Tensor, noise_fn: Any, **sampling: Any) -> torch.Tensor:
    """The super-resolved image (1,C,H,W in [-1, 1]) of `low_res` (1,3,h,w in [-1, 1]).

    `noise_fn(shape)` gives x_T for the latent shape (C, h', w'); `sampling` goes to `ldm.inference.sampling.sample`.
    """
    cond = model.get_learned_conditioning(low_res.to(model.device))
    noise = noise_fn((int(model.channels), *cond.shape[-2:]))
    return decode_latents(model, sample(model, noise, cond=cond, **sampling))
