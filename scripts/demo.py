#!/usr/bin/env python
"""The README's demo (`make demo`): both stages end to end on embedded data, on a CPU, in minutes.

1. Stage 1: the CPU-sized KL-f8 autoencoder on the procedural shapes images, then `scripts/reconstruct.py`.
2. Stage 2: the LDM text-to-image model (configs/ldm_txt2img.yaml + the CPU overlay) on that autoencoder's latents,
   with captions such as "a large red circle at the left".
3. Samples: `scripts/txt2img.py` for a few captions, and `scripts/eval_shapes.py`, which samples a balanced set of
   captions and reports how often the shapes checker agrees with them (chance: color 25%, shape 33%, position 20%).

Every step runs the project's own CLIs exactly as a user would; the printout says where to look.

    python scripts/demo.py [--stage1-steps N] [--stage2-steps N] [--stage1-run logs/<run>] [--logdir logs]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS_FILE = os.path.join(ROOT, "scripts", "demo_prompts.txt")


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def newest_run(logdir: str, name: str, since: float) -> str:
    runs = [d for d in glob.glob(os.path.join(ROOT, logdir, f"*_{name}")) if os.path.getmtime(d) >= since - 1]
    if not runs:
        raise SystemExit(f"demo: no run folder '*_{name}' was created under {logdir}/")
    return max(runs, key=os.path.getmtime)


def val_curve(run_dir: str, key: str = "val/rec_loss") -> list[float]:
    """Values of a validation metric in the run's metrics.csv, in logging order."""
    values = []
    for path in glob.glob(os.path.join(run_dir, "**", "metrics.csv"), recursive=True):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values.append(float(row[key]))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-steps", type=int, default=None, help="autoencoder batches (default: the overlay's)")
    parser.add_argument("--stage2-steps", type=int, default=None, help="diffusion batches (default: the overlay's)")
    parser.add_argument("--stage1-run", default=None, help="reuse this trained autoencoder run instead of stage 1")
    parser.add_argument("--eval-n", type=int, default=64, help="captions sampled for the checker's accuracy")
    parser.add_argument("--logdir", default="logs")
    args = parser.parse_args()
    start = time.time()

    if args.stage1_run:
        ae_run = os.path.abspath(args.stage1_run)
        if not os.path.isfile(os.path.join(ae_run, "checkpoints", "last.ckpt")):
            raise SystemExit(f"demo: {ae_run}/checkpoints/last.ckpt not found (--stage1-run wants a stage-1 run)")
    else:
        cmd = [sys.executable, "main.py", "--base", "configs/autoencoder_kl_f8.yaml", "configs/overlays/cpu.yaml",
               "-t", "-n", "demo_kl_f8", "-l", args.logdir]  # the overlay's stage 1 trains on the shapes data
        if args.stage1_steps:
            cmd.append(f"lightning.trainer.max_steps={args.stage1_steps}")
        run(cmd)
        ae_run = newest_run(args.logdir, "demo_kl_f8", start)
        run([sys.executable, "scripts/reconstruct.py", "-r", ae_run, "--n", "8"])
    ae_minutes = (time.time() - start) / 60

    stage2_start = time.time()
    cmd = [sys.executable, "main.py", "--base", "configs/ldm_txt2img.yaml", "configs/overlays/cpu.yaml", "-t",
           "-n", "demo_txt2img", "-l", args.logdir,
           f"model.params.first_stage_config.params.ckpt_path={os.path.join(ae_run, 'checkpoints', 'last.ckpt')}"]
    if args.stage2_steps:
        cmd.append(f"lightning.trainer.max_steps={args.stage2_steps}")
    run(cmd)
    ldm_run = newest_run(args.logdir, "demo_txt2img", stage2_start)
    samples = os.path.join(ldm_run, "txt2img")  # txt2img.py writes <outdir>/samples/*.png and <outdir>/grid-*.png
    run([sys.executable, "scripts/txt2img.py", "-r", ldm_run, "--from-file", PROMPTS_FILE, "--n_samples", "4",
         "--sampler", "dpmpp_2m", "--steps", "20", "--scale", "3", "--outdir", samples])
    run([sys.executable, "scripts/eval_shapes.py", "-r", ldm_run, "--n", str(args.eval_n), "--sampler", "ddim",
         "--steps", "50", "--scale", "3"])

    with open(os.path.join(ldm_run, "eval_shapes.json")) as f:
        acc = json.load(f)["accuracy"]
    curve = val_curve(ae_run)
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    print("\n=== demo finished in %.1f min (stage 1: %.1f min) ===" % ((time.time() - start) / 60, ae_minutes))
    print(f"stage 1 run:       {rel(ae_run)}")
    print(f"reconstructions:   {rel(os.path.join(ae_run, 'reconstructions.png'))} (top: held-out, bottom: decoded)")
    if curve:
        print(f"val/rec_loss:      {curve[0]:.4f} (first validation) -> {curve[-1]:.4f} (last)")
    print(f"stage 2 run:       {rel(ldm_run)}  (training grids under images/)")
    print(f"samples:           {rel(samples)}/ (grid-*.png, and samples/ with the prompt and seed in each PNG)")
    print(f"checker accuracy:  color {acc['color']:.0%} (chance 25%), shape {acc['shape']:.0%} (33%), "
          f"size {acc['size']:.0%} (50%), position {acc['position']:.0%} (20%) on {acc['n']} samples; "
          f"grid {rel(os.path.join(ldm_run, 'eval_shapes.png'))}")


if __name__ == "__main__":
    main()
