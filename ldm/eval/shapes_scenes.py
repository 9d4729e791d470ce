"""Checker for captions with several objects ("a large red circle at the left and a small blue square at the top").

Each object of the caption must appear at its position: the object detected there (`detect_objects`, the largest if
several) is compared on colour, shape and size. Scores per object (position = an object stands at the asked
position; colour / shape / size = that object has the asked value, wrong when nothing is there; all = all four) and
per image (`scene`: every object of the caption fully right; `count`: as many objects as the caption names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ldm.data.shapes import ATTRIBUTES, parse_caption
from ldm.eval.intervals import wilson_interval
from ldm.eval.shapes import iter_images, detect_objects

OBJECT_SEPARATOR = " and "  # how ShapesDataset(num_objects > 1) joins the parts of a caption
OBJECT_METRICS = (*ATTRIBUTES, "all")
SCENE_METRICS = ("scene", "count")


def parse_scene(caption: str) -> list[dict[str, str]]:
    """The objects of a caption joined by " and " (each part parsed by `parse_caption`)."""
    return [parse_caption(part) for part in caption.split(OBJECT_SEPARATOR)]


def match_objects(wanted: Sequence[dict[str, str]], found: Sequence[dict[str, Any]]) -> list[dict[str, bool]]:
    """Per wanted object, which of its attributes the object detected at its position has."""
    out = []
    for target in wanted:
        there = [d for d in found if d["position"] == target["position"]]  # largest first (detect_objects order)
        got = there[0] if there else None
        hits = {name: got is not None and got[name] == target[name] for name in ATTRIBUTES}
        hits["all"] = all(hits.values())
        out.append(hits)
    return out


def scene_report(images: Any, captions: Sequence[str]) -> dict[str, Any]:
    """Object- and scene-level accuracy (with 95% Wilson intervals) of multi-object captions, plus the detections."""
    images = iter_images(images)
    if len(images) != len(captions) or not captions:
        raise ValueError(f"got {len(images)} images for {len(captions)} captions (need the same, at least one)")
    object_hits: dict[str, list[bool]] = {name: [] for name in OBJECT_METRICS}
    scene_hits: dict[str, list[bool]] = {name: [] for name in SCENE_METRICS}
    detections = []
    for image, caption in zip(images, captions):
        wanted = parse_scene(caption)
        found = detect_objects(image)
        matched = match_objects(wanted, found)
        for hits in matched:
            for name in OBJECT_METRICS:
                object_hits[name].append(hits[name])
        scene_hits["scene"].append(all(h["all"] for h in matched))
        scene_hits["count"].append(len(found) == len(wanted))
        detections.append([{name: d[name] for name in ATTRIBUTES} for d in found])
    hits = {**{f"object_{k}": v for k, v in object_hits.items()}, **scene_hits}
    accuracy = {name: float(np.mean(v)) for name, v in hits.items()}
    accuracy["n_images"], accuracy["n_objects"] = len(captions), len(object_hits["all"])
    ci95 = {name: wilson_interval(int(np.sum(v)), len(v)) for name, v in hits.items()}
    return {"accuracy": accuracy, "ci95": ci95, "detections": detections}
