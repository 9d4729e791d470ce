#!/usr/bin/env python
"""Sample batches from an unconditional or class-conditional diffusion model for evaluation (FID and the like).

    python scripts/sample_diffusion.py -r logs/<run> -n 1000 --batch_size 25
    python scripts/sample_diffusion.py -r logs/<cin run> -n 1200 --classes 0 1 2 --scale 2 --sampler dpmpp_2m

Writes <outdir>/000000.png ... (settings, seed and class in the PNG metadata) and <outdir>/samples_NxHxWxC.npz
(arr_0: uint8 images N,H,W,C; arr_1: class labels). Run the same command again to resume an interrupted run: the
PNGs on disk are counted and only the missing ones are made. Image i uses seed + i and class classes[i % len].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

if TYPE_CHECKING:
    from ldm.inference.cli import Prepared


def get_parser() -> argparse.ArgumentParser:
    parser = entry.script_parser(__doc__)
    entry.add_model_arguments(parser)
    entry.add_sampler_arguments(parser, sampler="ddim", steps=50)
    group = parser.add_argument_group("samples")
    group.add_argument("-n", "--n_samples", type=int, default=50, help="total number of images (default: 50)")
    group.add_argument("--batch_size", type=int, default=10, help="images per batch (default: 10)")
    group.add_argument("--classes", type=int, nargs="+", default=None, metavar="LABEL",
                       help="class labels to cycle through (class-conditional models; default: all classes)")
    entry.add_scale_argument(group, "1")
    group.add_argument("--outdir", default=None, help="output folder (default: <run>/samples/<checkpoint>_<sampler>"
                       "_<steps>_scale<scale>_seed<seed>; the same folder resumes)")
    return parser


def default_outdir(prep: Prepared, args: argparse.Namespace, scale: float) -> str:
    """A folder named after the settings, inside the run folder (or outputs/), so reruns resume there."""
    stem = os.path.splitext(os.path.basename(prep.source.ckpt))[0]
    root = os.path.join(prep.source.logdir, "samples") if prep.source.logdir else os.path.join("outputs", "samples")
    eta = "" if args.eta is None else f"_eta{args.eta:g}"
    return os.path.join(root, f"{stem}_{args.sampler}_{args.steps}{eta}_scale{scale:g}_seed{args.seed}")


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    from ldm.inference import cli
    from ldm.inference.conditioning import check_scale, scale_warnings
    from ldm.inference.eval_samples import EvalSettings, check_classes, check_model, claim_folder, sample_folder
    from ldm.inference.validation import check_outdir, check_positive, check_size

    check_positive(args.n_samples, "-n/--n_samples")
    check_positive(args.batch_size, "--batch_size")
    prep = cli.prepare(args)
    check_model(prep.info)
    classes = check_classes(prep.info, args.classes)
    scale = check_scale(prep.info, 1.0 if args.scale is None else args.scale)
    height, width = check_size(*prep.info.image_size, prep.info.size_multiple, "the model's image size")
    settings = EvalSettings(sampler=args.sampler, steps=args.steps, scale=scale, eta=args.eta, seed=args.seed,
                            height=height, width=width, ema=prep.ema, precision=prep.precision,
                            model=prep.source.ckpt, n=args.n_samples, batch_size=args.batch_size, classes=classes)
    outdir = args.outdir or default_outdir(prep, args, scale)
    check_outdir(outdir)  # prepare() checked an explicit --outdir; this is the default one inside the run
    batch = min(args.batch_size, args.n_samples)
    guided = prep.info.conditioning == "class" and scale != 1.0
    prep.check_memory(batch, height, width, guided, f"--batch_size {args.batch_size}",
                      lambda fit: f"use a smaller --batch_size, e.g. --batch_size {fit} (-n stays the total)")
    cli.warn(scale_warnings(scale))
    claim_folder(outdir, settings)  # refuses a folder of other settings before the model loads
    summary = sample_folder(prep.load(), prep.info, settings, outdir, prep.device, prep.dtype)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(entry.run(main))
