"""Text-conditioning quality of a model trained on the shapes data: sample from captions, check the samples.

`evaluation_captions` gives a balanced, seeded set of canonical captions; `generate` samples them from a text- or
class-conditional `LatentDiffusion` with any registered sampler; `evaluate` runs both and scores the images with
the checker in `ldm.eval.shapes` (chance: color 1/4, shape 1/3, size 1/2, position 1/5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ldm.data.shapes import (NUM_CLASSES, POSITIONS, attributes_for_class, caption_for, class_label_for,
                             parse_caption)
from ldm.eval.shapes import report
from ldm.eval.shapes_scenes import OBJECT_SEPARATOR, scene_report
from ldm.inference.codec import decode_latents

CHANCE = {"shape": 1 / 3, "color": 1 / 4, "size": 1 / 2, "position": 1 / 5}


def evaluation_captions(n: int, seed: int = 0) -> list[str]:
    """n canonical captions covering the 120 attribute combinations as evenly as possible, in a seeded order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    while len(labels) < n:
        labels.extend(rng.permutation(NUM_CLASSES).tolist())
    return [caption_for(attributes_for_class(label)) for label in labels[:n]]


def scene_captions(n: int, num_objects: int = 2, seed: int = 0) -> list[str]:
    """n canonical captions of `num_objects` objects at distinct positions (joined as ShapesDataset joins them):
    the first object runs through the 120 combinations as `evaluation_captions` does, the others are random."""
    if not 1 <= num_objects <= len(POSITIONS):
        raise ValueError(f"num_objects must be in 1..{len(POSITIONS)}, got {num_objects}")
    rng = np.random.default_rng([seed, num_objects])
    captions = []
    for first in evaluation_captions(n, seed):
        objects = [parse_caption(first)]
        free = [p for p in POSITIONS if p != objects[0]["position"]]
        for position in rng.permutation(free)[: num_objects - 1]:
            extra = attributes_for_class(int(rng.integers(NUM_CLASSES)))
            extra["position"] = str(position)
            objects.append(extra)
        captions.append(OBJECT_SEPARATOR.join(caption_for(obj) for obj in objects))
    return captions


def raw_conditioning(model: Any, captions: Sequence[str]) -> Any:
    """The conditioner's raw input for shapes captions: the captions for text models, class labels for class ones."""
    key = getattr(model, "cond_stage_key", "caption")
    if key == "class_label":
        labels = [class_label_for(parse_caption(c)) for c in captions]
        return {"class_label": torch.tensor(labels, dtype=torch.long, device=model.device)}
    if key == "caption":
        return list(captions)
    raise ValueError(f"model conditions on {key!r}; shapes evaluation needs cond_stage_key 'caption' or "
                     "'class_label'")


@torch.no_grad()
def generate(model: Any, captions: Sequence[str], sampler: str = "ddim", steps: int = 50, scale: float = 1.0,
             seed: int = 0, batch_size: int = 16, use_ema: bool = True, **sampler_opts: Any) -> torch.Tensor:
    """Images B,C,H,W in [-1, 1] for `captions`, in batches, from one seeded generator (reproducible)."""
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start:start + batch_size])
        cond = model.get_learned_conditioning(raw_conditioning(model, chunk))
        uncond = model.unconditional_conditioning(len(chunk)) if scale != 1.0 else None
        z = model.sample(cond=cond, batch_size=len(chunk), sampler=sampler, steps=steps, use_ema=use_ema,
                         unconditional_conditioning=uncond, unconditional_guidance_scale=scale,
                         generator=generator, **sampler_opts)
        out.append(decode_latents(model, z).cpu())
    return torch.cat(out)


def evaluate(model: Any, n: int = 64, seed: int = 0, num_objects: int = 1,
             **generate_kwargs: Any) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """(images, captions, report) for n balanced captions: `report["accuracy"]` per attribute, `all`, `found`, `n`,
    `report["ci95"]`, `report["confusion"]` and per-image `report["detections"]` (see `ldm.eval.shapes.report`).

    With `num_objects` > 1 the captions name that many objects and the report is `ldm.eval.shapes_scenes.
    scene_report`'s (object- and scene-level accuracy); class-conditional models have one object per label.
    """
    if num_objects > 1:
        if getattr(model, "cond_stage_key", "caption") != "caption":
            raise ValueError("captions with several objects need a text-conditional model")
        captions = scene_captions(n, num_objects, seed)
        images = generate(model, captions, seed=seed, **generate_kwargs)
        return images, captions, scene_report(images, captions)
    captions = evaluation_captions(n, seed)
    images = generate(model, captions, seed=seed, **generate_kwargs)
    return images, captions, report(images, captions)
