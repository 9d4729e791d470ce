#!/usr/bin/env python
"""Reconstruct held-out images with a trained first-stage model: a grid (inputs over reconstructions) and metrics.

Metrics: L1, PSNR, SSIM and LPIPS (when the VGG16 weights are in the torch hub cache or can be downloaded;
otherwise `lpips_unavailable` says why), through ldm.eval.metrics (torchmetrics); on the shapes data also the
shapes checker's accuracy on the reconstructions (how much of each caption's colour, shape, size and position
survives the autoencoder: the ceiling for a stage-2 model on it).

    python scripts/reconstruct.py -r logs/<run> [--n 8] [--out logs/<run>/reconstructions.png]

All --n images go through the model as one batch; bad input (run folder, output paths, a batch too large for the
device's memory) fails before the model loads.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

if TYPE_CHECKING:
    import torch
    from PIL import Image


def grid_image(rows: list[torch.Tensor]) -> Image.Image:
    """Rows of B,C,H,W tensors in [-1, 1] stacked into one uint8 image (one row per tensor)."""
    import numpy as np
    import torch
    from PIL import Image

    cols = [torch.cat(list(r.clamp(-1, 1)), dim=2) for r in rows]  # C,H,B*W
    full = torch.cat(cols, dim=1)
    array = ((full.permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(array)


def background_error(x: torch.Tensor, rec: torch.Tensor) -> float:
    """Mean over images of the largest per-channel difference (0-255 levels) between the background colours of the
    inputs and of their reconstructions (the checker's background: the median of the border ring)."""
    from ldm.eval.shapes import background_color

    errors = [float(abs(background_color(a) - background_color(b)).max()) * 255.0
              for a, b in zip(x.cpu(), rec.clamp(-1, 1).cpu())]
    return sum(errors) / len(errors)


def image_metrics(x: torch.Tensor, rec: torch.Tensor, device: torch.device) -> dict:
    """psnr_db (mean over images), ssim and lpips, or lpips_unavailable with the reason (no VGG16 weights)."""
    from ldm.eval.metrics import lpips_model, reconstruction_metrics
    from ldm.modules.losses.lpips import MissingPerceptualWeightsError

    found: dict = {}
    try:
        net = lpips_model().to(device)
    except MissingPerceptualWeightsError as err:
        net, found["lpips_unavailable"] = None, str(err).splitlines()[0]
    values = reconstruction_metrics(x, rec.clamp(-1, 1), lpips_net=net)
    found = {"psnr_db": round(values["psnr"], 2), "ssim": round(values["ssim"], 4), **found}
    if "lpips" in values:
        found["lpips"] = round(values["lpips"], 4)
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = entry.script_parser(__doc__)
    parser.add_argument("-r", "--resume", required=True, help="run folder (or a .ckpt inside its checkpoints/)")
    parser.add_argument("--n", type=int, default=8, help="number of validation images")
    parser.add_argument("--out", default=None, help="output PNG (default <run>/reconstructions.png)")
    parser.add_argument("--grid-n", type=int, default=16, help="images shown in the PNG (all --n are scored)")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--device", default=None, help="torch device (default: the first of cuda / mps / cpu)")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from ldm.eval.samples import reconstruct
    from ldm.inference.devices import check_device
    from ldm.inference.memory import autoencoder_batch_bytes, check_fits
    from ldm.inference.validation import check_output_file, check_positive
    from ldm.models.from_run import load_inference_model
    from ldm.run_folder import run_config
    from ldm.util import instantiate_from_config

    check_positive(args.n, "--n")
    device = check_device(args.device)
    config, ckpt = run_config(args.resume)  # UsageError naming -r for a bad run folder
    run = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.dirname(args.resume))
    out = check_output_file(args.out or os.path.join(run, "reconstructions.png"), "--out")
    if args.json:
        check_output_file(args.json, "--json")
    dataset = instantiate_from_config(config.data.params.validation)
    n = min(args.n, len(dataset))
    items = [dataset[0]]
    height, width = np.shape(items[0]["image"])[:2]
    check_fits(autoencoder_batch_bytes(config, n, height, width), n, device, f"--n {args.n}",
               lambda fit: f"use a smaller --n, e.g. --n {fit}")
    items += [dataset[i] for i in range(1, n)]
    model = load_inference_model(config, ckpt, device)
    x = torch.stack([torch.as_tensor(it["image"]) for it in items]).permute(0, 3, 1, 2).float().to(device)
    rec = reconstruct(model, x)
    l1 = (rec - x).abs().mean().item()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid_image([x[:args.grid_n], rec[:args.grid_n]]).save(out)
    metrics = {"images": len(items), "l1": round(l1, 4), **image_metrics(x, rec, device), "grid": out}
    if all("caption" in it for it in items) and type(dataset).__module__ == "ldm.data.shapes":
        # shapes data: does the checker still read each caption's attributes off the reconstruction?
        from ldm.eval.shapes import accuracy

        acc = accuracy(rec.clamp(-1, 1).cpu(), [it["caption"] for it in items])
        metrics["shapes_accuracy"] = {k: round(v, 3) for k, v in acc.items() if k != "n"}
        metrics["background_error"] = round(background_error(x, rec), 2)
    print(json.dumps(metrics))
    if args.json:
        from ldm.files import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(metrics, indent=1).encode()))
    return metrics


if __name__ == "__main__":
    sys.exit(entry.run(main))
