"""Procedural text-to-image data whose captions can be checked: one anti-aliased shape on a light background.

Every fact about the data (palette, attribute lists, geometry, caption templates, the class-label layout) lives in
the constant block below; `ldm.eval.shapes` imports it so the checker and the renderer can never disagree.

Class label (``class_label``), 3 * 4 * 2 * 5 = 120 classes::

    class_label = ((shape * len(COLORS) + color) * len(SIZES) + size) * len(POSITIONS) + position

with every attribute given by its index in SHAPES / COLORS / SIZES / POSITIONS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

# ---------------------------------------------------------------------------------------------------------------
# The one place for the data's facts.
# ---------------------------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
ATTRIBUTES = ("shape", "color", "size", "position")  # the order used by the class label (major to minor)
VOCABULARY = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
NUM_CLASSES = len(SHAPES) * len(COLORS) * len(SIZES) * len(POSITIONS)

PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
BACKGROUND_RANGE = (225, 250)  # each background channel is drawn uniformly from this range: light, plain
# Object extent (bounding-box side) as a fraction of the image side.
SIZE_FRACTIONS = {"small": 1.0 / 6.0, "large": 1.0 / 3.0}
# Threshold between the two sizes: the geometric mean, equally far (in ratio) from both.
SIZE_THRESHOLD = math.sqrt(SIZE_FRACTIONS["small"] * SIZE_FRACTIONS["large"])
# Area of the shape over the area of its bounding box (the triangle points up, base = height = extent).
FILL_RATIOS = {"circle": math.pi / 4.0, "square": 1.0, "triangle": 0.5}
# Downward offset of the area centroid from the bounding-box centre, as a fraction of the extent.
CENTROID_OFFSETS = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6.0}
# (column, row) of each position's third-cell; the object's bounding-box centre lies in that cell.
POSITION_CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}
EDGE_MARGIN = 0.03  # minimum gap between the object and the image border (fraction of the side)
PLACEMENT_TRIES = 20  # multi-object images: redraws of a later object's jitter to keep it clear of earlier ones

CAPTION_TEMPLATES = (
    "a {size} {color} {shape} at the {position}",  # canonical
    "{size} {color} {shape}, {position}",
    "a {color} {shape} ({size}) in the {position}",
    "a {size} {shape} in {color} at the {position}",
    "{position}: a {size} {color} {shape}",
    "there is a {size} {color} {shape} in the {position}",
)
SPLIT_CODES = {"train": 0, "validation": 1, "val": 1, "test": 2}
# ---------------------------------------------------------------------------------------------------------------


def normalize_attributes(attributes: Mapping[str, Any]) -> dict[str, str]:
    """Attributes as names; accepts names or indices (ints, numpy or 0-d torch values) for each of ATTRIBUTES."""
    out = {}
    for name in ATTRIBUTES:
        if name not in attributes:
            raise KeyError(f"attributes need the key '{name}' (got keys {sorted(attributes)})")
        value = attributes[name]
        choices = VOCABULARY[name]
        if hasattr(value, "item") and not isinstance(value, str):
            value = value.item()
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(choices):
                raise ValueError(f"{name} index {value} is out of range 0..{len(choices) - 1}")
            value = choices[int(value)]
        if value not in choices:
            raise ValueError(f"unknown {name} '{value}'; expected one of {choices}")
        out[name] = value
    return out


def class_label_for(attributes: Mapping[str, Any]) -> int:
    """Class index of an attribute combination (layout in the module docstring)."""
    attrs = normalize_attributes(attributes)
    label = 0
    for name in ATTRIBUTES:
        label = label * len(VOCABULARY[name]) + VOCABULARY[name].index(attrs[name])
    return label


def attributes_for_class(label: int) -> dict[str, str]:
    """Inverse of `class_label_for`."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class label {label} is out of range 0..{NUM_CLASSES - 1}")
    out = {}
    for name in reversed(ATTRIBUTES):
        label, index = divmod(label, len(VOCABULARY[name]))
        out[name] = VOCABULARY[name][index]
    return {name: out[name] for name in ATTRIBUTES}


def caption_for(attributes: Mapping[str, Any], template: int | str = 0) -> str:
    """Caption of one object; `template` is an index into CAPTION_TEMPLATES (0 = canonical) or a format string."""
    fmt = CAPTION_TEMPLATES[template] if isinstance(template, int) else template
    return fmt.format(**normalize_attributes(attributes))


def _template_regex(template: str) -> re.Pattern:
    """Regex that matches a caption template and captures each attribute by name."""
    pattern = re.escape(template)
    for name, words in VOCABULARY.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{'|'.join(words)})")
    return re.compile(r"^\s*" + pattern.replace(r"\ ", r"\s+") + r"\s*\.?\s*$", re.IGNORECASE)


_TEMPLATE_REGEXES = tuple(_template_regex(t) for t in CAPTION_TEMPLATES)


