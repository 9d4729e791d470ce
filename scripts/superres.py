#!/usr/bin/env python
"""Super-resolve images with a trained super-resolution LDM (configs/ldm_sr.yaml, or the original bsr_sr model).

    python scripts/superres.py -r logs/<sr run> --input small.png
    python scripts/superres.py -r logs/<sr run> --input lowres_folder/ --steps 100 --outdir outputs/sr
    python scripts/superres.py --config models/ldm/bsr_sr/config.yaml --ckpt last.ckpt --input small.png

Each low-resolution input comes out x4 larger (the model's factor: the first-stage factor times its conditioner's
scale); its sides must map to a latent grid the UNet can downsample. Writes <outdir>/<name>.png (settings in the
PNG metadata) and <outdir>/grid-NNNN.png (bicubic upscale | result per row). Input k uses seed + k. Bad input fails
before the model loads.
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
    parser = entry.script_parser(__doc__)
    parser.add_argument("--input", required=True, help="a low-resolution image, or a folder of them")
    entry.add_output_arguments(parser, "outputs/superres-results")
    entry.add_model_arguments(parser)
    entry.add_sampler_arguments(parser, sampler="ddim", steps=100)
    return parser


def main(argv: list[str] | None = None) -> Outputs:
    args = get_parser().parse_args(argv)
    from PIL import Image

    from ldm.inference import cli
    from ldm.inference.devices import autocast
    from ldm.inference.images import image_to_tensor, open_image, to_pil
    from ldm.inference.sampling import initial_noise
    from ldm.inference.superres import check_lr_size, lr_to_latent_scale, upscale
    from ldm.inference.task_outputs import list_images, sampling_options, save_results, settings_record

    files = list_images(args.input, "--input")
    prep = cli.prepare(args)
    scale = lr_to_latent_scale(prep.source.config)
    images = [open_image(path, 3, "--input") for path in files]
    sizes = [check_lr_size(im.height, im.width, scale, prep.info, f"--input {path}") for path, im in zip(files, images)]
    for path, (height, width) in zip(files, sizes):  # one image at a time: only a huge one can fail
        prep.check_memory(1, height, width, False, f"--input {path}", lambda fit: "use a smaller input image")
    model = prep.load()
    record = settings_record(args, prep)
    results, rows = [], []
    for k, (path, image, (height, width)) in enumerate(zip(files, images, sizes)):
        seed, options = sampling_options(args, prep, k, f"{os.path.basename(path)} ({k + 1}/{len(files)})")
        with autocast(prep.device, prep.dtype):
            out = upscale(model, image_to_tensor(image), lambda shape: initial_noise(shape, [seed], prep.device),
                          **options)
        result = to_pil(out)[0]
        results.append((path, result, {**record, "seed": seed, "input": os.path.abspath(path),
                                       "input_size": [image.width, image.height], "size": [width, height]}))
        rows.append([image.resize((width, height), Image.Resampling.BICUBIC), result])
    outputs = save_results(args.outdir, results, rows, args.grid, record)
    cli.report(outputs)
    return outputs


if __name__ == "__main__":
    sys.exit(entry.run(main))
