"""The txt2img / img2img loop: prompts x iterations -> batches of seeded samples -> PNGs with metadata + a grid.

Layout (as CompVis / SD): `<outdir>/samples/00000.png, ...` numbered after what is already there, and
`<outdir>/grid-0000.png` per invocation (a row per batch, `n_samples` columns). Image k of an invocation uses seed
`seed + k` for its starting noise, so one image is reproduced with `--seed <its seed> --n_samples 1` (exactly for
deterministic samplers; stochastic ones also draw step noise per batch, from the batch's first seed + 2^32).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ldm.inference import conditioning
from ldm.inference.codec import decode_latents, encode_images
from ldm.inference.devices import autocast
from ldm.inference.entry import DEFAULT_SEED
from ldm.inference.files import next_index, numbered_name
from ldm.inference.images import image_grid, save_png, to_pil
from ldm.inference.model_info import ModelInfo
from ldm.inference.sampling import image_seeds, initial_noise, sample, sampler_eta

SAMPLER_SEED_OFFSET = 1 << 32  # the step-noise generator of a batch: its first image seed + this


@dataclass
class Settings:
    """What a generation run does; every field is written into each image's PNG metadata."""

    sampler: str = "dpmpp_2m"
    steps: int = 50
    scale: float = 1.0
    eta: float | None = None
    seed: int = DEFAULT_SEED
    n_samples: int = 1
    n_iter: int = 1
    height: int = 256
    width: int = 256
    ema: bool = True
    precision: str = "fp32"
    strength: float | None = None  # img2img only
    init_image: str | None = None  # img2img only
    model: str | None = None  # the checkpoint


@dataclass
class Outputs:
    """The files one run wrote."""

    images: list[str]
    grid: str | None


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings as metadata: eta resolved to the sampler's default, unset (None) fields left out."""
    record = {**asdict(settings), "eta": sampler_eta(settings.sampler, settings.eta)}
    return {k: v for k, v in record.items() if v is not None}


def sampler_generator(first_seed: int) -> torch.Generator:
    """The CPU generator of a batch's step noise (stochastic samplers)."""
    return torch.Generator().manual_seed(int(first_seed) + SAMPLER_SEED_OFFSET)


def seeded_samples(model: Any, shape: Sequence[int], values: Sequence[Any] | None, seeds: Sequence[int],
                   sampler: str, steps: int, scale: float, eta: float | None = None, ema: bool = True,
                   device: torch.device | None = None, show_progress: bool = False, **opts: Any) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] for one batch of diffusion-space `shape`: x_T from one seed per image (the same
    noise on any device), conditioning `values` (captions / labels, or None) guided at `scale`, step noise from the
    first seed. Runs in the caller's precision context; `opts` go to the sampler."""
    if values is None and scale != 1.0:
        raise ValueError(f"guidance scale {scale} needs conditioning values (an unconditional batch samples at 1.0)")
    noise = initial_noise(shape, seeds, device if device is not None else model.device)
    cond, uncond = conditioning.guidance_pair(model, values, scale)
    z = sample(model, noise, sampler, steps, cond, uncond, scale if uncond is not None else 1.0, eta, ema,
               sampler_generator(seeds[0]), show_progress, **opts)
    return decode_latents(model, z)


def batch_samples(model: Any, info: ModelInfo, values: Sequence[Any] | None, seeds: Sequence[int],
                  settings: Settings, device: torch.device, dtype: torch.dtype | None = None,
                  init_latent: torch.Tensor | None = None, show_progress: bool = True, **opts: Any) -> torch.Tensor:
    """`seeded_samples` at the settings' size, sampler and guidance, under autocast to `dtype`; `init_latent` (1 or B
    latents) with settings.strength makes it img2img."""
    shape = info.latent_shape(settings.height, settings.width)
    if init_latent is not None:
        opts.update(x_init=init_latent.to(device).expand(len(seeds), *shape), strength=settings.strength)
    with autocast(device, dtype):
        return seeded_samples(model, shape, values, seeds, settings.sampler, settings.steps, settings.scale,
                              settings.eta, settings.ema, device, show_progress, **opts)


def generate(model: Any, info: ModelInfo, prompts: Sequence[str] | None, values: Sequence[Any] | None,
             settings: Settings, outdir: str, device: torch.device, dtype: torch.dtype | None = None,
             init_image: torch.Tensor | None = None, show_progress: bool = True, grid: bool = True) -> Outputs:
    """Run every prompt (None: unconditional) `n_iter` times in batches of `n_samples`, save PNGs and a grid.

    `prompts` are the texts as given (recorded in the metadata), `values` what conditions the model (captions or
    class labels, see `conditioning.check_prompts`). `init_image` (1, C, H, W) in [-1, 1] makes it img2img.
    """
    sample_dir = os.path.join(outdir, "samples")
    os.makedirs(sample_dir, exist_ok=True)
    first = next_index(sample_dir)
    init_latent = None if init_image is None else encode_images(model, init_image)
    record = settings_record(settings)
    paths, images = [], []
    for p, prompt in enumerate(prompts if prompts is not None else [None]):
        value = None if values is None else values[p]
        for _ in range(settings.n_iter):
            seeds = image_seeds(settings.seed, len(paths), settings.n_samples)
            batch_values = None if value is None else [value] * settings.n_samples
            with torch.no_grad():
                out = batch_samples(model, info, batch_values, seeds, settings, device, dtype, init_latent,
                                    show_progress)
            for seed, image in zip(seeds, to_pil(out)):
                meta = {**record, "seed": seed}
                if prompt is not None:
                    meta["prompt"] = prompt
                if info.conditioning == "class":
                    meta["class_label"] = value
                paths.append(save_png(image, os.path.join(sample_dir, numbered_name(first + len(paths))), meta))
                images.append(image)
    grid_path = None
    if grid:
        grid_path = os.path.join(outdir, numbered_name(next_index(outdir, prefix="grid-"), 4, prefix="grid-"))
        save_png(image_grid(images, settings.n_samples), grid_path, {**record, "prompts": prompts})
    return Outputs(paths, grid_path)
