"""Low-resolution inputs for super-resolution: optional blur, downscale by `factor`, optional noise and JPEG.

The order follows the BSR-style degradations of the original LDM super-resolution data (`bsrgan_light`): blur the
high-resolution image, downscale it, add Gaussian noise, re-compress as JPEG. Each optional stage happens with its
probability and draws its strength uniformly from its range; with all probabilities 0 the pipeline is a plain
(antialiased) bicubic downscale. Deterministic given the numpy generator or seed it is called with.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ldm.data.masks import Range, SeedLike, as_range, as_rng, draw_int
from ldm.data.transforms import resample_filter, to_float_array, to_rgb, to_uint8

# Batch key of the low-resolution input (the original `LR_image`).
LR_KEY = "LR_image"
# The original LDM super-resolution factor (bsr_sr: 256 px images from 64 px inputs).
DEFAULT_FACTOR = 4


def _probability(value: float, name: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return p


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Isotropic Gaussian blur with standard deviation `sigma` pixels, reflected borders (exact for small sigma,
    where PIL's box approximation does nothing)."""
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(np.asarray(image, dtype=np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))


class Degradation:
    """HR image -> LR image of size (H // factor, W // factor); H and W must be multiples of `factor`.

    `blur_sigma` is the Gaussian blur's standard deviation in HR pixels, `noise_sigma` the additive noise's standard
    deviation in 0..255 levels, `jpeg_quality` the JPEG quality (1..95); `interpolation` is any of
    `ldm.data.transforms.INTERPOLATIONS` (PIL filters are antialiased when downscaling).
    """

    def __init__(self, factor: int = DEFAULT_FACTOR, interpolation: str = "bicubic", blur_prob: float = 0.0,
                 blur_sigma: Range = (0.2, 2.0), noise_prob: float = 0.0, noise_sigma: Range = (1.0, 10.0),
                 jpeg_prob: float = 0.0, jpeg_quality: Range = (30, 95)):
        if int(factor) != factor or int(factor) < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        self.interpolation = interpolation
        self._filter = resample_filter(interpolation)
        self.blur_prob = _probability(blur_prob, "blur_prob")
        self.blur_sigma = as_range(blur_sigma, "blur_sigma")
        self.noise_prob = _probability(noise_prob, "noise_prob")
        self.noise_sigma = as_range(noise_sigma, "noise_sigma")
        self.jpeg_prob = _probability(jpeg_prob, "jpeg_prob")
        self.jpeg_quality = as_range(jpeg_quality, "jpeg_quality", 1, 95)

    def lr_size(self, size: Sequence[int]) -> tuple[int, int]:
        """(h, w) of the LR image for an HR (H, W); a ValueError when H or W is not a multiple of the factor."""
        h, w = int(size[0]), int(size[1])
        if h % self.factor or w % self.factor:
            raise ValueError(f"super-resolution x{self.factor}: the image size {h}x{w} is not a multiple of the "
                             f"factor; use a size divisible by {self.factor}")
        return h // self.factor, w // self.factor

    def __call__(self, image: Image.Image, rng: SeedLike = None) -> Image.Image:
        """The degraded LR version of an RGB PIL image."""
        rng = as_rng(rng)
        image = to_rgb(image)
        h, w = self.lr_size((image.height, image.width))
        # One draw per stage whether or not it fires, so each stage's randomness does not depend on the others.
        fire = rng.random(3) < (self.blur_prob, self.noise_prob, self.jpeg_prob)
        if fire[0]:
            image = gaussian_blur(image, float(rng.uniform(*self.blur_sigma)))
        image = image.resize((w, h), self._filter)
        if fire[1]:
            sigma = float(rng.uniform(*self.noise_sigma))
            noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, sigma, (h, w, 3)).astype(np.float32)
            image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
        if fire[2]:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=draw_int(rng, self.jpeg_quality))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                image = decoded.convert("RGB")
        return image

    def degrade_array(self, image: np.ndarray, rng: SeedLike = None) -> np.ndarray:
        """HWC float32 in [-1, 1] (the batch convention) -> the LR image, HWC float32 in [-1, 1]."""
        return to_float_array(self(Image.fromarray(to_uint8(image)), rng))

    def __repr__(self) -> str:
        return (f"Degradation(x{self.factor}, {self.interpolation}, blur {self.blur_prob}:{self.blur_sigma}, "
                f"noise {self.noise_prob}:{self.noise_sigma}, jpeg {self.jpeg_prob}:{self.jpeg_quality})")
