"""Sample batches for evaluation into a folder that resumes: numbered PNGs, then one `.npz` of them all.

`<outdir>/000000.png ...` (image i from seed `seed + i`, class `classes[i % len(classes)]`), `<outdir>/settings.json`
(what made them: a later run with other settings is refused instead of mixing samples), and
`<outdir>/samples_<n>x<H>x<W>x<C>.npz` with `arr_0` (uint8 N,H,W,C) and, for class models, `arr_1` (int64 labels):
the guided-diffusion evaluation layout. A rerun counts the PNGs on disk and makes only the missing ones.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.errors import UsageError
from ldm.inference.files import atomic_write, numbered_indices, numbered_name
from ldm.inference.generate import Settings, batch_samples, settings_record
from ldm.inference.images import save_png, to_pil
from ldm.inference.model_info import ModelInfo
from ldm.inference.sampling import image_seed

DIGITS = 6
SETTINGS_FILE = "settings.json"
# Settings that may change between an interrupted run and its continuation (they do not change any image).
RESUMABLE = ("n", "batch_size")


@dataclass
class EvalSettings(Settings):
    """`Settings` plus the total count, the batch size and the classes to cycle through (class models)."""

    n: int = 50
    batch_size: int = 10
    classes: list[int] | None = field(default=None)


def labels_for(info: ModelInfo, classes: Sequence[int] | None, indices: Sequence[int]) -> list[int] | None:
    """Class label of each image index: `classes` cycled (all the model's classes when None); None if unconditional."""
    if info.conditioning != "class":
        return None
    pool = list(classes) if classes else list(range(info.n_classes))
    return [pool[i % len(pool)] for i in indices]


def check_model(info: ModelInfo) -> None:
    """Evaluation batches need no prompts: unconditional and class-conditional models only."""
    if info.conditioning not in (None, "class"):
        raise UsageError(f"this model is {info.conditioning}-conditional; sample_diffusion makes unconditional or "
                         "class-conditional batches (use scripts/txt2img.py --from-file for prompts)")


def check_classes(info: ModelInfo, classes: Sequence[int] | None) -> list[int] | None:
    """--classes for this model: only class-conditional models take them, each within 0..n_classes-1."""
    if not classes:
        return None
    if info.conditioning != "class":
        raise UsageError("--classes: this model is not class-conditional")
    bad = [c for c in classes if not 0 <= c < info.n_classes]
    if bad:
        raise UsageError(f"--classes: {bad} out of range; this model has classes 0..{info.n_classes - 1}")
    return list(classes)


def _recorded(settings: EvalSettings) -> dict[str, Any]:
    """The settings that decide the images (metadata and settings.json)."""
    return {k: v for k, v in settings_record(settings).items() if k not in RESUMABLE}


def claim_folder(outdir: str, settings: EvalSettings) -> None:
    """Write settings.json, or check that the folder's samples were made with the same settings (UsageError)."""
    path = os.path.join(outdir, SETTINGS_FILE)
    wanted = json.loads(json.dumps(_recorded(settings)))
    if os.path.isfile(path):
        with open(path) as f:
            found = json.load(f)
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        if diff:
            changes = ", ".join(f"{k}: {found.get(k)!r} -> {wanted.get(k)!r}" for k in diff)
            raise UsageError(f"--outdir {outdir} holds samples made with other settings ({changes}); use another "
                             "--outdir, or the same settings to continue")
        return
    atomic_write(path, lambda f: f.write(json.dumps(wanted, indent=2, sort_keys=True).encode()))


def write_npz(outdir: str, n: int, labels: Sequence[int] | None) -> str:
    """Stack PNGs 0..n-1 of `outdir` into `samples_<n>x<H>x<W>x<C>.npz` (arr_0 images, arr_1 labels), atomically."""
    arrays = []
    for i in range(n):
        with Image.open(os.path.join(outdir, numbered_name(i, DIGITS))) as image:
            arrays.append(np.asarray(image))
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    path = os.path.join(outdir, "samples_{}x{}x{}x{}.npz".format(*images.shape))
    data = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, dtype=np.int64)}
    atomic_write(path, lambda f: np.savez(f, **data))
    for old in glob.glob(os.path.join(outdir, "samples_*.npz")):  # an earlier, smaller run's file is stale now
        if os.path.abspath(old) != os.path.abspath(path):
            os.remove(old)
    return path


def fill_folder(model: Any, info: ModelInfo, settings: EvalSettings, outdir: str,
                values_at: Callable[[Sequence[int]], list[Any] | None], device: torch.device,
                dtype: torch.dtype | None = None, show_progress: bool = True) -> dict[str, int]:
    """Make the images 0..n-1 that `outdir` lacks, in batches of settings.batch_size (a bar counts images); returns
    counts. `values_at(indices)` gives their conditioning (captions / labels, recorded in each PNG) or None. The
    folder's settings.json must match (`claim_folder`), so a rerun resumes instead of mixing."""
    from tqdm.auto import tqdm

    os.makedirs(outdir, exist_ok=True)
    claim_folder(outdir, settings)
    done = numbered_indices(outdir) & set(range(settings.n))
    todo = [i for i in range(settings.n) if i not in done]
    record = _recorded(settings)
    value_key = "prompt" if info.conditioning == "text" else "class_label"
    with tqdm(total=settings.n, initial=len(done), desc="samples", unit="img", disable=not show_progress) as bar:
        for start in range(0, len(todo), settings.batch_size):
            indices = todo[start:start + settings.batch_size]
            seeds = [image_seed(settings.seed, i) for i in indices]
            values = values_at(indices)
            with torch.no_grad():
                out = batch_samples(model, info, values, seeds, settings, device, dtype, show_progress=False)
            for k, (i, image) in enumerate(zip(indices, to_pil(out))):
                meta = {**record, "index": i, "seed": seeds[k]}
                if values is not None:
                    meta[value_key] = values[k]
                save_png(image, os.path.join(outdir, numbered_name(i, DIGITS)), meta)
            bar.update(len(indices))
    return {"existing": len(done), "written": len(todo), "total": settings.n}


def sample_folder(model: Any, info: ModelInfo, settings: EvalSettings, outdir: str, device: torch.device,
                  dtype: torch.dtype | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Make the images 0..n-1 that `outdir` lacks (`fill_folder`, classes cycled), then the .npz; returns counts and
    the npz path."""
    counts = fill_folder(model, info, settings, outdir, lambda indices: labels_for(info, settings.classes, indices),
                         device, dtype, show_progress)
    npz = write_npz(outdir, settings.n, labels_for(info, settings.classes, range(settings.n)))
    return {**counts, "npz": npz}
