"""Prompts -> conditioning: captions for text models, class labels (an index or a shapes caption) for class models,
and the null conditioning that classifier-free guidance pairs with them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ldm.data import shapes
from ldm.errors import UsageError
from ldm.inference.model_info import ModelInfo

# Guidance scale when --scale is not given, by conditioning kind (1 = no guidance).
DEFAULT_SCALE = {"text": 5.0, "class": 3.0}


def default_scale(info: ModelInfo) -> float:
    """The default --scale for this model: 5 for text, 3 for class-conditional, 1 (no guidance) otherwise."""
    return DEFAULT_SCALE.get(info.conditioning, 1.0)


def class_label(prompt: str, n_classes: int) -> int:
    """A class prompt -> label: an integer in [0, n_classes), or a shapes caption ("a small red circle at the left")
    mapped to its class by `ldm.data.shapes` when the model has the shapes classes. UsageError otherwise."""
    text = str(prompt).strip()
    if text.lstrip("+-").isdigit():
        label = int(text)
        if not 0 <= label < n_classes:
            raise UsageError(f"class {label} is out of range: this model has classes 0..{n_classes - 1}")
        return label
    if n_classes != shapes.NUM_CLASSES:
        raise UsageError(f"prompt {text!r}: this class-conditional model takes class indices 0..{n_classes - 1}")
    try:
        return shapes.class_label_for(shapes.parse_caption(text))
    except ValueError as err:
        raise UsageError(f"prompt {text!r} is neither a class index nor a shapes caption: {err}") from None


def check_prompts(info: ModelInfo, prompts: Sequence[str] | None) -> list[Any] | None:
    """Validate prompts for the model before it loads: captions stay strings, class prompts become labels.

    Unconditional models take no prompts (None); conditional ones need at least one. UsageError otherwise.
    """
    if info.conditioning is None:
        if prompts:
            raise UsageError("this model is unconditional: it takes no --prompt / --from-file")
        return None
    if info.conditioning not in ("text", "class"):
        raise UsageError(f"this model is conditioned on {info.cond_key!r} ({info.conditioning}), not on prompts")
    if not prompts:
        what = "a caption" if info.conditioning == "text" else "a class index or shapes caption"
        raise UsageError(f"this {info.conditioning}-conditional model needs --prompt ({what}) or --from-file")
    if info.conditioning == "class":
        return [class_label(p, info.n_classes) for p in prompts]
    return [str(p) for p in prompts]


def empty_prompt_warnings(info: ModelInfo, prompts: Sequence[str] | None) -> list[str]:
    """A warning per empty caption of a text model: it conditions on the null caption, i.e. the unconditional model.
    (Class models refuse empty prompts; unconditional ones take none.)"""
    if info.conditioning != "text" or not prompts:
        return []
    if len(prompts) == 1:
        return ["--prompt is empty: it samples the unconditional model"] if not prompts[0].strip() else []
    return [f"prompt {k} is empty: it samples the unconditional model"
            for k, prompt in enumerate(prompts, 1) if not prompt.strip()]


def scale_warnings(scale: float) -> list[str]:
    """A warning for a negative guidance scale (0..1 interpolates towards the unconditional model, which is fine)."""
    return [f"--scale {scale:g} is negative: guidance pushes away from the prompt"] if scale < 0 else []


def check_scale(info: ModelInfo, scale: float | None) -> float:
    """--scale resolved (default_scale when None); guidance needs a conditional model and a finite scale."""
    scale = default_scale(info) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise UsageError(f"--scale {scale}: must be a finite number")
    if scale != 1.0 and info.conditioning not in ("text", "class"):
        raise UsageError(f"--scale {scale:g}: classifier-free guidance needs a text or class-conditional model")
    return scale


@torch.no_grad()
def encode(model: Any, values: Sequence[Any] | None) -> Any:
    """Encoded conditioning for a batch of captions or class labels (None for an unconditional model)."""
    if values is None:
        return None
    if all(isinstance(v, int) for v in values):
        return model.get_learned_conditioning(torch.tensor(list(values), dtype=torch.long, device=model.device))
    return model.get_learned_conditioning(list(values))


@torch.no_grad()
def guidance_pair(model: Any, values: Sequence[Any] | None, scale: float) -> tuple[Any, Any]:
    """(cond, uncond) for a batch: uncond is the encoded null input (empty caption, null class) when scale != 1."""
    cond = encode(model, values)
    uncond = model.unconditional_conditioning(len(values)) if values is not None and scale != 1.0 else None
    return cond, uncond
