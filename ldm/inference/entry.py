"""What every sampling script needs before torch loads: its flag groups and the runner that turns errors into exit
statuses. Nothing here imports torch, so `scripts/<x>.py --help` and argument errors answer at once; the heavy
modules (`ldm.inference.cli`, the models) are imported by a script's `main` after its arguments are parsed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ldm.diffusion.samplers.registry import available_samplers
from ldm.errors import UsageError

DEFAULT_SEED = 42

# --precision choices: fp32 (full; "full" is the CompVis name), bf16 / fp16 autocast, or autocast in the device's
# usual half type (fp16 on CUDA and MPS, bf16 on the CPU).
PRECISIONS = ("fp32", "full", "autocast", "bf16", "fp16")

# scripts/inpaint.py --mode: "auto" picks by the model (see ldm.inference.inpainting).
INPAINT_MODES = ("auto", "concat", "guided")


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


def add_output_arguments(parser: argparse.ArgumentParser, outdir: str) -> None:
    """--outdir and --no-grid."""
    parser.add_argument("--outdir", default=outdir, help=f"output folder (default: {outdir})")
    parser.add_argument("--no-grid", dest="grid", action="store_false", help="do not write the grid image")


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
    add_output_arguments(group, outdir)


def generation_parser(doc: str | None, sampler: str, outdir: str) -> argparse.ArgumentParser:
    """The txt2img / img2img parser: model, sampler and generation flags (a script adds its own)."""
    parser = script_parser(doc)
    add_model_arguments(parser)
    add_sampler_arguments(parser, sampler=sampler, steps=50)
    add_generation_arguments(parser, outdir=outdir)
    return parser


def exit_status(err: Exception) -> int | None:
    """2 for bad input (UsageError, ConfigError), 1 for an unreadable checkpoint, None for a bug (re-raised)."""
    from ldm.checkpoint import CheckpointError  # imports torch: only once something went wrong
    from ldm.util import ConfigError

    if isinstance(err, (UsageError, ConfigError)):
        return 2
    return 1 if isinstance(err, CheckpointError) else None


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call a script's `main(argv)`; bad input prints `error: ...` and returns 2, an unreadable checkpoint 1."""
    from ldm.trainer.logging_setup import setup_logging, teardown_logging

    setup_logging(rank=0, info_to_stdout=False, logfile=False)  # INFO such as "Restored from ..." on stderr
    try:
        main(argv)
    except Exception as err:
        status = exit_status(err)
        if status is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return status
    finally:
        teardown_logging()
    return 0
