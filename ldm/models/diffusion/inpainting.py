"""Inpainting with latent diffusion (Rombach et al. 2022, sec. 4.5): the concat input and `LatentInpaintDiffusion`.

The UNet sees the noisy latent concatenated with the first-stage latent of the masked image and the mask resized to
the latent size. Two channel layouts exist (`ConcatLayout`):

- Stable Diffusion's inpainting model: [noisy z, mask, masked-image z], mask in {0, 1}, the hole of the masked
  image at 0 (4 + 1 + 4 = 9 channels with a KL-f8 first stage). `LatentInpaintDiffusion` with its defaults.
- The original LDM inpainting checkpoint (`models/ldm/inpainting_big`): a plain `LatentDiffusion` with
  `conditioning_key: concat` and `cond_stage_config: __is_first_stage__`, fed [noisy z, masked-image z, mask] by the
  original `scripts/inpaint.py`, which scaled the mask to {-1, 1} and filled the hole with -1 (black) (3 + 3 + 1 = 7
  channels with VQ-f4). `concat_layout(model)` recognises such a model; `inpainting_conditioning` then builds the
  original's input, so its state_dict loads and samples unchanged.

Masks follow the data convention of `ldm.data.masks`: 1 in the hole. Samplers' `mask` argument means the opposite
(1 = keep `x0`): mask-guided inpainting with models that have no concat input passes `1 - latent_mask(mask, size,
"any")` there (`ldm.inference.inpainting`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ldm.data.masks import MASK_KEY, MASKED_IMAGE_KEY, apply_mask
from ldm.models.diffusion.conditioning import FIRST_STAGE, image_from_batch
from ldm.models.diffusion.first_stage import deterministic_latent
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.util import ConfigError

# How the pixel mask becomes a latent mask: "nearest" (what both original models were trained with, for the concat
# input) or "any" (a latent counts as hole when any of its pixels is: the safe choice for keeping known latents).
LATENT_MASK_MODES = ("nearest", "any")


@dataclass(frozen=True)
class ConcatLayout:
    """The concat input after the noisy latent: `order` of the parts ("mask", "masked_image"), the mask's values
    ({-1, 1} when `signed_mask`, else {0, 1}) and the value the masked image has in the hole (`masked_fill`)."""

    order: tuple[str, ...] = (MASK_KEY, MASKED_IMAGE_KEY)
    signed_mask: bool = False
    masked_fill: float = 0.0

    def __post_init__(self):
        if sorted(self.order) != sorted((MASK_KEY, MASKED_IMAGE_KEY)):
            raise ConfigError(f"an inpainting concat layout orders '{MASK_KEY}' and '{MASKED_IMAGE_KEY}' once each, "
                              f"got {list(self.order)}")


# The original LDM inpainting model (its scripts/inpaint.py `make_batch`: mask * 2 - 1, masked image black).
ORIGINAL_LAYOUT = ConcatLayout(order=(MASKED_IMAGE_KEY, MASK_KEY), signed_mask=True, masked_fill=-1.0)


def latent_mask(mask: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """A B,1,H,W pixel mask resized to the latent `size` (h, w) by `mode` (see LATENT_MASK_MODES)."""
    size = tuple(int(s) for s in size)
    if mode == "nearest":
        return F.interpolate(mask.float(), size=size, mode="nearest")
    if mode == "any":
        return F.adaptive_max_pool2d(mask.float(), size)
    raise ValueError(f"unknown latent mask mode {mode!r}; expected one of {LATENT_MASK_MODES}")


def build_concat(model: Any, masked_image: torch.Tensor, mask: torch.Tensor, layout: ConcatLayout) -> torch.Tensor:
    """The concat conditioning B, C_z + 1, h, w of images B,3,H,W with pixel masks B,1,H,W (1 = hole) in `layout`."""
    if masked_image.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected masked_image B,3,H,W and mask B,1,H,W; got {tuple(masked_image.shape)} and "
                         f"{tuple(mask.shape)}")
    if masked_image.shape[0] != mask.shape[0] or masked_image.shape[2:] != mask.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the image {tuple(masked_image.shape)} "
                         "(same batch size and height x width needed)")
    mask = mask.to(model.device).float()
    z_masked = deterministic_latent(model, apply_mask(masked_image.to(model.device).float(), mask, layout.masked_fill))
    small = latent_mask(mask, z_masked.shape[-2:])
    parts = {MASK_KEY: small * 2 - 1 if layout.signed_mask else small, MASKED_IMAGE_KEY: z_masked}
    return torch.cat([parts[name] for name in layout.order], dim=1)


def unet_in_channels(model: Any) -> int | None:
    """Input channels of the model's UNet (None when it does not say)."""
    return getattr(getattr(model.model, "diffusion_model", None), "in_channels", None)


