"""Images in and out: tensors <-> PIL, grids, input images checked for mode, PNGs with settings in text metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ldm.data.transforms import to_float_array, to_rgb
from ldm.data.transforms import to_uint8 as hwc_to_uint8
from ldm.errors import UsageError
from ldm.inference.files import atomic_write

# PNG text chunk holding the generation settings as JSON (prompt, seed, sampler, ...).
METADATA_KEY = "parameters"
GRID_PADDING = 2  # pixels between grid cells (torchvision's make_grid default, as CompVis/SD grids)
# PIL modes that convert to RGB / L without losing anything an 8-bit model could use.
OPAQUE_MODES = ("RGB", "L", "1", "P")
ALPHA_MODES = ("RGBA", "LA", "PA")
IMAGE_CHANNELS = (1, 3)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8 (the data layer's rounding and clipping)."""
    return hwc_to_uint8(images.detach().float().permute(0, 2, 3, 1))


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) floats in [-1, 1] -> one PIL image per sample (RGB, or L for one channel)."""
    arrays = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def image_grid(images: Sequence[Image.Image], ncols: int, padding: int = GRID_PADDING) -> Image.Image:
    """Equal-sized images in rows of `ncols` on a black background with `padding` px between and around cells."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    ncols = max(1, min(int(ncols), len(images)))
    nrows = -(-len(images) // ncols)
    w, h = images[0].size
    grid = Image.new(images[0].mode, (ncols * (w + padding) + padding, nrows * (h + padding) + padding))
    for i, image in enumerate(images):
        row, col = divmod(i, ncols)
        grid.paste(image, (padding + col * (w + padding), padding + row * (h + padding)))
    return grid


def png_info(metadata: Mapping[str, Any] | None) -> PngImagePlugin.PngInfo:
    """PNG text chunks: `metadata` as JSON under METADATA_KEY (plus the prompt on its own, for image viewers)."""
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_text(METADATA_KEY, json.dumps(dict(metadata), sort_keys=True, default=str))
        if metadata.get("prompt") is not None:
            info.add_text("prompt", str(metadata["prompt"]))
    return info


def save_png(image: Image.Image, path: str, metadata: Mapping[str, Any] | None = None) -> str:
    """Write `image` as a PNG atomically (temporary name, then rename) with `metadata` in its text chunks."""
    info = png_info(metadata)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def read_png_metadata(path: str) -> dict[str, Any]:
    """The settings `save_png` stored in a PNG ({} when it has none)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}) or {}
        raw = text.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def open_image(path: str, channels: int = 3, flag: str = "image") -> Image.Image:
    """Open an input image (EXIF orientation applied) as RGB, or L for a one-channel model.

    Errors (UsageError, naming `flag` and the file): missing file, not an image, a mode that is not 8-bit colour or
    grayscale (16-bit, float, CMYK, ...), or transparent pixels (flatten the image first).
    """
    if channels not in IMAGE_CHANNELS:
        raise UsageError(f"{flag}: models with {channels} image channels are not supported (expected 1 or 3)")
    if not os.path.isfile(path):
        raise UsageError(f"{flag}: file not found: {path}")
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw)
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{flag}: {path} is not a readable image ({err})") from None
    transparent = image.mode in ALPHA_MODES or "transparency" in image.info
    if transparent and np.asarray(image.convert("RGBA").getchannel("A")).min() < 255:
        raise UsageError(f"{flag}: {path} has transparent pixels (mode {image.mode}); flatten it onto a "
                         "background first")
    if not transparent and image.mode not in OPAQUE_MODES:
        raise UsageError(f"{flag}: {path} has mode {image.mode}, which is not 8-bit colour or grayscale; convert "
                         "it to RGB (8 bits per channel) first")
    return to_rgb(image) if channels == 3 else image.convert("L")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image -> (1, C, H, W) float32 in [-1, 1] (C = 1 for mode L, else 3)."""
    array = to_float_array(image)
    if image.mode == "L":
        array = array[..., :1]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].contiguous()
