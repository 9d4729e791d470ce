"""Inputs and outputs of the per-image tasks (scripts/inpaint.py, scripts/superres.py): an image file or a folder of
them in; `<outdir>/<input name>.png` per input (settings in the PNG metadata) and a numbered grid out; the flags and
per-input sampler options the two scripts share."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from ldm.data.image_folder import DEFAULT_EXTENSIONS
from ldm.errors import UsageError
from ldm.inference.files import next_index, numbered_name
from ldm.inference.generate import Outputs, sampler_generator
from ldm.inference.images import image_grid, save_png
from ldm.inference.sampling import image_seed, sampler_eta

GRID_PREFIX = "grid-"


def list_images(path: str, flag: str) -> list[str]:
    """[path] for an image file, or the images directly inside a folder (sorted); UsageError naming `flag` when the
    path does not exist or the folder has no images."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f"{flag}: no such file or folder: {path}")
    names = sorted(n for n in os.listdir(path)
                   if not n.startswith(".") and n.lower().endswith(tuple("." + e for e in DEFAULT_EXTENSIONS)))
    if not names:
        raise UsageError(f"{flag}: {path} holds no images ({', '.join(DEFAULT_EXTENSIONS)})")
    return [os.path.join(path, n) for n in names]


def output_path(outdir: str, source: str) -> str:
    """`<outdir>/<source file name without extension>.png` (as the original scripts/inpaint.py names results)."""
    return os.path.join(outdir, os.path.splitext(os.path.basename(source))[0] + ".png")


def save_results(outdir: str, results: Sequence[tuple[str, Image.Image, Mapping[str, Any]]],
                 rows: Sequence[Sequence[Image.Image]], grid: bool = True,
                 grid_metadata: Mapping[str, Any] | None = None) -> Outputs:
    """Write each (source path, result, metadata) as `output_path(outdir, source)`, and, with `grid`, the `rows`
    (one row per input, cells scaled to the first cell's size) as `<outdir>/grid-NNNN.png`."""
    os.makedirs(outdir, exist_ok=True)
    paths = [save_png(image, output_path(outdir, source), meta) for source, image, meta in results]
    grid_path = None
    if grid and rows:
        size = rows[0][0].size
        cells = [cell.convert("RGB").resize(size, Image.Resampling.BICUBIC) if cell.size != size
                 else cell.convert("RGB") for row in rows for cell in row]
        name = numbered_name(next_index(outdir, prefix=GRID_PREFIX), 4, prefix=GRID_PREFIX)
        grid_path = save_png(image_grid(cells, len(rows[0])), os.path.join(outdir, name), grid_metadata)
    return Outputs(paths, grid_path)


def settings_record(args: argparse.Namespace, prep: Any, **extra: Any) -> dict[str, Any]:
    """The run's settings for the PNG metadata: sampler, steps, eta (resolved), EMA, precision, checkpoint."""
    return {"sampler": args.sampler, "steps": args.steps, "eta": sampler_eta(args.sampler, args.eta),
            "ema": prep.ema, "precision": prep.precision, "model": prep.source.ckpt, **extra}


def sampling_options(args: argparse.Namespace, prep: Any, index: int, desc: str) -> tuple[int, dict[str, Any]]:
    """(seed, keyword arguments of `ldm.inference.sampling.sample`) for input number `index` (seed + index)."""
    seed = image_seed(args.seed, index)
    return seed, {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "use_ema": prep.ema,
                  "generator": sampler_generator(seed), "desc": desc}
