#!/usr/bin/env python
"""Evaluate a trained run against a reference set: FID, KID, IS and CLIP score of samples (stage 2), or PSNR, SSIM,
LPIPS and rFID of reconstructions (stage 1).

    python scripts/evaluate.py -r logs/<run> --ref DIR_OR_SHARDS --n 10000 --sampler dpmpp_2m --steps 20 --scale 3
    python scripts/evaluate.py -r logs/<run> --n 64 --features random      # offline smoke test, no downloads

Stage 2: samples N images, conditioned on the captions or class labels of the run's validation data (image i:
seed + i, item i % len), into <run>/eval/samples/<settings>/ (numbered PNGs; a rerun reuses the images already
there), then compares their features with the reference set's. Stage 1 (AutoencoderKL / VQModel): reconstructs
the reference images. --ref defaults to the run's validation data. Reference features are cached by the set's file
listing (paths, sizes, mtimes) or shard urls + manifest, the extractor and the image size, in --stats-cache
(default ~/.cache/ldm/fid_stats). Writes <run>/eval/<timestamp>/metrics.json and grid.png and prints a table.

Features: `inception` (torch-fidelity's TF-FID InceptionV3; downloaded once into the torch hub cache when online,
--inception-weights for a local copy) or `random` (a fixed random conv net: runs offline, for tests and the demo;
its numbers are only comparable with each other). CLIP score needs --clip (a hub id such as
openai/clip-vit-large-patch14, or a local folder); LPIPS needs the VGG16 weights (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402
from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)

GRID_IMAGES = 64


def get_parser() -> argparse.ArgumentParser:
    parser = entry.script_parser(__doc__)
    parser.add_argument("-r", "--resume", required=True, metavar="RUN", help="main.py run folder (or a .ckpt in it)")
    parser.add_argument("--ref", default=None, help="reference images: a folder or shard urls (default: the run's "
                        "validation data)")
    parser.add_argument("--n", type=int, default=10000, help="samples (stage 2) / reconstructions (stage 1) "
                        "(default: 10000)")
    parser.add_argument("--sampler", default="dpmpp_2m", help="any registered sampler (default: dpmpp_2m)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--eta", type=float, default=None, help="noise of stochastic samplers (default: theirs)")
    parser.add_argument("--scale", type=float, default=None, help="classifier-free guidance scale (default: 5 for "
                        "text, 3 for class models)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: 0)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--features", choices=("inception", "random"), default="inception",
                        help="feature extractor for FID / KID / IS / rFID (default: inception)")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="local weights-inception-2015-12-05-6726825d.pth (default: the torch hub cache)")
    parser.add_argument("--clip", default=None, metavar="NAME_OR_DIR",
                        help="CLIP model for the CLIP score of text models (hub id or local folder; default: none)")
    parser.add_argument("--lpips-vgg", default=None, metavar="PATH", help="local vgg16-397923af.pth for LPIPS "
                        "(stage 1; default: the torch hub cache)")
    parser.add_argument("--stats-cache", default=None, metavar="DIR", help="reference feature cache "
                        "(default: ~/.cache/ldm/fid_stats)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/eval/<timestamp>)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="sample with the raw weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def print_table(result: dict) -> None:
    """metric / value / note rows, then the metrics that could not be computed and why."""
    m = result["metrics"]
    rows = []
    for name, label in (("fid", "FID"), ("kid", "KID"), ("is", "IS"), ("clip_score", "CLIP score"),
                        ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("rfid", "rFID")):
        if f"{name}_mean" in m:
            rows.append((label, f"{m[f'{name}_mean']:.4g} +- {m[f'{name}_std']:.2g}"))
        elif name in m:
            rows.append((label, f"{m[name]:.4g}"))
        elif name in result["unavailable"]:
            rows.append((label, "-  (" + result["unavailable"][name] + ")"))
    print(f"{result['kind']} metrics, {result['n']} images vs {result['reference']['description']}, "
          f"features: {result['features']}")
    for label, value in rows:
        print(f"  {label:<11} {value}")
    print(f"metrics: {result['metrics_file']}  grid: {result['grid']}")


def data_id(config) -> str:
    """"validation data <hash of its config>": recorded with the samples, so other captions are never mixed in."""
    import hashlib

    from omegaconf import OmegaConf

    text = json.dumps(OmegaConf.to_container(config.data.params.validation, resolve=True), sort_keys=True, default=str)
    return f"validation data {hashlib.sha256(text.encode()).hexdigest()[:12]}"


def reference_for(args: argparse.Namespace, config, dataset):
    from omegaconf import OmegaConf

    from ldm.eval.reference import dataset_reference, open_reference

    if args.ref:
        return open_reference(args.ref)
    identity = {"data": OmegaConf.to_container(config.data.params.validation, resolve=True)}
    return dataset_reference(dataset, identity, limit=None, description="the run's validation data")


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    import torch

    from ldm.eval import features as feats
    from ldm.eval.reference import dataset_items, default_cache_dir, reference_features
    from ldm.inference.devices import check_device
    from ldm.inference.validation import check_outdir, check_positive
    from ldm.run_folder import run_config, run_logdir
    from ldm.util import instantiate_from_config

    check_positive(args.n, "--n")
    check_positive(args.batch, "--batch")
    device = check_device(args.device)
    config, ckpt = run_config(args.resume)  # UsageError naming -r for a bad run folder
    run = run_logdir(ckpt)
    out = args.out or os.path.join(run, "eval", time.strftime("%Y-%m-%dT%H-%M-%S"))
    check_outdir(out, "--out")
    stage2 = "unet_config" in (config.model.get("params") or {})
    dataset = instantiate_from_config(config.data.params.validation)
    first = next(iter(dataset_items(dataset, 1)), None)
    if first is None:
        raise UsageError(f"-r {args.resume}: the run's validation data is empty")
    size = tuple(int(s) for s in torch.as_tensor(first["image"]).shape[:2])
    reference = reference_for(args, config, dataset)
    extractor = feats.build_features(args.features, args.inception_weights).to(device)  # fails before sampling
    progress = None
    if args.progress:
        from tqdm.auto import tqdm

        total = -(-reference.count // args.batch) if reference.count > 0 else None
        progress = lambda it: tqdm(it, total=total, desc="reference features", unit="batch")  # noqa: E731
    cache_dir = args.stats_cache or default_cache_dir()
    result: dict = {"run": os.path.abspath(run), "checkpoint": ckpt, "features": extractor.name,
                    "feature_weights": extractor.weights_id, "metrics": {}, "unavailable": {}}
    if stage2:
        real, cache_file, reused = reference_features(reference, extractor, size, cache_dir, args.batch,
                                                      progress=progress)
        result["reference"] = {"description": reference.description, "count": len(real["features"]),
                               "cache": cache_file, "reused": reused}
        evaluate_samples(args, config, ckpt, run, dataset, extractor, real, device, result)
    else:
        result["reference"] = {"description": reference.description, "count": None, "cache": None, "reused": False}
        evaluate_reconstructions(args, config, ckpt, reference, size, extractor, device, result)
    os.makedirs(out, exist_ok=True)
    result["metrics_file"] = os.path.join(out, "metrics.json")
    grid, result["grid"] = result.pop("_grid"), os.path.join(out, "grid.png")
    from ldm.files import atomic_write

    atomic_write(result["grid"], lambda f: grid.save(f, format="PNG"))
    atomic_write(result["metrics_file"], lambda f: f.write(json.dumps(result, indent=1).encode()))
    print_table(result)
    return result


def evaluate_samples(args, config, ckpt, run, dataset, extractor, real, device, result) -> None:
    """Stage 2: sample (resumably) into <run>/eval/samples/<settings>, then FID / KID / IS / CLIP score."""
    from ldm.diffusion.samplers import available_samplers
    from ldm.eval import metrics
    from ldm.eval.features import extract
    from ldm.eval.samples import CaptionedSettings, conditioning_values, read_samples
    from ldm.inference.eval_samples import fill_folder
    from ldm.inference.conditioning import check_scale
    from ldm.inference.images import image_grid, to_pil
    from ldm.inference.model_info import describe_model
    from ldm.inference.validation import check_sampler_options
    from ldm.models.from_run import load_inference_model

    if args.sampler not in available_samplers():
        raise UsageError(f"--sampler: unknown sampler {args.sampler!r}; available: {', '.join(available_samplers())}")
    info = describe_model(config)
    check_sampler_options(args.sampler, args.steps, info.num_timesteps, args.eta)
    scale = check_scale(info, args.scale)
    values = conditioning_values(dataset, info.conditioning, info.cond_key, args.n)
    ema = bool(args.ema and info.use_ema)
    settings = CaptionedSettings(sampler=args.sampler, steps=args.steps, scale=scale, eta=args.eta, seed=args.seed,
                                 height=info.image_size[0], width=info.image_size[1], ema=ema, model=ckpt, n=args.n,
                                 batch_size=args.batch, conditioning=None if values is None else data_id(config))
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    folder = os.path.join(run, "eval", "samples", f"{stem}_{args.sampler}_{args.steps}_scale{scale:g}_seed{args.seed}"
                          f"{'' if ema else '_noema'}")
    model = load_inference_model(config, ckpt, device)
    counts = fill_folder(model, info, settings, folder, lambda indices: None if values is None else
                         [values[i] for i in indices], device, show_progress=args.progress)
    images = read_samples(folder, args.n)
    fake = extract(extractor, images, args.batch)
    result.update(kind="generation", n=args.n, samples=folder, reused_samples=counts["existing"],
                  sampler=args.sampler, steps=args.steps, scale=scale, seed=args.seed, ema=ema)
    result["metrics"].update(metrics.generation_metrics(real, fake, ("fid", "kid", "is")))
    if info.conditioning != "text":
        result["unavailable"]["clip_score"] = "not a text-conditional model"
    elif not args.clip:
        result["unavailable"]["clip_score"] = "no CLIP model given (--clip hub id or folder)"
    else:
        result["metrics"]["clip_score"] = metrics.clip_score(images, values, args.clip, args.batch, device)
    result["_grid"] = image_grid(to_pil(images[:GRID_IMAGES].float() / 127.5 - 1.0), 8)


def evaluate_reconstructions(args, config, ckpt, reference, size, extractor, device, result) -> None:
    """Stage 1: reconstruct the reference images, then PSNR / SSIM / LPIPS / rFID (LPIPS when VGG16 is there)."""
    import torch

    from ldm.eval.metrics import ReconstructionMeter, lpips_model
    from ldm.eval.reference import image_batches
    from ldm.eval.samples import reconstruct
    from ldm.inference.images import image_grid, to_pil
    from ldm.models.from_run import load_inference_model
    from ldm.weights import MissingWeightsError

    try:
        lpips_net = lpips_model(args.lpips_vgg).to(device)
    except MissingWeightsError as err:  # LPIPS' VGG16 (MissingPerceptualWeightsError is one)
        lpips_net = None
        result["unavailable"]["lpips"] = str(err).splitlines()[0]
    model = load_inference_model(config, ckpt, device)
    meter = ReconstructionMeter(extractor, lpips_net, args.batch)
    shown: list[torch.Tensor] = []
    for batch in image_batches(reference, size, args.batch):
        batch = batch[: args.n - meter.count]
        x = batch.float().to(device) / 127.5 - 1.0
        rec = reconstruct(model, x).clamp(-1, 1)
        meter.update(x, rec)
        if sum(len(s) for s in shown) < GRID_IMAGES // 2:
            shown.append(torch.cat([x, rec], dim=3).cpu())  # input | reconstruction side by side
        if meter.count >= args.n:
            break
    result.update(kind="reconstruction", n=meter.count)
    result["reference"]["count"] = meter.count
    result["metrics"].update(meter.compute())
    result["_grid"] = image_grid(to_pil(torch.cat(shown)[: GRID_IMAGES // 2]), 4)


if __name__ == "__main__":
    sys.exit(entry.run(main))
