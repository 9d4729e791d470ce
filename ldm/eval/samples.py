"""What scripts/evaluate.py and the SampleMetrics callback share: conditioning taken from validation data, seeded
batches of samples (into a resumable folder of numbered PNGs, or in memory), and deterministic reconstructions.

Image i of an evaluation uses seed `seed + i` and the conditioning of validation item `i % len(items)` (its caption
or class label), so the same settings give the same images, in a folder or in training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.inference.eval_samples import DIGITS, EvalSettings, claim_folder
from ldm.inference.files import numbered_indices, numbered_name

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


def sample_into_folder(model: Any, info: Any, settings: CaptionedSettings, values: Sequence[Any] | None,
                       outdir: str, device: torch.device, dtype: torch.dtype | None = None,
                       show_progress: bool = True) -> dict[str, int]:
    """Make the numbered PNGs 0..n-1 that `outdir` lacks (batches of settings.batch_size, a progress bar); returns
    counts. The folder's settings.json must match (`claim_folder`), so a rerun resumes instead of mixing."""
    from tqdm.auto import tqdm

    from ldm.inference.generate import batch_samples, settings_record
    from ldm.inference.images import save_png, to_pil
    from ldm.inference.sampling import image_seed

    os.makedirs(outdir, exist_ok=True)
    claim_folder(outdir, settings)
    done = numbered_indices(outdir) & set(range(settings.n))
    todo = [i for i in range(settings.n) if i not in done]
    record = {k: v for k, v in settings_record(settings).items() if k not in ("n", "batch_size")}
    with tqdm(total=settings.n, initial=len(done), desc="samples", unit="img", disable=not show_progress) as bar:
        for start in range(0, len(todo), settings.batch_size):
            indices = todo[start:start + settings.batch_size]
            seeds = [image_seed(settings.seed, i) for i in indices]
            batch_values = None if values is None else [values[i] for i in indices]
            with torch.no_grad():
                out = batch_samples(model, info, batch_values, seeds, settings, device, dtype, show_progress=False)
            for k, (i, image) in enumerate(zip(indices, to_pil(out))):
                meta = {**record, "index": i, "seed": seeds[k]}
                if batch_values is not None:
                    meta["prompt" if info.conditioning == "text" else "class_label"] = batch_values[k]
                save_png(image, os.path.join(outdir, numbered_name(i, DIGITS)), meta)
            bar.update(len(indices))
    return {"existing": len(done), "written": len(todo), "total": settings.n}


def read_samples(outdir: str, n: int) -> torch.Tensor:
    """PNGs 0..n-1 of a sample folder as uint8 (n, 3, H, W)."""
    arrays = []
    for i in range(n):
        with Image.open(os.path.join(outdir, numbered_name(i, DIGITS))) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def generate_batch(model: Any, values: Sequence[Any] | None, seeds: Sequence[int], sampler: str, steps: int,
                   scale: float, use_ema: bool = True) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] from a loaded diffusion model: one seeded x_T per image (the same noise on any
    device), guided by `scale` when `values` (captions / class labels) are given."""
    from ldm.inference.codec import decode_latents
    from ldm.inference.conditioning import guidance_pair
    from ldm.inference.generate import sampler_generator
    from ldm.inference.sampling import initial_noise, sample

    noise = initial_noise(model.sample_shape(), seeds, model.device)
    cond, uncond = guidance_pair(model, values, scale)
    z = sample(model, noise, sampler, steps, cond, uncond, scale if values is not None else 1.0, None, use_ema,
               sampler_generator(seeds[0]), show_progress=False)
    return decode_latents(model, z)


@torch.no_grad()
def reconstruct(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Deterministic first-stage reconstruction: the posterior mode for KL models, the quantized code for VQ models."""
    if hasattr(model, "quantize"):
        return model(x)[0]
    return model(x, sample_posterior=False)[0]
