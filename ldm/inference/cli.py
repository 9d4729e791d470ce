"""What the sampling scripts share once their arguments are parsed: the checks done before loading (model, output
folder, whether a batch fits in memory), warnings, and generation with a report. Their flags and the error handling
live in the torch-free `ldm.inference.entry`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ldm.errors import UsageError
from ldm.inference.conditioning import check_prompts, check_scale, empty_prompt_warnings, scale_warnings
from ldm.inference.devices import autocast_dtype, check_device
from ldm.inference.generate import Outputs, Settings, generate
from ldm.inference.loading import ModelSource, load_model, resolve_source
from ldm.inference.memory import check_fits, diffusion_batch_bytes
from ldm.inference.model_info import ModelInfo, describe_model
from ldm.inference.validation import check_outdir, check_positive, check_sampler_options, check_size, read_prompts

@dataclass
class Prepared:
    """A model ready to load: its source and facts, the device, the autocast dtype and the EMA choice."""

    source: ModelSource
    info: ModelInfo
    device: torch.device
    dtype: torch.dtype | None
    ema: bool

    @property
    def precision(self) -> str:
        """The precision actually used, for metadata."""
        return "fp32" if self.dtype is None else str(self.dtype).replace("torch.", "")

    def load(self) -> torch.nn.Module:
        """Load the model (the only expensive step)."""
        return load_model(self.source, self.device)

    def check_memory(self, batch: int, height: int, width: int, guided: bool, flag: str,
                     advice: Callable[[int], str]) -> None:
        """UsageError naming `flag` when a batch of `batch` height x width images would not fit on the device (a
        lower-bound estimate, `ldm.inference.memory`); `advice(fit)` says what to do instead."""
        needed = diffusion_batch_bytes(self.source.config, self.info, batch, height, width, guided,
                                       half=self.dtype is not None)
        check_fits(needed, batch, self.device, flag, advice)


def warn(messages: str | Iterable[str]) -> None:
    """Print `warning: <message>` lines on stderr: input that runs but is probably not what was meant."""
    for message in [messages] if isinstance(messages, str) else messages:
        print(f"warning: {message}", file=sys.stderr)


def resolve_ema(info: ModelInfo, ema: bool | None) -> bool:
    """--ema/--no-ema: None follows the model; --ema on a model trained without EMA is an error."""
    if ema and not info.use_ema:
        raise UsageError("--ema: this model was trained without EMA weights (use_ema: false); drop --ema")
    return info.use_ema if ema is None else bool(ema)


def prepare(args: argparse.Namespace) -> Prepared:
    """Everything checkable without weights: model source, device, precision, EMA, sampler + steps + eta, and that
    --outdir (when the script has one and it is set) can be written to."""
    source = resolve_source(args.resume, args.config, args.ckpt, getattr(args, "from_diffusers", None))
    info = describe_model(source.config)
    device = check_device(args.device)
    dtype = autocast_dtype(args.precision, device)
    check_sampler_options(args.sampler, args.steps, info.num_timesteps, args.eta)
    if getattr(args, "outdir", None) is not None:
        check_outdir(args.outdir)
    return Prepared(source, info, device, dtype, resolve_ema(info, args.ema))


def generation_settings(args: argparse.Namespace, prep: Prepared, size: tuple[int, int] | None = None,
                        size_flag: str = "--H/--W", **extra: object) -> tuple[list[str] | None, list | None, Settings]:
    """(prompts, conditioning values, Settings) from the generation flags, all checked against the model.

    `size` (height, width) replaces --H/--W (img2img takes the input image's; `size_flag` names it in errors);
    `extra` sets more Settings fields.
    """
    check_positive(args.n_samples, "--n_samples")
    check_positive(args.n_iter, "--n_iter")
    prompts = read_prompts(args.prompt, args.from_file, warn)
    values = check_prompts(prep.info, prompts)
    scale = check_scale(prep.info, args.scale)
    height, width = size or (args.H or prep.info.image_size[0], args.W or prep.info.image_size[1])
    check_size(height, width, prep.info.size_multiple, size_flag)
    total = args.n_samples * args.n_iter
    prep.check_memory(args.n_samples, height, width, values is not None and scale != 1.0,
                      f"--n_samples {args.n_samples}",
                      lambda fit: "use a smaller --n_samples with more --n_iter, e.g. --n_samples "
                                  f"{fit} --n_iter {math.ceil(total / fit)}")
    warn(empty_prompt_warnings(prep.info, prompts) + scale_warnings(scale))
    settings = Settings(sampler=args.sampler, steps=args.steps, scale=scale, eta=args.eta, seed=args.seed,
                        n_samples=args.n_samples, n_iter=args.n_iter, height=height, width=width, ema=prep.ema,
                        precision=prep.precision, model=prep.source.ckpt, **extra)
    return prompts, values, settings


def generate_and_report(prep: Prepared, args: argparse.Namespace, prompts: list[str] | None, values: list | None,
                        settings: Settings, init_image: torch.Tensor | None = None) -> Outputs:
    """Load the model, run `generate.generate` into --outdir (grid unless --no-grid) and print where it went."""
    outputs = generate(prep.load(), prep.info, prompts, values, settings, args.outdir, prep.device, prep.dtype,
                       init_image=init_image, grid=args.grid)
    report(outputs)
    return outputs


def report(outputs: Outputs) -> None:
    """Print where the images went."""
    folder = os.path.dirname(outputs.images[0]) if outputs.images else "-"
    grid = f" and the grid {outputs.grid}" if outputs.grid else ""
    print(f"wrote {len(outputs.images)} image(s) to {folder}{grid}")
