"""Image loading and the shared resize / crop / flip transform to HWC float32 in [-1, 1] (the CompVis `image` convention)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

# Resampling filters by config name. PIL's filters widen their support when downscaling, so every one of them except
# "nearest" is antialiased; "area" is PIL's box filter (the cv2.INTER_AREA the original SR datasets used).
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
    "box": Image.Resampling.BOX,
}

# Transparent pixels are composited over white, the usual look of an image with alpha on a page.
ALPHA_BACKGROUND = (255, 255, 255)


def resample_filter(name: str) -> Image.Resampling:
    """PIL filter for an interpolation name (`bicubic`, `area`, ...); unknown names are a ValueError listing the choices."""
    try:
        return INTERPOLATIONS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation '{name}'; choose one of {', '.join(INTERPOLATIONS)}") from None


def torch_seeded_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global RNG.

    DataLoader reseeds torch (not numpy) in every worker and `seed_everything` seeds torch in the main process, so
    drawing the seed from torch gives distinct, reproducible augmentations per worker without a worker_init_fn.
    """
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """8-bit grayscale from 16/32-bit integer or float single-channel modes (`I;16*`, `I`, `F`)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        arr = arr.astype(np.float32) / 257.0  # 65535 -> 255
    elif img.mode == "I":
        # PNG 16-bit grayscale may arrive as mode I; values above 255 mean 16-bit data
        arr = arr.astype(np.float32)
        if arr.size and arr.max() > 255:
            arr = np.clip(arr, 0, 65535) / 257.0
    else:  # "F": floats in [0, 1] are normalised intensities, anything larger is taken as 0..255
        arr = arr.astype(np.float32)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: Sequence[int] = ALPHA_BACKGROUND) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: palette, grayscale, CMYK, 16-bit and alpha (composited over `background`)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Open an image file fully decoded as RGB, EXIF orientation applied.

    Decoding happens here (not lazily), so a corrupt or truncated file raises now. `min_side` lets JPEG decode at a
    reduced DCT scale whose shorter side is still at least `min_side` (a large speed-up for big photos).
    """
    img = Image.open(path)
    try:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min_side / max(1, min(w, h))
            if scale < 0.5:  # draft only ever shrinks by powers of two, keeping both sides >= the request
                img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        img.load()
        # exif_transpose returns a new image, so closing the file below leaves the result usable
        out = to_rgb(ImageOps.exif_transpose(img))
        if out is img:
            out = img.copy()
        return out
    finally:
        img.close()


def to_float_array(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> HWC float32 array in [-1, 1] (x / 127.5 - 1, as in the CompVis datasets)."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr / 127.5
    arr -= 1.0
    return arr


def to_uint8(arr: np.ndarray | torch.Tensor) -> np.ndarray:
    """Inverse of `to_float_array`: HWC values in [-1, 1] -> uint8 in [0, 255] (clipped)."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().float().cpu().numpy()
    return np.clip(np.rint((np.asarray(arr, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resized_crop(img: Image.Image, box: Sequence[float], size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resample the source region `box` = (left, top, right, bottom) to a `size` x `size` image in one antialiased pass."""
    return img.resize((size, size), resample_filter(interpolation), box=tuple(float(b) for b in box))


class ImageTransform:
    """Resize the shorter side to `size`, crop `size` x `size` (random or centred), optionally flip, -> HWC [-1, 1].

    Resize-then-crop is done as one resample of the matching source box, which gives the same pixels as the
    two-step version (SmallestMaxSize + crop in the original datasets) without resizing the whole image.
    `size=None` keeps the image as it is (only the flip applies).
    """

    def __init__(self, size: int | None = 256, random_crop: bool = False, flip: bool = False,
                 interpolation: str = "bicubic"):
        if size is not None and (not isinstance(size, (int, np.integer)) or size <= 0):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        self.size = None if size is None else int(size)
        self.random_crop = bool(random_crop)
        self.flip = bool(flip)
        self.interpolation = interpolation
        self._filter = resample_filter(interpolation)

    def resized_size(self, width: int, height: int, out: tuple[int, int] | None = None) -> tuple[int, int]:
        """(rw, rh): the image scaled to cover the crop (`size` x `size`, or (h, w) = `out`), before cropping."""
        oh, ow = out if out is not None else (self.size, self.size)
        scale = max(oh / height, ow / width)
        return max(ow, round(width * scale)), max(oh, round(height * scale))

    def crop_box(self, width: int, height: int, rng: np.random.Generator | None = None,
                 out: tuple[int, int] | None = None) -> tuple[float, ...]:
        """Source-pixel box whose resample is the crop of the resized image: `size` x `size`, or (h, w) = `out`
        from the image scaled to cover it (an aspect-ratio bucket)."""
        oh, ow = out if out is not None else (self.size, self.size)
        rw, rh = self.resized_size(width, height, out)
        if self.random_crop:
            rng = rng if rng is not None else torch_seeded_rng()
            x, y = int(rng.integers(0, rw - ow + 1)), int(rng.integers(0, rh - oh + 1))
        else:
            x, y = (rw - ow) // 2, (rh - oh) // 2
        sx, sy = rw / width, rh / height
        return (x / sx, y / sy, (x + ow) / sx, (y + oh) / sy)

    def crop_image(self, img: Image.Image, rng: np.random.Generator | None = None,
                   out: tuple[int, int] | None = None) -> Image.Image:
        """The transformed 8-bit RGB PIL image (to (h, w) = `out` when given), before the conversion to floats; `rng`
        makes the random crop / flip reproducible."""
        if img.mode != "RGB":
            img = to_rgb(img)
        if self.random_crop or self.flip:
            rng = rng if rng is not None else torch_seeded_rng()
        if self.size is not None or out is not None:
            oh, ow = out if out is not None else (self.size, self.size)
            box = self.crop_box(*img.size, rng=rng, out=(oh, ow))
            img = img.resize((ow, oh), self._filter, box=box)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None,
                 out: tuple[int, int] | None = None) -> np.ndarray:
        """Transform a PIL image (to (h, w) = `out` when given) to HWC float32 in [-1, 1] (see `crop_image`)."""
        return to_float_array(self.crop_image(img, rng, out))

    def __repr__(self) -> str:
        return (f"ImageTransform(size={self.size}, random_crop={self.random_crop}, flip={self.flip}, "
                f"interpolation='{self.interpolation}')")
