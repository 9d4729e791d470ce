"""Checker for the shapes data: reads colour, shape, size and position back from an image and scores captions.

Method (analysis by synthesis, using the renderer's own facts from `ldm.data.shapes`):
1. background colour = per-channel median of the 1-pixel border;
2. object = largest 8-connected component of pixels far from the background;
3. colour = nearest palette colour to the median colour of the object's core;
4. soft coverage alpha = projection of (pixel - background) onto (object colour - background), which undoes the
   anti-aliasing, so area and centroid are sub-pixel accurate;
5. shape = the template (rendered by `shape_coverage` with the measured area and centroid, optionally blurred) that
   best explains alpha in the least-squares sense;
6. size from the extent implied by area and shape, position from the bounding-box centre's third-cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ldm.data.shapes import (ATTRIBUTES, CENTROID_OFFSETS, FILL_RATIOS, PALETTE, POSITION_CELLS, SHAPES,
                             SIZE_THRESHOLD, attributes_for_class, normalize_attributes, parse_caption,
                             shape_coverage)
from ldm.eval.intervals import wilson_interval

NONE = "none"  # reported for every attribute when no object is found; never equal to a target
_CELL_NAMES = {cell: name for name, cell in POSITION_CELLS.items()}
_ROW_NAMES, _COL_NAMES = ("top", "middle", "bottom"), ("left", "middle", "right")
_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.asarray([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float64) / 255.0
_BLUR_SIGMAS = (0.0, 0.75, 1.5)  # template blurs tried, in pixels: generated samples are rarely sharp


def _to_numpy(image: Any) -> np.ndarray:
    """numpy view of an array or tensor; uint8 stays uint8, other tensors become float32 (bf16 has no numpy type)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        return image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    return np.asarray(image)


def to_unit_rgb(image: Any) -> np.ndarray:
    """One image as float64 (H, W, 3) in [0, 1]: uint8 HWC, float HWC/CHW in [-1, 1], numpy or torch."""
    image = _to_numpy(image)
    if image.ndim != 3:
        raise ValueError(f"expected one image with 3 dimensions (HWC or CHW), got shape {image.shape}")
    if image.shape[-1] not in (3, 4) and image.shape[0] in (3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.shape[-1] not in (3, 4):
        raise ValueError(f"expected 3 colour channels, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip((image.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


def iter_images(images: Any) -> list[Any]:
    """Split a batch (B,H,W,C / B,C,H,W array or tensor, or a sequence of images) into single images."""
    if hasattr(images, "detach"):
        images = _to_numpy(images)
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim != 4:
            raise ValueError(f"expected a batch of images (4 dimensions), got shape {images.shape}")
    return list(images)


def _background(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Background colour (median of the border ring) and a robust noise scale of the border."""
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]], axis=0)
    color = np.median(ring, axis=0)
    dist = np.linalg.norm(ring - color, axis=1)
    return color, float(1.4826 * np.median(dist))


def background_color(image: Any) -> np.ndarray:
    """Background colour of one image, RGB in [0, 1] (the median of its 1-pixel border ring)."""
    return _background(to_unit_rgb(image))[0]


def _position_name(cx: float, cy: float) -> str:
    """Position from the third-cell of a centre given as fractions of the side; corner cells are not positions."""
    col, row = int(np.clip(cx * 3.0, 0, 2)), int(np.clip(cy * 3.0, 0, 2))
    return _CELL_NAMES.get((col, row), f"{_ROW_NAMES[row]}-{_COL_NAMES[col]}")


def _not_found(reason: str) -> dict[str, Any]:
    return {**{name: NONE for name in ATTRIBUTES}, "found": False, "reason": reason}


def _segment(rgb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Background colour, connected-component labels (8-connected) of pixels far from it, and their count."""
    background, noise = _background(rgb)
    # Noisy images are segmented after a light blur, which cuts the noise ~3x while keeping thin edges.
    smooth = ndimage.gaussian_filter(rgb, (1.0, 1.0, 0.0)) if noise > threshold / 8.0 else rgb
    mask = np.linalg.norm(smooth - background, axis=-1) > threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return background, labels, count


def _read_object(rgb: np.ndarray, background: np.ndarray, component: np.ndarray,
                 others: np.ndarray | None = None) -> dict[str, Any]:
    """Colour, shape, size and position of one object given its component mask (steps 3-6 of the module doc).

    `others` masks pixels of other objects out of the coverage estimate (multi-object images).
    """
    height, width = rgb.shape[:2]
    core = ndimage.binary_erosion(component)
    core = core if core.sum() >= 4 else component
    observed = np.median(rgb[core], axis=0)
    color = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_RGB - observed, axis=1)))]

    # Soft coverage inside a slightly grown region: recovers the anti-aliased edge, ignores far-away noise.
    region = ndimage.binary_dilation(component, iterations=3)
    if others is not None:
        region &= ~others
    direction = observed - background
    alpha = ((rgb - background) @ direction) / max(float(direction @ direction), 1e-8)
    alpha = np.where(region, np.clip(alpha, -0.5, 1.5), 0.0)
    area = float(alpha.sum())
    if area <= 0:
        return _not_found("object has no coverage")
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = float((alpha * (xs + 0.5)).sum() / area), float((alpha * (ys + 0.5)).sum() / area)

    side = float(min(height, width))
    scores = {}
    for shape in SHAPES:
        extent = np.sqrt(area / FILL_RATIOS[shape])
        center = (cx, cy - CENTROID_OFFSETS[shape] * extent)
        template = shape_coverage(shape, center, extent, (height, width), supersample=4)
        scores[shape] = min(float(((alpha - (ndimage.gaussian_filter(template, s) if s else template)) ** 2).sum())
                            for s in _BLUR_SIGMAS) / area
    shape = min(scores, key=scores.get)
    extent = float(np.sqrt(area / FILL_RATIOS[shape]))
    center_x, center_y = cx / width, (cy - CENTROID_OFFSETS[shape] * extent) / height
    return {
        "color": color,
        "shape": shape,
        "size": "large" if extent / side > SIZE_THRESHOLD else "small",
        "position": _position_name(center_x, center_y),
        "found": True,
        "extent": extent / side,
        "center": (center_x, center_y),
        "area_fraction": area / (height * width),
        "shape_residuals": scores,
        "object_rgb": tuple(float(v) for v in observed),
    }


