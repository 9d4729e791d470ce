#!/usr/bin/env python
"""Image-to-image: encode an input image, noise it to the level `--strength` selects, denoise with any sampler.

    python scripts/img2img.py -r logs/<run> --init-img in.png --prompt "a small blue square at the top"
    python scripts/img2img.py -r logs/<run> --init-img in.png --prompt "..." --strength 0.5 --sampler euler_a

--strength 1 is plain txt2img (pure noise), 0 gives the input back (its reconstruction); in between, the last
strength x steps of the sampler's schedule run. The image's sides must be multiples of the model's downsampling
factor (its size is the output size). Outputs as scripts/txt2img.py, with the strength and input in the metadata.
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
    parser = entry.generation_parser(__doc__, sampler="ddim", outdir="outputs/img2img-samples")
    parser.add_argument("--init-img", required=True, metavar="PATH", help="the input image (RGB or grayscale)")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="how much to change the input, in [0, 1]: 0 = the input back, 1 = ignore it "
                             "(default: 0.75)")
    return parser


def main(argv: list[str] | None = None) -> Outputs:
    args = get_parser().parse_args(argv)
    from ldm.inference import cli
    from ldm.inference.images import image_to_tensor, open_image
    from ldm.inference.validation import check_strength

    strength = check_strength(args.strength)
    prep = cli.prepare(args)
    image = open_image(args.init_img, prep.info.channels, "--init-img")
    prompts, values, settings = cli.generation_settings(args, prep, (image.height, image.width),
                                                        f"--init-img {args.init_img}", strength=strength,
                                                        init_image=os.path.abspath(args.init_img))
    return cli.generate_and_report(prep, args, prompts, values, settings, init_image=image_to_tensor(image))


if __name__ == "__main__":
    sys.exit(entry.run(main))
