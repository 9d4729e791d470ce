#!/usr/bin/env python
"""Sample images from a trained text-, class-conditional or unconditional diffusion model.

    python scripts/txt2img.py -r logs/<run> --prompt "a large red circle at the left"
    python scripts/txt2img.py -r logs/<run> --from-file prompts.txt --sampler ddim --steps 50 --scale 5
    python scripts/txt2img.py -r logs/<cin run> --prompt 17 --scale 3        # class 17 (or a shapes caption)
    python scripts/txt2img.py --config my.yaml --ckpt model.ckpt --prompt "..." --precision autocast

Writes <outdir>/samples/NNNNN.png (prompt, seed and settings in each PNG's text metadata) and <outdir>/grid-NNNN.png.
Image k of a run uses seed + k. Bad input (paths, prompts, sizes, sampler options) fails before the model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

if TYPE_CHECKING:
    from ldm.inference.generate import Outputs


def get_parser() -> argparse.ArgumentParser:
    return entry.generation_parser(__doc__, sampler="dpmpp_2m", outdir="outputs/txt2img-samples")


def main(argv: list[str] | None = None) -> Outputs:
    args = get_parser().parse_args(argv)
    from ldm.inference import cli

    prep = cli.prepare(args)
    prompts, values, settings = cli.generation_settings(args, prep)
    return cli.generate_and_report(prep, args, prompts, values, settings)


if __name__ == "__main__":
    sys.exit(entry.run(main))