def detect(image: Any, threshold: float = 0.25, min_area_fraction: float = 0.002) -> dict[str, Any]:
    """Detected `color`, `shape`, `size`, `position` (names, or "none") of the largest object, plus diagnostics.

    `threshold` is the RGB distance (in [0, 1] units) from the background that makes a pixel part of an object.
    """
    rgb = to_unit_rgb(image)
    height, width = rgb.shape[:2]
    background, labels, count = _segment(rgb, threshold)
    if count == 0:
        return _not_found("no pixel differs from the background")
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < max(3, min_area_fraction * height * width):
        return _not_found("largest component is too small")
    return _read_object(rgb, background, labels == (int(np.argmax(sizes)) + 1))


def _split_by_color(rgb: np.ndarray, background: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel object pixels so that touching objects of different colours become separate components.

    Each pixel goes to the palette colour whose background-to-colour line passes nearest to it: anti-aliased edge
    pixels lie on that line (a blend of the object and the background), so edges keep their object's colour.
    """
    pixels = rgb[labels > 0] - background  # (P, 3)
    directions = _PALETTE_RGB - background  # (K, 3)
    alpha = (pixels @ directions.T) / np.maximum((directions ** 2).sum(axis=1), 1e-8)  # (P, K)
    residual = ((pixels[:, None, :] - alpha[..., None] * directions[None]) ** 2).sum(axis=-1)
    residual = np.where(alpha > 0, residual, np.inf)
    nearest = np.full(labels.shape, -1)
    nearest[labels > 0] = np.argmin(residual, axis=1)
    out, count = np.zeros_like(labels), 0
    structure = np.ones((3, 3), dtype=bool)
    for k in range(len(_PALETTE_NAMES)):
        part, n = ndimage.label(nearest == k, structure=structure)
        out[part > 0] = part[part > 0] + count
        count += n
    return out, count


def detect_objects(image: Any, threshold: float = 0.25, min_area_fraction: float = 0.01) -> list[dict[str, Any]]:
    """Every object of an image (components of at least `min_area_fraction` of the image, largest first), each
    read as `detect` reads one; specks smaller than that (noise, stray blobs) are ignored. Touching objects of
    different colours are told apart by colour; touching objects of one colour read as one.

    The default minimum is 1% of the image: a small object (1/6 of the side) covers 1.4-2.8%.
    """
    rgb = to_unit_rgb(image)
    height, width = rgb.shape[:2]
    background, labels, count = _segment(rgb, threshold)
    if count == 0:
        return []
    labels, count = _split_by_color(rgb, background, labels)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = [i + 1 for i in np.argsort(-sizes) if sizes[i] >= max(3, min_area_fraction * height * width)]
    objects = []
    for label in keep:
        found = _read_object(rgb, background, labels == label, others=(labels > 0) & (labels != label))
        if found["found"]:
            objects.append(found)
    return objects


def detect_batch(images: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`detect` for each image of a batch (B,H,W,C or B,C,H,W array/tensor, or a sequence of images)."""
    return [detect(image, **kwargs) for image in iter_images(images)]


def _targets(targets: Any, count: int) -> list[dict[str, str]]:
    """Normalise targets: captions, attribute dicts, class labels, or a collated batch dict of lists."""
    if isinstance(targets, Mapping):
        if "caption" in targets and not all(name in targets for name in ATTRIBUTES):
            targets = targets["caption"]
        else:
            targets = [{name: targets[name][i] for name in ATTRIBUTES} for i in range(count)]
    if hasattr(targets, "tolist"):
        targets = targets.tolist()
    out = []
    for target in targets:
        if isinstance(target, str):
            out.append(parse_caption(target))
        elif isinstance(target, Mapping):
            out.append(normalize_attributes(target))
        else:
            out.append(attributes_for_class(int(target)))
    if len(out) != count:
        raise ValueError(f"got {count} images but {len(out)} targets")
    return out


def _hits(detections: list[dict[str, Any]], wanted: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Per attribute and for `all` four together: a boolean per image, whether the detection matches."""
    if not detections:
        raise ValueError("accuracy() needs at least one image")
    hits = {name: np.array([d[name] == t[name] for d, t in zip(detections, wanted)]) for name in ATTRIBUTES}
    hits["all"] = np.logical_and.reduce([hits[name] for name in ATTRIBUTES])
    return hits


def _scores(detections: list[dict[str, Any]], wanted: list[dict[str, str]]) -> dict[str, float]:
    result = {name: float(hit.mean()) for name, hit in _hits(detections, wanted).items()}
    result["found"] = float(np.mean([d["found"] for d in detections]))
    result["n"] = len(detections)
    return result


def confidence_intervals(hits: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """95% Wilson interval of each accuracy, so that a difference of a few samples is not over-read."""
    return {name: wilson_interval(int(hit.sum()), len(hit)) for name, hit in hits.items()}


def accuracy(images: Any, targets: Sequence[Any] | Mapping[str, Any]) -> dict[str, float]:
    """Fraction of images whose detected attribute matches the target, per attribute and all four together.

    `targets`: captions (parsed with `parse_caption`), attribute dicts, class labels, or a collated shapes batch.
    Also returns `found` (fraction with an object) and `n`.
    """
    return report(images, targets)["accuracy"]


def report(images: Any, targets: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """`accuracy` plus its 95% confidence intervals (`ci95[attribute] = (low, high)`, Wilson) and what went wrong:
    per attribute, how often each target value was read as each value (`confusion[attribute][target][detected]`,
    "none" where no object was found), and the detections per image."""
    detections = detect_batch(images)
    wanted = _targets(targets, len(detections))
    confusion: dict[str, dict[str, dict[str, int]]] = {name: {} for name in ATTRIBUTES}
    for detected, target in zip(detections, wanted):
        for name in ATTRIBUTES:
            row = confusion[name].setdefault(target[name], {})
            row[detected[name]] = row.get(detected[name], 0) + 1
    per_image = [{name: d[name] for name in (*ATTRIBUTES, "found")} for d in detections]
    return {"accuracy": _scores(detections, wanted), "ci95": confidence_intervals(_hits(detections, wanted)),
            "confusion": confusion, "detections": per_image}
