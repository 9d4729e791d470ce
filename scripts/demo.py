#!/usr/bin/env python
"""The README's demo (`make demo`): train the CPU-sized KL-f8 autoencoder on the embedded photos, then reconstruct.

Runs `main.py` exactly as a user would, then `scripts/reconstruct.py` on held-out photos, and prints where to look:
the run folder (checkpoints, configs, image grids, metrics.csv) and the reconstruction grid.

    python scripts/demo.py [--steps 300] [--logdir logs]
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    parser.add_argument("--steps", type=int, default=None, help="training batches (default: the CPU overlay's)")
    parser.add_argument("--logdir", default="logs")
    args = parser.parse_args()

    name = "demo_kl_f8"
    start = time.time()
    cmd = [sys.executable, "main.py", "--base", "configs/autoencoder_kl_f8.yaml", "configs/overlays/cpu.yaml",
           "-t", "-n", name, "-l", args.logdir]
    if args.steps:
        cmd.append(f"lightning.trainer.max_steps={args.steps}")
    run(cmd)
    run_dir = newest_run(args.logdir, name, start)
    run([sys.executable, "scripts/reconstruct.py", "-r", run_dir, "--n", "8"])

    curve = val_curve(run_dir)
    images = sorted(glob.glob(os.path.join(run_dir, "images", "*", "*.png")))
    print("\n=== demo finished in %.1f min ===" % ((time.time() - start) / 60))
    print(f"run folder:        {os.path.relpath(run_dir, ROOT)}")
    print(f"checkpoint:        {os.path.relpath(os.path.join(run_dir, 'checkpoints', 'last.ckpt'), ROOT)}")
    print(f"reconstructions:   {os.path.relpath(os.path.join(run_dir, 'reconstructions.png'), ROOT)} "
          "(top: held-out photos, bottom: reconstructions)")
    print(f"training grids:    {len(images)} PNGs under {os.path.relpath(os.path.join(run_dir, 'images'), ROOT)}/")
    if curve:
        print(f"val/rec_loss:      {curve[0]:.4f} (first validation) -> {curve[-1]:.4f} (last)")


if __name__ == "__main__":
    main()