def is_original_layout(conditioning_key: str | None, first_stage_conditioner: bool, in_channels: int | None,
                       channels: int) -> bool:
    """Whether a LatentDiffusion is an original-style inpainting model: concat conditioning by the first stage
    itself, and a UNet input of 2 x latent channels + 1 (noisy latent, masked-image latent, mask)."""
    return conditioning_key == "concat" and first_stage_conditioner and in_channels == 2 * int(channels) + 1


def concat_layout(model: Any) -> ConcatLayout | None:
    """The model's concat inpainting layout: its own (LatentInpaintDiffusion), ORIGINAL_LAYOUT for an original-style
    LatentDiffusion (`is_original_layout`), else None."""
    own = getattr(model, "inpaint_layout", None)
    if isinstance(own, ConcatLayout):
        return own
    first_stage = getattr(model, "first_stage_model", None)
    by_first_stage = first_stage is not None and getattr(model, "cond_stage_model", None) is first_stage
    if is_original_layout(getattr(model.model, "conditioning_key", None), by_first_stage, unet_in_channels(model),
                          model.channels):
        return ORIGINAL_LAYOUT
    return None


def inpainting_conditioning(model: Any, masked_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The concat input a concat inpainting model (either layout) samples with, for B,3,H,W images in [-1, 1] and
    B,1,H,W masks (1 = hole). The hole of `masked_image` may hold anything: it is set to the layout's fill."""
    layout = concat_layout(model)
    if layout is None:
        raise ValueError(f"{type(model).__name__} is not a concat inpainting model (conditioning_key "
                         f"{getattr(model.model, 'conditioning_key', None)!r}, UNet in_channels "
                         f"{unet_in_channels(model)}); use mask-guided sampling (the samplers' mask / x0) instead")
    return build_concat(model, masked_image, mask, layout)


class LatentInpaintDiffusion(LatentDiffusion):
    """LatentDiffusion with the inpainting concat input built from the batch's `mask` and `masked_image` (SD name).

    `concat_keys` are the batch keys in UNet order (SD: ("mask", "masked_image"); ("masked_image", "mask") with
    `signed_mask: true` and `masked_fill: -1` is the original LDM layout); `masked_image_key` is the one encoded by
    the first stage. The masked image is encoded by the frozen first stage (`cond_stage_config: __is_first_stage__`,
    the original's way), so the UNet needs in_channels = 2 x channels + 1. No classifier-free guidance.
    """

    def __init__(self, first_stage_config: Any, cond_stage_config: Any = FIRST_STAGE,
                 concat_keys: Sequence[str] = (MASK_KEY, MASKED_IMAGE_KEY), masked_image_key: str = MASKED_IMAGE_KEY,
                 signed_mask: bool = False, masked_fill: float = 0.0, *args: Any, **kwargs: Any):
        keys = [str(k) for k in concat_keys]
        if len(keys) != 2 or masked_image_key not in keys:
            raise ConfigError(f"model.params.concat_keys: expected the mask key and masked_image_key "
                              f"'{masked_image_key}' (two batch keys), got {keys}")
        if cond_stage_config != FIRST_STAGE:
            raise ConfigError(f"model.params.cond_stage_config: LatentInpaintDiffusion encodes the masked image with "
                              f"the first stage; set it to {FIRST_STAGE} (text-conditioned inpainting is not "
                              "supported)")
        if kwargs.setdefault("conditioning_key", "concat") != "concat":
            raise ConfigError(f"model.params.conditioning_key: LatentInpaintDiffusion needs 'concat', got "
                              f"{kwargs['conditioning_key']!r}")
        if kwargs.get("cond_stage_trainable"):
            raise ConfigError("model.params.cond_stage_trainable: the first stage is frozen; set it to false")
        if int(kwargs.get("num_timesteps_cond") or 1) != 1:
            raise ConfigError("model.params.num_timesteps_cond: the inpainting input is never noised; use 1")
        kwargs.setdefault("cond_stage_key", masked_image_key)
        self._check_unet_channels(kwargs)
        super().__init__(first_stage_config, cond_stage_config, *args, **kwargs)
        self.concat_keys = tuple(keys)
        self.masked_image_key = masked_image_key
        self.mask_key = next(k for k in keys if k != masked_image_key)
        roles = {masked_image_key: MASKED_IMAGE_KEY, self.mask_key: MASK_KEY}
        self.inpaint_layout = ConcatLayout(tuple(roles[k] for k in keys), bool(signed_mask), float(masked_fill))

    @staticmethod
    def _check_unet_channels(kwargs: Mapping[str, Any]) -> None:
        """A ConfigError when unet_config.params.in_channels is not 2 x channels + 1."""
        channels = int(kwargs.get("channels", 3))
        try:
            in_channels = int(kwargs["unet_config"]["params"]["in_channels"])
        except (KeyError, TypeError):
            return
        if in_channels != 2 * channels + 1:
            raise ConfigError(f"model.params.unet_config.params.in_channels: the inpainting UNet takes the noisy "
                              f"latent, the masked image's latent and the mask: 2 x channels ({channels}) + 1 = "
                              f"{2 * channels + 1}, got {in_channels}")

    def inpainting_conditioning(self, masked_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The concat input for B,3,H,W images in [-1, 1] and B,1,H,W masks (1 = hole), in this model's layout."""
        return build_concat(self, masked_image, mask, self.inpaint_layout)

    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None) -> list:
        """[z, c_concat] (+ [x, xrec], + [masked_image]) as `LatentDiffusion.get_input`, c from the batch's mask and
        masked image (SD `LatentInpaintDiffusion.get_input`)."""
        x = self.get_input_image(batch, bs).to(self.device)
        masked = image_from_batch(batch, self.masked_image_key)[:bs].to(self.device)
        c = self.inpainting_conditioning(masked, image_from_batch(batch, self.mask_key)[:bs])
        return self.input_list(self.training_latent(x), c, x, masked, return_first_stage_outputs,
                               return_original_cond)

    def unconditional_conditioning(self, n: int) -> Any:
        """Inpainting has no null conditioning (no classifier-free guidance)."""
        raise ValueError("LatentInpaintDiffusion has no unconditional input for classifier-free guidance; use "
                         "a guidance scale of 1")

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, sample: bool = True,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """The LatentDiffusion images plus `masked_image`, `mask` (white = hole) and `samples_inpainted` (the
        samples pasted into the hole of the input)."""
        logs = super().log_images(batch, N=N, n_row=n_row, sample=sample, **kwargs)
        x = logs["inputs"]
        if "conditioning" in logs:
            logs["masked_image"] = logs.pop("conditioning")
        mask = image_from_batch(batch, self.mask_key)[: x.shape[0]].to(x.device)
        logs["mask"] = (mask * 2 - 1).expand(-1, 3, -1, -1)
        if "samples" in logs:
            logs["samples_inpainted"] = apply_mask(x, mask) + mask * logs["samples"]
        return logs
