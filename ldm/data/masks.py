"""Inpainting masks made on the fly: random boxes, random brush strokes, or a random choice between makers.

Convention (the original LDM inpainting one): `mask` is 1 in the hole (the part to fill in) and 0 where the image is
known, and `masked_image = (1 - mask) * image` (`apply_mask`). Makers return (H, W, 1) float32 arrays in {0, 1} and
are deterministic given the numpy generator or seed they are called with. Shapes are drawn by PIL (C loops); the
Python loops run over strokes and boxes, never over pixels. The stroke maker follows the LaMa-style "irregular"
masks the LDM inpainting model was trained with (thick polylines with rounded joints) plus axis-aligned boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image, ImageDraw

# Batch keys of the inpainting task (CompVis / SD names).
MASK_KEY = "mask"
MASKED_IMAGE_KEY = "masked_image"

Range = Union[float, Sequence[float]]
SeedLike = Union[np.random.Generator, int, Sequence[int], None]


def as_rng(seed: SeedLike = None) -> np.random.Generator:
    """A numpy generator from a generator (returned as is), a seed, a seed sequence, or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int side or an (H, W) pair; both must be positive."""
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"mask size must be positive, got {size!r}")
    return h, w


def as_range(value: Range, name: str, low: float = 0.0, high: float | None = None) -> tuple[float, float]:
    """(lo, hi) from a number or a pair, checked to lie in [low, high] with lo <= hi."""
    lo, hi = (float(value), float(value)) if np.isscalar(value) else (float(value[0]), float(value[1]))
    if not (low <= lo <= hi) or (high is not None and hi > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a number or a (lo, hi) pair with lo <= hi in {bound}, got {value!r}")
    return lo, hi


def draw_int(rng: np.random.Generator, bounds: tuple[float, float]) -> int:
    """A uniform integer in [lo, hi] (both inclusive)."""
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def apply_mask(image: Any, mask: Any, fill: float = 0.0) -> Any:
    """`(1 - mask) * image + mask * fill` for numpy arrays or tensors (the hole set to `fill`; 0 by the convention)."""
    out = (1 - mask) * image
    return out + mask * fill if fill else out


def _canvas(h: int, w: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (w, h), 0)
    return canvas, ImageDraw.Draw(canvas)


def _to_mask(canvas: Image.Image) -> np.ndarray:
    return (np.asarray(canvas) > 127).astype(np.float32)[..., None]


class BoxMasks:
    """`num_boxes` axis-aligned rectangles, each side a uniform fraction `side_fraction` of the image side."""

    def __init__(self, num_boxes: Range = (1, 3), side_fraction: Range = (0.1, 0.5)):
        self.num_boxes = as_range(num_boxes, "num_boxes", 1)
        self.side_fraction = as_range(side_fraction, "side_fraction", 0.0, 1.0)

    def __call__(self, size: int | Sequence[int], rng: SeedLike = None) -> np.ndarray:
        """An (H, W, 1) float32 mask, 1 inside the boxes."""
        rng = as_rng(rng)
        h, w = as_size(size)
        n = draw_int(rng, self.num_boxes)
        sides = rng.uniform(*self.side_fraction, size=(n, 2)) * (h, w)
        sides = np.maximum(np.rint(sides), 1).astype(int)
        tops = (rng.random(n) * (h - sides[:, 0] + 1)).astype(int)
        lefts = (rng.random(n) * (w - sides[:, 1] + 1)).astype(int)
        rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
        inside = ((rows >= tops[:, None, None]) & (rows < (tops + sides[:, 0])[:, None, None])
                  & (cols >= lefts[:, None, None]) & (cols < (lefts + sides[:, 1])[:, None, None]))
        return inside.any(axis=0).astype(np.float32)[..., None]

    def __repr__(self) -> str:
        return f"BoxMasks(num_boxes={self.num_boxes}, side_fraction={self.side_fraction})"


class StrokeMasks:
    """`num_strokes` random brush strokes: polylines of `num_vertices` points with a random walk of directions.

    Each stroke starts at a uniform point; each segment turns by at most `max_turn` radians from the previous
    direction and is `step_fraction` of the shorter side long; the brush is `width_fraction` of the shorter side
    wide, with round joints and ends (as LaMa's / the LDM inpainting training masks).
    """

    def __init__(self, num_strokes: Range = (1, 5), num_vertices: Range = (4, 10), width_fraction: Range = (0.04, 0.15),
                 step_fraction: Range = (0.1, 0.3), max_turn: float = np.pi / 2):
        self.num_strokes = as_range(num_strokes, "num_strokes", 1)
        self.num_vertices = as_range(num_vertices, "num_vertices", 2)
        self.width_fraction = as_range(width_fraction, "width_fraction", 0.0, 1.0)
        self.step_fraction = as_range(step_fraction, "step_fraction", 0.0, 1.0)
        self.max_turn = float(max_turn)

    def _points(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """(n, 2) stroke vertices (x, y), clipped to the image."""
        n = draw_int(rng, self.num_vertices)
        short = min(h, w)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-self.max_turn, self.max_turn, n - 1))
        steps = rng.uniform(*self.step_fraction, n - 1) * short
        moves = np.stack([np.cos(heading), np.sin(heading)], axis=1) * steps[:, None]
        start = rng.uniform(0, 1, 2) * (w - 1, h - 1)
        points = np.concatenate([start[None], start + np.cumsum(moves, axis=0)])
        return np.clip(points, 0, (w - 1, h - 1))

    def __call__(self, size: int | Sequence[int], rng: SeedLike = None) -> np.ndarray:
        """An (H, W, 1) float32 mask, 1 under the strokes."""
        rng = as_rng(rng)
        h, w = as_size(size)
        canvas, draw = _canvas(h, w)
        for _ in range(draw_int(rng, self.num_strokes)):
            points = self._points(rng, h, w)
            width = max(1, int(round(rng.uniform(*self.width_fraction) * min(h, w))))
            draw.line([tuple(p) for p in points], fill=255, width=width, joint="curve")
            r = width / 2.0
            for x, y in points[[0, -1]]:  # round caps at both ends
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        return _to_mask(canvas)

    def __repr__(self) -> str:
        return (f"StrokeMasks(num_strokes={self.num_strokes}, num_vertices={self.num_vertices}, "
                f"width_fraction={self.width_fraction}, step_fraction={self.step_fraction})")


MASK_MAKERS = {"boxes": BoxMasks, "strokes": StrokeMasks}


class MixedMasks:
    """Per call, one maker chosen at random: `makers` maps a name in MASK_MAKERS to its keyword arguments, and
    `probabilities` to its chance (equal chances when omitted). Default: boxes or strokes, half the time each."""

    def __init__(self, makers: Mapping[str, Mapping[str, Any] | None] | None = None,
                 probabilities: Mapping[str, float] | None = None):
        makers = dict(makers) if makers is not None else {name: {} for name in MASK_MAKERS}
        unknown = sorted(set(makers) - set(MASK_MAKERS))
        if not makers or unknown:
            raise ValueError(f"MixedMasks: makers must be some of {sorted(MASK_MAKERS)}, got {sorted(makers)}")
        self.names = sorted(makers)
        self.makers = [MASK_MAKERS[name](**dict(makers[name] or {})) for name in self.names]
        probabilities = dict(probabilities or {name: 1.0 for name in self.names})
        if set(probabilities) != set(self.names) or any(p < 0 for p in probabilities.values()):
            raise ValueError(f"MixedMasks: probabilities must give a non-negative chance for each of {self.names}, "
                             f"got {probabilities}")
        weights = np.array([probabilities[name] for name in self.names], dtype=np.float64)
        if weights.sum() <= 0:
            raise ValueError("MixedMasks: the probabilities sum to 0")
        self.probabilities = weights / weights.sum()

    def __call__(self, size: int | Sequence[int], rng: SeedLike = None) -> np.ndarray:
        """An (H, W, 1) float32 mask from one of the makers."""
        rng = as_rng(rng)
        return self.makers[int(rng.choice(len(self.makers), p=self.probabilities))](size, rng)

    def __repr__(self) -> str:
        return f"MixedMasks({dict(zip(self.names, self.probabilities.round(3).tolist()))}, {self.makers})"
