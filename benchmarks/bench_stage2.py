"""Stage-2 training throughput: encoding every batch on the fly vs training from a latent cache (ldm.data.latent_cache).

A step is the whole training step as main.py runs it, minus Lightning's bookkeeping: the next batch from the data
module's loader (PNG decode + resize for images; a safetensors read for the cache), guidance dropout, the frozen first
stage's encoding (on the fly only; the cache samples z from the stored posterior), the conditioner, the U-Net forward
and backward, the AdamW step and the EMA update. Both ways share one model and run alternating rounds of `--steps`
steps in this process (warm-up first); images/s is the median over rounds and the speed ratio the median of the
per-round ratios, so load from other processes hits both alike. The one-time cost of writing the cache is reported too.

Weights are random (speed does not depend on them); images are generated PNGs with captions.

    python benchmarks/bench_stage2.py                      # (a) configs/ldm_txt2img.yaml: KL-f8 ch 128 at 256 px
    python benchmarks/bench_stage2.py --overlay            # (b) with configs/overlays/cpu.yaml (64 px, ch 32)
    python benchmarks/bench_stage2.py --model-channels 320 --device cuda --batch 8   # the config's own U-Net
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ldm_txt2img.yaml")
OVERLAY = os.path.join(ROOT, "configs", "overlays", "cpu.yaml")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", action="store_true", help="merge configs/overlays/cpu.yaml (case b)")
    parser.add_argument("--model-channels", type=int, default=None,
                        help="U-Net width (default: 64 for the full config, the overlay's own with --overlay)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="BERT depth (default: 2 for the full config, the overlay's own with --overlay)")
    parser.add_argument("--context-dim", type=int, default=None,
                        help="text width = U-Net context_dim (default: 256 for the full config, the overlay's own)")
    parser.add_argument("--frozen-text", action="store_true",
                        help="cond_stage_trainable: false, so the text encoder's outputs are cached too")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--images", type=int, default=16, help="images in the generated folder")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per way per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: loading is in the step)")
    parser.add_argument("--device", default="cpu")
    return parser


def overrides(args) -> list[str]:
    """Config overrides: random first stage, the U-Net / text sizes, a 5-step-free lr schedule."""
    full = not args.overlay
    out = ["model.params.first_stage_config.params.ckpt_path=null", "model.params.scheduler_config=null"]
    sizes = {"model.params.unet_config.params.model_channels": args.model_channels or (64 if full else None),
             "model.text_layers": args.text_layers or (2 if full else None),
             "model.context_dim": args.context_dim or (256 if full else None)}
    out += [f"{k}={v}" for k, v in sizes.items() if v is not None]
    if full:
        out.append("model.params.unet_config.params.use_checkpoint=false")
    if args.frozen_text:
        out.append("model.params.cond_stage_trainable=false")
    return out


def make_images(folder: str, n: int, size: int) -> None:
    """n random PNGs of size x size with a caption each (decode cost like real photos' PNGs)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w") as f:
            f.write(f"a large red circle at the left number {i % 5}")


def data_module(config, folder: str, args, cache: str | None):
    """The config's data module over the generated folder (train split = the whole folder), optionally cached."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    data = OmegaConf.to_container(config.data, resolve=True)
    train = data["params"]["train"]
    train["params"].update(root=folder, random_crop=False, validation_fraction=0.0, missing_captions=None)
    train["params"].pop("paraphrase_prob", None)
    train["params"].pop("length", None)
    if cache is not None:
        train["params"]["latent_cache"] = cache
    data["params"].update(batch_size=args.batch, num_workers=args.num_workers)
    data["params"].pop("validation", None)
    dm = instantiate_from_config(data)
    dm.setup("fit")
    return dm


def batches(loader):
    """Endless batches of a loader (a new epoch when one ends)."""
    while True:
        yield from loader


class TrainStep:
    """One training step of `model` on the next batch of `source`: dropout, loss, backward, AdamW, EMA."""

    def __init__(self, model, optimizer, source, device):
        self.model, self.optimizer, self.source, self.device = model, optimizer, source, device

    def __call__(self) -> None:
        import torch

        batch = next(self.source)
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        batch = self.model.cfg_dropout(batch)
        loss, _ = self.model.shared_step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.on_train_batch_end()


def timed(step: TrainStep, n: int, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    if min(args.batch, args.images, args.steps, args.rounds) < 1:
        raise SystemExit("--batch, --images, --steps and --rounds must be at least 1")

    import torch

    from ldm.data.latent_cache_write import write_cache
    from ldm.models.diffusion.conditioning import encode_values
    from ldm.models.diffusion.first_stage import cache_fields
    from ldm.util import instantiate_from_config, load_configs

    device = torch.device(args.device)
    config = load_configs([CONFIG] + ([OVERLAY] if args.overlay else []), overrides(args))
    size = int(config.data.params.train.params.size)
    torch.manual_seed(0)
    model = instantiate_from_config(config.model).to(device)
    model.learning_rate = 1e-5
    model.restarted_from_ckpt = True  # no scale_by_std estimate (not part of a step)
    model.train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    first = model.first_stage_model
    params_m = {name: sum(p.numel() for p in part.parameters()) / 1e6 for name, part in
                (("first stage", first), ("unet", model.model), ("text", model.cond_stage_model))}
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = os.path.join(tmp, "images"), os.path.join(tmp, "cache")
        make_images(folder, args.images, size)
        plain_dm = data_module(config, folder, args, None)
        cond = model.cond_stage_model if model.caches_conditioning() else None

        @torch.no_grad()
        def encode(x):
            return cache_fields(first.encode(x.to(device)))

        start = time.perf_counter()
        index = write_cache(plain_dm.datasets["train"], cache, encode, model.latent_cache_fingerprint(),
                            cond_key=model.cond_stage_key if cond is not None else None,
                            encode_conditioning=(lambda v: encode_values(cond, v, model.cond_stage_forward))
                            if cond is not None else None, batch_size=args.batch)
        cache_seconds = time.perf_counter() - start
        cached_dm = data_module(config, folder, args, cache)
        ways = {"on the fly": TrainStep(model, optimizer, batches(plain_dm.train_dataloader()), device),
                "cached": TrainStep(model, optimizer, batches(cached_dm.train_dataloader()), device)}
        for step in ways.values():  # warm-up: allocator, oneDNN kernels, the EMA's first update
            step()
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.rounds):
            for name, step in ways.items():
                times[name].append(timed(step, args.steps, device))
    per_image = args.steps * args.batch
    ips = {k: per_image / statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(f / c for f, c in zip(times["on the fly"], times["cached"]))
    flips = " (+ flipped copies)" if index["flip"] else ""
    label = "ldm_txt2img + cpu overlay" if args.overlay else "ldm_txt2img (full first stage)"
    print(f"{label}: {size} px, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, device {device}, "
          f"threads {torch.get_num_threads()}")
    print("parameters (M): " + ", ".join(f"{k} {v:.1f}" for k, v in params_m.items())
          + f"; text encoder {'frozen (cached)' if cond is not None else 'trained (not cacheable)'}")
    print(f"cache written once: {args.images} images{flips} in {cache_seconds:.1f} s")
    print(f"{'way':<12} {'images/s':>9} {'s/step':>8}")
    for name in ways:
        print(f"{name:<12} {ips[name]:>9.2f} {statistics.median(times[name]) / args.steps:>8.3f}")
    rounds = " ".join(f"{f / c:.2f}" for f, c in zip(times["on the fly"], times["cached"]))
    print(f"speed ratio cached / on the fly: {ratio:.2f}x (per round: {rounds})")
    return {"images_per_s": ips, "ratio": ratio, "cache_seconds": cache_seconds}


if __name__ == "__main__":
    main()
