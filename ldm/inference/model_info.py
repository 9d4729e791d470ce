"""Facts about a diffusion model read from its config alone (no weights built): conditioning kind, classes, sizes.

Scripts use them to check their input (prompt kind, image sizes, EMA, steps) before any model is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.data.batch_keys import CLASS_KEY, TEXT_KEYS
from ldm.errors import UsageError
from ldm.models.diffusion.conditioning import FIRST_STAGE, UNCONDITIONAL
from ldm.models.diffusion.denoising_diffusion import DDPM
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.encoders.modules import ClassEmbedder

IDENTITY_FIRST_STAGE = "IdentityFirstStage"


def argument_default(fn: Any, name: str) -> Any:
    """The default of argument `name` of `fn` (a class or function): config values fall back to it."""
    return inspect.signature(fn).parameters[name].default


@dataclass(frozen=True)
class ModelInfo:
    """What the scripts need to know about a diffusion model before building it.

    `conditioning`: "text", "class", None (unconditional) or "other" (e.g. image-conditioned). `n_classes`: valid
    class labels are 0..n_classes-1 (class models). `factor`: first-stage downsampling (1 in pixel space);
    `size_multiple`: image sides must be multiples of it (factor x the UNet's total downsampling). `image_size`:
    the trained image side (height, width) in pixels. `channels`: image channels; `latent_channels`: the sampler's.
    """

    target: str
    conditioning: str | None
    cond_key: str | None
    n_classes: int | None
    factor: int
    size_multiple: int
    image_size: tuple[int, int]
    channels: int
    latent_channels: int
    num_timesteps: int
    use_ema: bool

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the sampler's state for an image of height x width pixels."""
        return (self.latent_channels, height // self.factor, width // self.factor)


def _conditioning(params: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    """(kind, cond_stage_key, n_classes) from model params."""
    cond_cfg = params.get("cond_stage_config", UNCONDITIONAL)
    if cond_cfg == UNCONDITIONAL or cond_cfg is None:
        return None, None, None
    key = params.get("cond_stage_key", "image")
    if cond_cfg == FIRST_STAGE:
        return "other", key, None
    target = str(cond_cfg.get("target", ""))
    if target.endswith("." + ClassEmbedder.__name__) or key == CLASS_KEY:
        n = int(cond_cfg.get("params", {}).get("n_classes", argument_default(ClassEmbedder, "n_classes")))
        return "class", key, n
    if key in TEXT_KEYS:
        return "text", key, None
    return "other", key, None


def describe_model(config: DictConfig | Mapping[str, Any]) -> ModelInfo:
    """ModelInfo of a merged run config (its `model` section); UsageError for a config that is not a diffusion model."""
    model_cfg = config.get("model") if "model" in config else None
    if model_cfg is None:
        raise UsageError("the config has no model section")
    model = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    params = model.get("params", {}) or {}
    target = str(model.get("target", ""))
    if "unet_config" not in params:
        raise UsageError(f"the model {target} is not a diffusion model (no model.params.unet_config); first-stage "
                         "runs are evaluated with scripts/reconstruct.py")
    kind, key, n_classes = _conditioning(params)
    first = params.get("first_stage_config")
    if isinstance(first, Mapping) and IDENTITY_FIRST_STAGE not in str(first.get("target", "")):
        ddconfig = first.get("params", {}).get("ddconfig", {})
        factor = 2 ** (len(ddconfig.get("ch_mult", [1])) - 1)
        channels = int(ddconfig.get("in_channels", 3))
    else:
        factor, channels = 1, int(params.get("channels", argument_default(DDPM, "channels")))
    unet = params["unet_config"].get("params", {})
    unet_levels = len(unet.get("channel_mult", argument_default(UNetModel, "channel_mult")))
    size = params.get("image_size", argument_default(DDPM, "image_size"))
    side = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    return ModelInfo(target=target, conditioning=kind, cond_key=key, n_classes=n_classes, factor=factor,
                     size_multiple=factor * 2 ** (unet_levels - 1), image_size=(side[0] * factor, side[1] * factor),
                     channels=channels, latent_channels=int(params.get("channels", argument_default(DDPM, "channels"))),
                     num_timesteps=int(params.get("timesteps", argument_default(DDPM, "timesteps"))),
                     use_ema=bool(params.get("use_ema", argument_default(DDPM, "use_ema"))))