def parse_caption(caption: str) -> dict[str, str]:
    """Attributes of a one-object caption: any of CAPTION_TEMPLATES, else exactly one keyword per attribute."""
    for regex in _TEMPLATE_REGEXES:
        match = regex.match(caption)
        if match:
            return {name: match.group(name).lower() for name in ATTRIBUTES}
    words = re.findall(r"[a-z]+", caption.lower())
    out = {}
    for name in ATTRIBUTES:
        found = sorted({w for w in words if w in VOCABULARY[name]})
        if len(found) != 1:
            raise ValueError(f"cannot parse caption {caption!r}: expected exactly one {name} word from "
                             f"{VOCABULARY[name]}, found {found or 'none'}")
        out[name] = found[0]
    return out


def shape_coverage(shape: str, center: tuple[float, float], extent: float, size: int | tuple[int, int],
                   supersample: int = 8) -> np.ndarray:
    """Anti-aliased coverage (H, W float32 in [0, 1]) of a shape by supersampling.

    `center` is the bounding-box centre and `extent` the bounding-box side, both in pixels (pixel (i, j) covers
    [j, j+1] x [i, i+1]). The triangle points up with base = height = extent. Only the shape's window is sampled.
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    out = np.zeros((height, width), dtype=np.float32)
    half = extent / 2.0
    cx, cy = center
    x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)), width)
    y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)), height)
    if x1 <= x0 or y1 <= y0 or extent <= 0:
        return out
    s = int(supersample)
    xs = x0 + (np.arange((x1 - x0) * s, dtype=np.float64) + 0.5) / s - cx
    ys = y0 + (np.arange((y1 - y0) * s, dtype=np.float64) + 0.5) / s - cy
    dx, dy = xs[None, :], ys[:, None]
    if shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":
        inside = (dy <= half) & (np.abs(dx) <= (dy + half) / 2.0)
    else:
        raise ValueError(f"unknown shape '{shape}'; expected one of {SHAPES}")
    cover = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
    out[y0:y1, x0:x1] = cover
    return out


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Uniformly random attribute combination."""
    return attributes_for_class(int(rng.integers(NUM_CLASSES)))


def place_object(attributes: Mapping[str, Any], rng: np.random.Generator, size_jitter: float = 0.1,
                 position_jitter: float = 0.06) -> tuple[tuple[float, float], float]:
    """Bounding-box centre (x, y) and extent of an object, as fractions of the image side.

    The centre is its position's cell centre plus uniform jitter of +-`position_jitter`, kept inside the image with
    EDGE_MARGIN; the extent is the size fraction times 1 +- `size_jitter`.
    """
    attrs = normalize_attributes(attributes)
    extent = SIZE_FRACTIONS[attrs["size"]] * (1.0 + rng.uniform(-size_jitter, size_jitter))
    col, row = POSITION_CELLS[attrs["position"]]
    lo, hi = extent / 2.0 + EDGE_MARGIN, 1.0 - extent / 2.0 - EDGE_MARGIN
    jitter = rng.uniform(-position_jitter, position_jitter, size=2)
    cx = float(np.clip((col + 0.5) / 3.0 + jitter[0], lo, hi))
    cy = float(np.clip((row + 0.5) / 3.0 + jitter[1], lo, hi))
    return (cx, cy), float(extent)


def _overlaps(box: tuple[float, float, float], others: list[tuple[float, float, float]], gap: float) -> bool:
    """Whether a bounding box (cx, cy, extent) comes within `gap` of any of `others` (all fractions of the side)."""
    return any(abs(box[0] - o[0]) < (box[2] + o[2]) / 2 + gap and abs(box[1] - o[1]) < (box[2] + o[2]) / 2 + gap
               for o in others)


