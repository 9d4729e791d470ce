#!/usr/bin/env python
"""Score a text- or class-conditional model trained on the shapes data: sample captions, check the samples.

Writes a grid of the samples (one caption per image, in the order of the JSON) and prints and saves the checker's
accuracy per attribute (chance: color 25%, shape 33%, size 50%, position 20%) with its 95% confidence interval
(Wilson), what each colour / shape / position was read as, and each sample's caption and detection.

    python scripts/eval_shapes.py -r logs/<stage-2 run> [--n 64] [--sampler ddim] [--steps 50] [--scale 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402


def check_before_loading(args: argparse.Namespace, prefix: str) -> None:
    """UsageError for an output prefix that cannot be written or a --batch_size too large for the device's memory."""
    from ldm.inference.devices import check_device
    from ldm.inference.memory import check_fits, diffusion_batch_bytes
    from ldm.inference.model_info import describe_model
    from ldm.inference.validation import check_output_file, check_positive
    from ldm.run_folder import run_config

    check_positive(args.batch_size, "--batch_size")
    check_output_file(prefix + ".json", "--out")
    config, _ = run_config(args.resume)
    info = describe_model(config)
    batch = min(args.batch_size, max(args.n, 1))
    needed = diffusion_batch_bytes(config, info, batch, *info.image_size, guided=args.scale != 1.0)
    check_fits(needed, batch, check_device(args.device), f"--batch_size {args.batch_size}",
               lambda fit: f"use a smaller --batch_size, e.g. --batch_size {fit}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--resume", required=True, help="stage-2 run folder (or a .ckpt inside it)")
    parser.add_argument("--n", type=int, default=64, help="number of captions (balanced over the 120 classes)")
    parser.add_argument("--sampler", default="ddim", help="any registered sampler (ddim, dpmpp_2m, euler_a, ...)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--objects", type=int, default=1,
                        help="objects per caption (2+: compositional captions such as 'a red circle at the left and "
                             "a blue square at the right', scored per object and per scene)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    parser.add_argument("--out", default=None, help="output prefix (default <run>/eval_shapes)")
    parser.add_argument("--device", default=None, help="torch device (default: the first of cuda / mps / cpu)")
    args = parser.parse_args(argv)
    from ldm.inference.devices import default_device

    args.device = args.device or default_device()
    if not os.path.exists(args.resume):
        parser.error(f"run folder or checkpoint not found: {args.resume}")
    from ldm.diffusion.samplers import available_samplers

    if args.sampler not in available_samplers():
        parser.error(f"unknown sampler {args.sampler!r}; available: {', '.join(available_samplers())}")

    from ldm.eval.shapes_model import CHANCE, evaluate
    from ldm.files import atomic_write
    from ldm.trainer.image_logger import image_grid
    from ldm.models.from_run import load_model_from_run
    from PIL import Image

    if args.objects < 1:
        parser.error(f"--objects must be >= 1, got {args.objects}")
    run = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.dirname(args.resume))
    prefix = args.out or os.path.join(run, "eval_shapes" if args.objects == 1 else f"eval_shapes_{args.objects}obj")
    try:
        check_before_loading(args, prefix)
    except UsageError as err:
        parser.error(str(err))
    model, _ = load_model_from_run(args.resume, device=args.device)
    images, captions, checked = evaluate(model, n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                         scale=args.scale, batch_size=args.batch_size, use_ema=args.ema,
                                         num_objects=args.objects)
    acc = checked["accuracy"]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    Image.fromarray(image_grid(images, nrow=8)).save(prefix + ".png")
    result = {"accuracy": acc, "ci95": checked["ci95"], "chance": CHANCE, "objects": args.objects,
              "sampler": args.sampler, "steps": args.steps, "scale": args.scale, "seed": args.seed, "ema": args.ema,
              "grid": prefix + ".png", "confusion": checked.get("confusion"),
              "samples": [{"caption": c, "detected": d} for c, d in zip(captions, checked["detections"])]}
    atomic_write(prefix + ".json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    settings = f"{args.sampler} {args.steps} steps, scale {args.scale}"
    ci = ", ".join(f"{k} {lo:.2f}-{hi:.2f}" for k, (lo, hi) in checked["ci95"].items())
    if args.objects > 1:
        print(" ".join(f"{k}={v:.3f}" for k, v in acc.items() if not k.startswith("n_")) +
              f"  ({acc['n_images']} images, {acc['n_objects']} objects, {settings})")
        print(f"  95% confidence intervals: {ci}")
        print(f"grid: {prefix}.png  results: {prefix}.json")
        return result
    print(" ".join(f"{k}={acc[k]:.3f}" for k in ("color", "shape", "size", "position", "all", "found")) +
          f"  (n={acc['n']}, {settings})")
    print(f"  95% confidence intervals: {ci}")
    for name in ("color", "shape", "position"):
        print(f"  {name} read as: " + "; ".join(f"{target} -> " + ", ".join(f"{got} {count}" for got, count in
                                                  sorted(row.items(), key=lambda kv: -kv[1]))
                                                for target, row in sorted(checked["confusion"][name].items())))
    print(f"grid: {prefix}.png  results: {prefix}.json")
    return result


if __name__ == "__main__":
    from ldm.trainer.logging_setup import setup_logging

    setup_logging(rank=0, info_to_stdout=False, logfile=False)  # INFO such as "loaded ... from <ckpt>" on stderr
    main()
