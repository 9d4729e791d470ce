"""What scripts/evaluate.py and the SampleMetrics callback share: conditioning taken from validation data, the
settings of a sample folder, reading one back, and deterministic reconstructions. The sampling itself is
`ldm.inference`'s: `eval_samples.fill_folder` (a resumable folder of numbered PNGs) and `generate.seeded_samples`
(one batch in memory).

Image i of an evaluation uses seed `seed + i` and the conditioning of validation item `i % len(items)` (its caption
or class label), so the same settings give the same images, in a folder or in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.inference.eval_samples import DIGITS, EvalSettings
from ldm.inference.files import numbered_name

MAX_CONDITIONING_ITEMS = 1000  # validation items read for captions / labels; image i uses item i % this


@dataclass
class CaptionedSettings(EvalSettings):
    """EvalSettings plus where the captions / labels came from (recorded, so other conditioning is not mixed in)."""

    conditioning: str | None = None


def conditioning_values(dataset: Any, kind: str | None, key: str | None, n: int) -> list[Any] | None:
    """Captions (text models) or class labels (class models) of the first min(n, 1000) validation items, cycled to
    n values; None for unconditional models. A missing key is a ValueError naming it."""
    from ldm.eval.reference import dataset_items

    if kind not in ("text", "class"):
        return None
    values = []
    for i, item in enumerate(dataset_items(dataset, min(n, MAX_CONDITIONING_ITEMS))):
        if key not in item:
            raise ValueError(f"validation item {i} has no {key!r} (keys: {', '.join(sorted(item))}); the model "
                             f"conditions on {key!r}")
        value = item[key]
        if kind == "text":
            value = value[0] if isinstance(value, (list, tuple)) else str(value)
        else:
            value = int(np.asarray(value).reshape(-1)[0])
        values.append(value)
    if not values:
        raise ValueError("the validation data is empty: no captions or class labels to sample from")
    return [values[i % len(values)] for i in range(n)]


def read_samples(outdir: str, n: int) -> torch.Tensor:
    """PNGs 0..n-1 of a sample folder as uint8 (n, 3, H, W)."""
    arrays = []
    for i in range(n):
        with Image.open(os.path.join(outdir, numbered_name(i, DIGITS))) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruct(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Deterministic first-stage reconstruction: the posterior mode for KL models, the quantized code for VQ models."""
    if hasattr(model, "quantize"):
        return model(x)[0]
    return model(x, sample_posterior=False)[0]