def render_shape(attributes: Mapping[str, Any] | Sequence[Mapping[str, Any]], size: int = 64,
                 rng: np.random.Generator | int | None = None, size_jitter: float = 0.1,
                 position_jitter: float = 0.06, supersample: int | None = None) -> np.ndarray:
    """Render one object (or a list of objects, drawn in order) on a light plain background: uint8 (H, W, 3).

    With several objects, each later object's jitter is redrawn (up to PLACEMENT_TRIES times) until its bounding box
    keeps a one-pixel gap from the earlier ones, so objects touch only where their sizes and cells leave no room.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    objects = [attributes] if isinstance(attributes, Mapping) else list(attributes)
    if supersample is None:
        supersample = 8 if size <= 256 else 4
    background = rng.uniform(*BACKGROUND_RANGE, size=3)
    image = np.broadcast_to(background, (size, size, 3)).astype(np.float64)
    boxes: list[tuple[float, float, float]] = []
    for obj in objects:
        attrs = normalize_attributes(obj)
        (cx, cy), extent = place_object(attrs, rng, size_jitter, position_jitter)
        for _ in range(PLACEMENT_TRIES if boxes else 0):
            if not _overlaps((cx, cy, extent), boxes, 1.0 / size):
                break
            (cx, cy), extent = place_object(attrs, rng, size_jitter, position_jitter)
        boxes.append((cx, cy, extent))
        alpha = shape_coverage(attrs["shape"], (cx * size, cy * size), extent * size, size, supersample)
        color = np.asarray(PALETTE[attrs["color"]], dtype=np.float64)
        image = image + alpha[..., None] * (color - image)  # "over" compositing with coverage as alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class ShapesDataset(Dataset):
    """Deterministic shapes-with-captions dataset (batch keys: image HWC [-1, 1], caption, class_label, attributes).

    Item `i` depends only on (seed, split, i): attributes, jitter, background and caption template are drawn from
    `np.random.default_rng([seed, split code, i])`, so any worker or process sees the same data. `length` sets the
    epoch size (any size is valid: the data are procedural). `paraphrase_prob` is the chance of a non-canonical
    caption template. With `balanced=True` item `i` has class `i % 120`, so every 120 consecutive items cover all
    combinations. `num_objects > 1` draws that many objects at distinct positions (caption parts joined by " and ";
    the attribute keys and class_label then describe the first object, all objects are under `objects`). A list
    such as `[1, 2]` draws the count per item uniformly from it (a mix of one- and two-object scenes; items then
    have no `objects` key, since batches of different counts cannot be collated: the caption names them all).
    """

    def __init__(self, size: int = 64, length: int = 10000, split: str = "train", seed: int = 0,
                 paraphrase_prob: float = 0.0, num_objects: int | Sequence[int] = 1, size_jitter: float = 0.1,
                 position_jitter: float = 0.06, balanced: bool = False):
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split '{split}'; expected one of {sorted(SPLIT_CODES)}")
        counts = (num_objects,) if isinstance(num_objects, (int, np.integer)) else tuple(num_objects)
        if not counts or not all(isinstance(c, (int, np.integer)) and 1 <= c <= len(POSITIONS) for c in counts):
            raise ValueError(f"num_objects must be in 1..{len(POSITIONS)} (one object per position), or a list of "
                             f"such counts, got {num_objects}")
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if not 0.0 <= paraphrase_prob <= 1.0:
            raise ValueError(f"paraphrase_prob must be in [0, 1], got {paraphrase_prob}")
        self.size, self.length, self.split, self.seed = int(size), int(length), split, int(seed)
        self.object_counts = tuple(int(c) for c in counts)
        self.num_objects = max(self.object_counts)  # the most objects an item may hold
        self.paraphrase_prob, self.balanced = float(paraphrase_prob), balanced
        self.size_jitter, self.position_jitter = float(size_jitter), float(position_jitter)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])

    def _index(self, index: int) -> int:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        return index

    def _objects(self, index: int, rng: np.random.Generator) -> list[dict[str, str]]:
        first = attributes_for_class(index % NUM_CLASSES) if self.balanced else sample_attributes(rng)
        objects = [first]
        count = self.object_counts[0]
        if len(self.object_counts) > 1:
            count = self.object_counts[int(rng.integers(len(self.object_counts)))]
        if count > 1:
            free = [p for p in POSITIONS if p != first["position"]]
            for position in rng.permutation(free)[: count - 1]:
                extra = sample_attributes(rng)
                extra["position"] = str(position)
                objects.append(extra)
        return objects

    def attributes(self, index: int) -> dict[str, str]:
        """Attributes of the (first) object of item `index`, without rendering."""
        index = self._index(index)
        return self._objects(index, self._rng(index))[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        rng = self._rng(index)
        objects = self._objects(index, rng)
        pixels = render_shape(objects, self.size, rng, self.size_jitter, self.position_jitter)
        parts = []  # caption draws come after rendering, so paraphrase_prob never changes the image
        for obj in objects:
            template = 0
            if self.paraphrase_prob > 0 and rng.random() < self.paraphrase_prob:
                template = int(rng.integers(1, len(CAPTION_TEMPLATES)))
            parts.append(caption_for(obj, template))
        item = {
            "image": (pixels.astype(np.float32) / 127.5 - 1.0),
            "caption": " and ".join(parts),
            "class_label": class_label_for(objects[0]),
            **objects[0],
        }
        if len(self.object_counts) == 1 and self.num_objects > 1:
            item["objects"] = objects
        return item


class ShapesTrain(ShapesDataset):
    """Training split (for `data.params.train` configs)."""

    def __init__(self, **kwargs):
        kwargs.pop("split", None)
        super().__init__(split="train", **kwargs)


class ShapesValidation(ShapesDataset):
    """Validation split: a different random stream from training (default length 1200 = 10 per class)."""

    def __init__(self, length: int = 1200, **kwargs):
        kwargs.pop("split", None)
        super().__init__(length=length, split="validation", **kwargs)
