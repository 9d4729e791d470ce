#!/usr/bin/env python
"""Inpaint images: fill the white part of each mask with a trained diffusion model, keep the rest.

    python scripts/inpaint.py -r logs/<inpainting run> --image photo.png --mask photo_mask.png
    python scripts/inpaint.py -r logs/<inpainting run> --indir inputs/ --steps 50     # <name>.png + <name>_mask.png
    python scripts/inpaint.py -r logs/<uncond or txt2img run> --image in.png --mask m.png --prompt "..."  # guided
    python scripts/inpaint.py --config models/ldm/inpainting_big/config.yaml --ckpt last.ckpt --indir inputs/

A concat inpainting model (configs/ldm_inpainting.yaml, or the original LDM inpainting checkpoint) sees the masked
image and the mask; any unconditional, text or class model inpaints by mask guidance (the known latents are put
back at every sampler step). --mode forces one of the two. Masks are grayscale or RGB, white (>= 50%) = fill in,
the size of their image; image sides must be multiples of the model's downsampling factor.
Writes <outdir>/<name>.png (settings in the PNG metadata) and <outdir>/grid-NNNN.png (masked input | mask | result
per row). Input k uses seed + k. Bad input fails before the model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402
from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

if TYPE_CHECKING:
    from ldm.inference.generate import Outputs


def get_parser() -> argparse.ArgumentParser:
    parser = entry.script_parser(__doc__)
    group = parser.add_argument_group("inputs")
    group.add_argument("--image", help="the image to inpaint")
    group.add_argument("--mask", help="its mask: white = fill in, black = keep (same size as the image)")
    group.add_argument("--indir", help="a folder of <name>.png + <name>_mask.png pairs, instead of --image/--mask")
    group.add_argument("--mode", choices=entry.INPAINT_MODES, default="auto", help="concat: the model's inpainting input; guided: "
                       "mask guidance of any unconditional / text / class model (default: auto, by the model)")
    group.add_argument("--prompt", default=None, help="caption or class for a guided text / class model")
    entry.add_scale_argument(group, "5 for text models, 3 for class models, else 1")
    entry.add_output_arguments(group, "outputs/inpainting-results")
    entry.add_model_arguments(parser)
    entry.add_sampler_arguments(parser, sampler="ddim", steps=50)
    return parser


def main(argv: list[str] | None = None) -> Outputs:
    args = get_parser().parse_args(argv)
    from ldm.inference import cli
    from ldm.inference.conditioning import (check_prompts, check_scale, empty_prompt_warnings, guidance_pair,
                                            scale_warnings)
    from ldm.inference.devices import autocast
    from ldm.inference.images import to_pil
    from ldm.inference.inpainting import inpaint, input_pairs, load_pair, resolve_mode
    from ldm.inference.sampling import initial_noise
    from ldm.inference.task_outputs import sampling_options, save_results, settings_record
    from ldm.inference.validation import read_prompts

    pairs = input_pairs(args.image, args.mask, args.indir)
    prep = cli.prepare(args)
    mode = resolve_mode(args.mode, prep.source.config, prep.info)
    if mode == "concat" and args.prompt is not None:
        raise UsageError("--prompt: a concat inpainting model takes no prompt")
    prompts = read_prompts(args.prompt) if mode == "guided" else None
    values = check_prompts(prep.info, prompts) if mode == "guided" else None
    scale = check_scale(prep.info, args.scale)
    inputs = [load_pair(pair, prep.info.channels, prep.info.size_multiple) for pair in pairs]
    for pair, (image, _) in zip(pairs, inputs):  # one image at a time: only a huge one can fail
        prep.check_memory(1, image.shape[2], image.shape[3], values is not None and scale != 1.0,
                          f"--image {pair.image}", lambda fit: "use a smaller image")
    cli.warn(empty_prompt_warnings(prep.info, prompts) + scale_warnings(scale))
    model = prep.load()
    record = settings_record(args, prep, mode=mode, scale=scale, prompt=args.prompt)
    results, rows = [], []
    for k, (pair, (image, mask)) in enumerate(zip(pairs, inputs)):
        seed, options = sampling_options(args, prep, k, f"{pair.name} ({k + 1}/{len(pairs)})")
        noise = initial_noise(prep.info.latent_shape(image.shape[2], image.shape[3]), [seed], prep.device)
        with autocast(prep.device, prep.dtype):
            cond, uncond = guidance_pair(model, values, scale)
            result = to_pil(inpaint(model, mode, image, mask, noise, cond, uncond, scale=scale, **options))[0]
        meta = {**record, "seed": seed, "image": os.path.abspath(pair.image), "mask": os.path.abspath(pair.mask)}
        results.append((pair.image, result, meta))
        rows.append([to_pil(image * (1 - mask))[0], to_pil(mask * 2 - 1)[0], result])
    outputs = save_results(args.outdir, results, rows, args.grid, record)
    cli.report(outputs)
    return outputs


if __name__ == "__main__":
    sys.exit(entry.run(main))
