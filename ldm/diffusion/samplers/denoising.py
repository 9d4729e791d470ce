"""What is put around the network before a sampler sees it: classifier-free guidance, the eps/x0/v conversion and
x0 thresholding (`make_denoiser`, the one place for all three), and the inpainting blend: with `mask`, entries where
mask == 1 are taken from `x0` (noised to the current step) before every step and exactly at the end."""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.guidance import guided_model_fn
from ldm.diffusion.noise import randn_like
from ldm.diffusion.parameterization import Denoiser, ModelFn, eps_from_x0

# x0 thresholding switches: "clip" clamps to [-max_value, max_value]; "dynamic" is Imagen's dynamic thresholding.
THRESHOLDINGS = ("clip", "dynamic")
DYNAMIC_THRESHOLD_RATIO = 0.995  # the percentile p of |x0| (Saharia et al. 2022, sec. 2.3)
THRESHOLD_MAX_VALUE = 1.0  # images live in [-1, 1]; latents may want their own bound


def check_inputs(x_T: torch.Tensor, mask: torch.Tensor | None, x0: torch.Tensor | None):
    """Validate x_T / mask / x0 and return (mask, x0) in x_T's dtype and device."""
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise TypeError("x_T must be a floating-point tensor (the starting noise)")
    if mask is None:
        return None, None
    if x0 is None:
        raise ValueError("mask is given but x0 (the known image to keep where mask == 1) is not")
    if tuple(x0.shape) != tuple(x_T.shape):
        raise ValueError(f"x0 shape {tuple(x0.shape)} must equal x_T shape {tuple(x_T.shape)}")
    try:
        shape = torch.broadcast_shapes(mask.shape, x_T.shape)
    except RuntimeError as err:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to x_T {tuple(x_T.shape)}") from err
    if tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to x_T {tuple(x_T.shape)}")
    return mask.to(device=x_T.device, dtype=x_T.dtype), x0.to(device=x_T.device, dtype=x_T.dtype)


def threshold_x0(x0: torch.Tensor, mode: str | None = None, ratio: float = DYNAMIC_THRESHOLD_RATIO,
                 max_value: float = THRESHOLD_MAX_VALUE) -> torch.Tensor:
    """x0 unchanged (None), clamped to [-max_value, max_value] ("clip"), or dynamically thresholded ("dynamic").

    Dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample s = max(quantile(|x0|, ratio), max_value), then
    clamp to [-s, s] and rescale by max_value / s, so saturated predictions are pushed inwards instead of clipped.
    """
    if mode is None:
        return x0
    if mode == "clip":
        return x0.clamp(-max_value, max_value)
    if mode == "dynamic":
        # quantile needs float32/64; one value per sample over all non-batch dims
        s = x0.detach().flatten(1).abs().float().quantile(ratio, dim=1).clamp(min=max_value)
        s = s.to(x0.dtype).view(-1, *((1,) * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)
    raise ValueError(f"unknown thresholding {mode!r}; expected None or one of {THRESHOLDINGS}")


def resolve_thresholding(thresholding: str | None, clip_denoised: bool = False) -> str | None:
    """Merge the original `clip_denoised` flag into the `thresholding` switch (clip_denoised=True means "clip")."""
    if thresholding is not None and thresholding not in THRESHOLDINGS:
        raise ValueError(f"unknown thresholding {thresholding!r}; expected None or one of {THRESHOLDINGS}")
    if clip_denoised:
        if thresholding not in (None, "clip"):
            raise ValueError(f"clip_denoised=True conflicts with thresholding={thresholding!r}; pass one of them")
        return "clip"
    return thresholding


class ThresholdedDenoiser(Denoiser):
    """A Denoiser whose x0 predictions pass through `threshold_x0`, with eps recomputed from the thresholded x0."""

    def __init__(self, model_fn: ModelFn, schedule: Any, parameterization: str, thresholding: str,
                 ratio: float = DYNAMIC_THRESHOLD_RATIO, max_value: float = THRESHOLD_MAX_VALUE):
        super().__init__(model_fn, schedule, parameterization)
        self.thresholding = resolve_thresholding(thresholding)
        self.ratio = float(ratio)
        self.max_value = float(max_value)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Apply this denoiser's thresholding to an x0 prediction."""
        return threshold_x0(x0, self.thresholding, self.ratio, self.max_value)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) at integer t with x0 thresholded and eps consistent with it (as DDIM's clip_denoised)."""
        _, x0 = super().__call__(x, t, cond)
        x0 = self.threshold(x0)
        sqrt_abar, sqrt_1m = self.tables(x)
        view = (-1,) + (1,) * (x.dim() - 1)
        return eps_from_x0(x, x0, sqrt_abar[t].view(view), sqrt_1m[t].view(view)), x0

    def denoise_sigma(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None,
                      quantize: bool = False) -> torch.Tensor:
        """Thresholded x0 from a VE-space input at noise level sigma."""
        return self.threshold(super().denoise_sigma(x, sigma, cond, quantize))


def make_denoiser(model_fn: ModelFn, schedule: Any, parameterization: str, uncond: Any, guidance_scale: float,
                  guidance_rescale: float = 0.0, thresholding: str | None = None,
                  threshold_ratio: float = DYNAMIC_THRESHOLD_RATIO,
                  max_value: float = THRESHOLD_MAX_VALUE) -> Denoiser:
    """Classifier-free guidance (when scale != 1) around model_fn, then the eps/x0 conversion, then x0 thresholding."""
    guided = guided_model_fn(model_fn, uncond, guidance_scale, guidance_rescale)
    if thresholding is None:
        return Denoiser(guided, schedule, parameterization)
    return ThresholdedDenoiser(guided, schedule, parameterization, thresholding, threshold_ratio, max_value)


def blend_known(x: torch.Tensor, mask: torch.Tensor, x0: torch.Tensor, sqrt_abar: torch.Tensor,
                sqrt_1m_abar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Where mask == 1 take x0 noised to the current level, q(x_t | x0); elsewhere keep x (original DDIM inpaint)."""
    known = sqrt_abar * x0 + sqrt_1m_abar * randn_like(x0, generator)
    return mask * known + (1 - mask) * x


def restore_known(x: torch.Tensor, mask: torch.Tensor | None, x0: torch.Tensor | None) -> torch.Tensor:
    """The final sample with the known region (mask == 1) set exactly to x0; x itself without a mask."""
    return x if mask is None else mask * x0 + (1 - mask) * x
