"""Command-line pieces shared by the sampling scripts: flag groups, the checks done before loading (model, output
folder, whether a batch fits in memory), warnings, and the error handling (a one-line message and exit status 2 for
bad input, 1 for an unreadable checkpoint)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ldm.checkpoint import CheckpointError
from ldm.diffusion.samplers import available_samplers
from ldm.inference.conditioning import check_prompts, check_scale, empty_prompt_warnings, scale_warnings
from ldm.inference.devices import PRECISIONS, autocast_dtype, check_device
from ldm.inference.errors import UsageError
from ldm.inference.generate import Outputs, Settings, generate
from ldm.inference.loading import ModelSource, load_model, resolve_source
from ldm.inference.memory import check_fits, diffusion_batch_bytes
from ldm.inference.model_info import ModelInfo, describe_model
from ldm.inference.validation import check_outdir, check_positive, check_sampler_options, check_size, read_prompts
from ldm.util import ConfigError

DEFAULT_SEED = 42


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """-r/--resume, --config, --ckpt, --from-diffusers, --ema/--no-ema, --device, --precision."""
    group = parser.add_argument_group("model")
    group.add_argument("-r", "--resume", metavar="RUN", help="main.py run folder (logs/<run>) or a .ckpt inside its "
                       "checkpoints/ (uses the run's saved configs)")
    group.add_argument("--config", nargs="+", metavar="YAML", help="model config file(s), merged left to right; "
                       "with --ckpt, instead of -r")
    group.add_argument("--ckpt", help="checkpoint to load (with --config; with -r: another checkpoint of the run)")
    group.add_argument("--from-diffusers", metavar="DIR", default=None,
                       help="a diffusers folder (model_index.json, unet/, vae/, scheduler/): its config and weights "
                            "are converted to ours, instead of -r or --config/--ckpt")
    group.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="sample with the EMA weights (default: when the model has them)")
    group.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1, mps (default: the "
                       "first of cuda / mps / cpu available)")
    group.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="fp32 (= full), or autocast in bf16 / fp16; 'autocast' picks fp16 on GPUs and bf16 on "
                            "the CPU (default: autocast on CUDA, fp32 elsewhere)")


def add_sampler_arguments(parser: argparse.ArgumentParser, sampler: str, steps: int) -> None:
    """--sampler, --steps, --eta, --seed."""
    group = parser.add_argument_group("sampler")
    group.add_argument("--sampler", default=sampler, metavar="NAME",
                       help=f"one of {', '.join(available_samplers())} (default: {sampler})")
    group.add_argument("--steps", type=int, default=steps, help=f"sampler steps (default: {steps})")
    group.add_argument("--eta", type=float, default=None, help="noise of stochastic samplers (ddim: 0 = "
                       "deterministic; default: the sampler's own, e.g. 0 for ddim, 1 for euler_a)")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED,
                       help=f"base seed; image k of a run uses seed + k (default: {DEFAULT_SEED})")


def add_scale_argument(parser: argparse.ArgumentParser, default_help: str) -> None:
    """--scale (classifier-free guidance)."""
    parser.add_argument("--scale", type=float, default=None, help="classifier-free guidance scale; 1 = the "
                        f"conditional model alone (default: {default_help})")


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


def add_generation_arguments(parser: argparse.ArgumentParser, outdir: str) -> None:
    """--prompt / --from-file, --scale, --n_samples, --n_iter, --H, --W, --outdir, --no-grid (txt2img, img2img)."""
    group = parser.add_argument_group("prompts and images")
    group.add_argument("--prompt", default=None, help="a caption (text models), or a class index or shapes caption "
                       "such as 'a small red circle at the left' (class models); none for unconditional models")
    group.add_argument("--from-file", default=None, metavar="FILE", help="prompts, one per line, instead of --prompt")
    add_scale_argument(group, "5 for text models, 3 for class models")
    group.add_argument("--n_samples", type=int, default=4, help="images per batch (grid columns; default: 4)")
    group.add_argument("--n_iter", type=int, default=1, help="batches per prompt (default: 1)")
    group.add_argument("--H", type=int, default=None, help="image height in pixels (default: the trained size)")
    group.add_argument("--W", type=int, default=None, help="image width in pixels (default: the trained size)")
    group.add_argument("--outdir", default=outdir, help=f"output folder (default: {outdir})")
    group.add_argument("--no-grid", dest="grid", action="store_false", help="do not write the grid image")


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


def generation_parser(doc: str | None, sampler: str, outdir: str) -> argparse.ArgumentParser:
    """The txt2img / img2img parser: model, sampler and generation flags (a script adds its own)."""
    parser = script_parser(doc)
    add_model_arguments(parser)
    add_sampler_arguments(parser, sampler=sampler, steps=50)
    add_generation_arguments(parser, outdir=outdir)
    return parser


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


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call a script's `main(argv)`; bad input prints `error: ...` and returns 2, an unreadable checkpoint 1."""
    from ldm.trainer.logging_setup import setup_logging, teardown_logging

    setup_logging(rank=0, info_to_stdout=False, logfile=False)  # INFO such as "Restored from ..." on stderr
    try:
        main(argv)
    except (UsageError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        teardown_logging()
    return 0
