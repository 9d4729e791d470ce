"""Inpainting for scripts/inpaint.py: input pairs, which way a model inpaints (checked from its config), and one image.

Two ways (`INPAINT_MODES`; "auto" picks by the model): "concat" for concat inpainting models
(`LatentInpaintDiffusion`, or an original-style LatentDiffusion, see `ldm.models.diffusion.inpainting`): the UNet
sees the masked image and the mask. "guided" for any other unconditional, text or class model: the samplers' `mask` /
`x0` arguments re-impose the known latents (noised to the current level) before every step and exactly at the end. Either way the result is the input outside
the hole and the decoded sample inside it, as the original scripts/inpaint.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from glob import escape, glob
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.data.masks import apply_mask
from ldm.errors import UsageError
from ldm.inference.codec import decode_latents, encode_images
from ldm.inference.entry import INPAINT_MODES
from ldm.inference.images import image_to_tensor, open_image
from ldm.inference.model_info import ModelInfo
from ldm.inference.sampling import sample
from ldm.inference.validation import check_size
from ldm.models.diffusion.conditioning import FIRST_STAGE
from ldm.models.diffusion.inpainting import (LatentInpaintDiffusion, inpainting_conditioning, is_original_layout,
                                             latent_mask)
from ldm.util import get_obj_from_str

# `<name>_mask.png` next to `<name>.png` in an input folder (the original scripts/inpaint.py layout).
MASK_SUFFIX = "_mask.png"
IMAGE_SUFFIX = ".png"
# Mask pixels at or above half intensity are the hole (the original thresholds at 0.5).
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Pair:
    """One input: its name (for the output file), the image file and the mask file (white = fill in)."""

    name: str
    image: str
    mask: str


def find_pairs(indir: str) -> list[Pair]:
    """Every `<name>_mask.png` in `indir` with its `<name>.png` (sorted); UsageError when one is missing."""
    if not os.path.isdir(indir):
        raise UsageError(f"--indir: no such folder: {indir}")
    masks = sorted(glob(os.path.join(escape(indir), "*" + MASK_SUFFIX)))
    if not masks:
        raise UsageError(f"--indir: {indir} has no <name>{MASK_SUFFIX} masks (each next to its <name>{IMAGE_SUFFIX})")
    pairs = []
    for mask in masks:
        image = mask[: -len(MASK_SUFFIX)] + IMAGE_SUFFIX
        if not os.path.isfile(image):
            raise UsageError(f"--indir: the mask {mask} has no image {image}")
        pairs.append(Pair(os.path.basename(image), image, mask))
    return pairs


def input_pairs(image: str | None, mask: str | None, indir: str | None) -> list[Pair]:
    """The pairs of `--image` + `--mask` or of `--indir` (exactly one of the two ways)."""
    if indir is not None:
        if image is not None or mask is not None:
            raise UsageError("--indir and --image/--mask are alternatives; give one")
        return find_pairs(indir)
    if image is None or mask is None:
        raise UsageError("give --image <file> and --mask <file> (white = fill in), or --indir <folder of "
                         f"<name>{IMAGE_SUFFIX} + <name>{MASK_SUFFIX}>")
    for flag, path in (("--image", image), ("--mask", mask)):
        if not os.path.isfile(path):
            raise UsageError(f"{flag}: file not found: {path}")
    return [Pair(os.path.basename(image), image, mask)]


def _model_params(config: DictConfig | Mapping[str, Any]) -> tuple[str, dict]:
    model = config["model"]
    model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    return str(model.get("target", "")), dict(model.get("params", {}) or {})


def is_concat_model(config: DictConfig | Mapping[str, Any]) -> bool:
    """Whether the run's model inpaints through its concat input, read from the config (no weights built)."""
    target, params = _model_params(config)
    try:
        cls = get_obj_from_str(target)
    except Exception:
        cls = None
    if isinstance(cls, type) and issubclass(cls, LatentInpaintDiffusion):
        return True
    key = params.get("conditioning_key") or ("concat" if params.get("concat_mode", True) else "crossattn")
    in_channels = (params.get("unet_config") or {}).get("params", {}).get("in_channels")
    return is_original_layout(key, params.get("cond_stage_config") == FIRST_STAGE, in_channels,
                              int(params.get("channels", 3)))


def resolve_mode(mode: str, config: DictConfig | Mapping[str, Any], info: ModelInfo) -> str:
    """--mode auto/concat/guided checked against the model: "concat" or "guided" (UsageError when it cannot)."""
    if mode not in INPAINT_MODES:
        raise UsageError(f"--mode: {mode!r} is not one of {', '.join(INPAINT_MODES)}")
    if is_concat_model(config):
        if mode == "guided":
            raise UsageError("--mode guided: this is a concat inpainting model (its UNet takes the masked image and "
                             "the mask); use --mode concat or auto")
        return "concat"
    if info.conditioning == "other":
        raise UsageError(f"this model is conditioned on '{info.cond_key}' (e.g. super-resolution), so it cannot "
                         "inpaint; use a concat inpainting model (configs/ldm_inpainting.yaml) or an unconditional, "
                         "text or class model")
    if mode == "concat":
        raise UsageError("--mode concat: this model has no inpainting input (it is not a concat inpainting model); "
                         "use --mode guided or auto")
    return "guided"


def load_pair(pair: Pair, channels: int, size_multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image 1,C,H,W in [-1, 1], mask 1,1,H,W in {0, 1}) of a pair, checked: same size, a model-compatible size,
    and some hole to fill."""
    image = open_image(pair.image, channels, "--image")
    mask = open_image(pair.mask, 1, "--mask")
    if mask.size != image.size:
        raise UsageError(f"--mask: {pair.mask} is {mask.width}x{mask.height} but the image {pair.image} is "
                         f"{image.width}x{image.height} (WxH); they must match")
    check_size(image.height, image.width, size_multiple, f"--image {pair.image}")
    hole = np.asarray(mask, dtype=np.float32) / 255.0 >= MASK_THRESHOLD
    if not hole.any():
        raise UsageError(f"--mask: {pair.mask} marks nothing to fill in (white pixels are the hole)")
    return image_to_tensor(image), torch.from_numpy(hole.astype(np.float32))[None, None]


def known_region(model: Any, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, x0) for the samplers' `mask` / `x0`: keep is 1 on latents whose pixels are all known (so nothing of
    the hole leaks in), x0 the image in diffusion space."""
    x0 = encode_images(model, image)
    return 1.0 - latent_mask(mask.to(x0.device), x0.shape[-2:], mode="any"), x0


@torch.no_grad()
def inpaint(model: Any, mode: str, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
            cond: Any = None, uncond: Any = None, **sampling: Any) -> torch.Tensor:
    """The inpainted image (1,C,H,W in [-1, 1]) of `image` and `mask` (1 = hole) from x_T = `noise`.

    `cond` / `uncond` are a guided model's encoded prompt (None for unconditional models); `sampling` goes to
    `ldm.inference.sampling.sample` (sampler, steps, scale, eta, use_ema, generator, show_progress).
    """
    image, mask = image.to(noise.device), mask.to(noise.device)
    if mode == "concat":
        z = sample(model, noise, cond=inpainting_conditioning(model, apply_mask(image, mask), mask), **sampling)
    else:
        keep, x0 = known_region(model, image, mask)
        z = sample(model, noise, cond=cond, uncond=uncond, mask=keep, x0=x0, **sampling)
    return apply_mask(image, mask) + mask * decode_latents(model, z)
