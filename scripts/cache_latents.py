#!/usr/bin/env python
"""Encode a stage-2 training set once with its frozen first stage (and frozen text / class encoder) into a latent
cache, so stage-2 training skips the encoders.

    python scripts/cache_latents.py -r logs/<stage-1 run> --config configs/ldm_txt2img_f4.yaml \\
        [configs/overlays/cpu.yaml] --out cache/shapes_f4 [key=value overrides]
    python main.py --base configs/ldm_txt2img_f4.yaml -t \\
        model.params.first_stage_config.params.ckpt_path=logs/<stage-1 run>/checkpoints/last.ckpt \\
        data.params.train.params.latent_cache=cache/shapes_f4

`-r` is the stage-1 run folder (its last.ckpt), a checkpoint inside it, or any autoencoder checkpoint file
(e.g. a downloaded model.ckpt); the stage-2 config gives the first stage's architecture, scale_factor, conditioner
and the training data (`data.params.train`: an image folder or shards, with `random_crop: false`; flipped copies
are cached when its flips are on). Training checks the cache against the model and the data config and stops
with an error that names what differs (first-stage weights, scale_factor, resolution, dataset listing, flips).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    """The command line (no heavy imports before it is parsed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--resume", required=True, metavar="STAGE1",
                        help="stage-1 run folder, a .ckpt inside it, or an autoencoder checkpoint file")
    parser.add_argument("--config", required=True, nargs="+", metavar="YAML",
                        help="the stage-2 config (and overlays), merged left to right as main.py --base does")
    parser.add_argument("--out", required=True, help="cache folder to write (new or empty)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encoder batch (default 16)")
    parser.add_argument("--items-per-shard", type=int, default=1024, help="items per safetensors shard")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    return parser


def stage1_checkpoint(path: str) -> str:
    """The checkpoint file of `-r`: the file itself, or a run folder's last.ckpt (or original-layout model.ckpt)."""
    from ldm.errors import UsageError
    from ldm.run_folder import resolve_resume

    if os.path.isfile(path):
        return os.path.abspath(path)
    info = resolve_resume(path, inference=True)
    if not os.path.isfile(info.ckpt):
        raise UsageError(f"-r {path}: no checkpoint at {info.ckpt}")
    return info.ckpt


def conditioning_plan(config) -> tuple[bool, str, object]:
    """(whether the conditioner's outputs are cached, cond_stage_key, its config); a LatentCacheError for
    conditioning a cache cannot hold (image-like inputs)."""
    from omegaconf import OmegaConf

    from ldm.data.latent_cache import CACHEABLE_COND_KEYS, LatentCacheError
    from ldm.models.diffusion.conditioning import (UNCONDITIONAL, conditioning_is_cacheable,
                                                   resolve_conditioning_key)

    params = config.model.params
    cond_cfg = params.get("cond_stage_config", UNCONDITIONAL)
    cond_cfg = OmegaConf.to_container(cond_cfg, resolve=True) if OmegaConf.is_config(cond_cfg) else cond_cfg
    key = params.get("cond_stage_key", "image")
    trainable = bool(params.get("cond_stage_trainable", False))
    conditioning_key = resolve_conditioning_key(params.get("conditioning_key"), params.get("concat_mode", True),
                                                cond_cfg)
    # the model's own rule; a trained conditioner is encoded every step, so there is nothing to cache then
    cached = conditioning_is_cacheable(conditioning_key, cond_cfg, key, trainable)
    if conditioning_key is not None and not trainable and not cached:
        raise LatentCacheError(f"model.params.cond_stage_key '{key}': conditioning on image-like inputs (concat "
                               "conditioning, the first stage as conditioner) cannot be cached; the cache supports "
                               f"unconditional models and {', '.join(CACHEABLE_COND_KEYS)} conditioning")
    return cached, key, cond_cfg


def build_encoders(config, ckpt: str, device):
    """(first stage, frozen conditioner or None, conditioning key or None) as LatentDiffusion builds them."""
    from omegaconf import OmegaConf

    from ldm.models.diffusion.conditioning import instantiate_cond_stage
    from ldm.models.diffusion.first_stage import instantiate_first_stage

    cached_cond, key, cond_cfg = conditioning_plan(config)
    params = config.model.params
    first_cfg = OmegaConf.to_container(params.first_stage_config, resolve=True)
    first_cfg["params"]["ckpt_path"] = ckpt
    first_cfg["params"]["lossconfig"] = {"target": "torch.nn.Identity"}  # encoding needs no training loss
    first_stage = instantiate_first_stage(first_cfg).to(device)
    if not cached_cond:
        return first_stage, None, None
    cond = instantiate_cond_stage(cond_cfg, False, first_stage).to(device)
    return first_stage, cond, key


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from ldm.data.datamodule import split_latent_cache
    from ldm.data.latent_cache import CacheFingerprint, source_kind
    from ldm.data.latent_cache_write import write_cache
    from ldm.inference.devices import check_device
    from ldm.inference.validation import check_positive
    from ldm.models.diffusion.conditioning import encode_values
    from ldm.models.diffusion.first_stage import cache_fields, weights_sha256
    from ldm.util import ConfigError, instantiate_from_config, load_configs

    check_positive(args.batch_size, "--batch-size")
    check_positive(args.items_per_shard, "--items-per-shard")
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = stage1_checkpoint(args.resume)
    # `--config a.yaml key=value` puts the override into --config's list: move it back
    overrides = [c for c in args.config if "=" in c and not c.endswith((".yaml", ".yml"))] + list(args.overrides)
    config = load_configs([c for c in args.config if c not in overrides], overrides)
    if "model" not in config or "params" not in config.model or "first_stage_config" not in config.model.params:
        raise ConfigError(f"--config {' '.join(args.config)}: not a stage-2 config (no "
                          "model.params.first_stage_config)")
    train_cfg = OmegaConf.select(config, "data.params.train")
    if train_cfg is None:
        raise ConfigError(f"--config {' '.join(args.config)}: no data.params.train dataset to cache")
    conditioning_plan(config)  # cheap checks first
    dataset = instantiate_from_config(split_latent_cache(train_cfg)[0], key_path="data.params.train")
    source_kind(dataset)  # only folders and shards: fail before loading the model
    first_stage, cond, cond_key = build_encoders(config, ckpt, device)
    params = config.model.params
    fingerprint = CacheFingerprint(weights_sha256(first_stage), float(params.get("scale_factor", 1.0)),
                                   bool(params.get("scale_by_std", False)), weights_sha256(cond) if cond else None)
    forward = params.get("cond_stage_forward")

    @torch.no_grad()
    def encode_images(x: torch.Tensor) -> dict:
        return cache_fields(first_stage.encode(x.to(device)))

    @torch.no_grad()
    def encode_cond(values):
        return encode_values(cond, values, forward)

    start, last = time.time(), [0.0]

    def progress(n: int) -> None:
        if time.time() - last[0] > 10:
            last[0] = time.time()
            print(f"cached {n} images ({n / max(time.time() - start, 1e-9):.1f}/s)", file=sys.stderr)

    index = write_cache(dataset, args.out, encode_images, fingerprint, cond_key=cond_key,
                        encode_conditioning=encode_cond if cond is not None else None, batch_size=args.batch_size,
                        items_per_shard=args.items_per_shard, overwrite=args.overwrite, progress=progress)
    summary = {"out": os.path.abspath(args.out), "items": len(index["items"]), "skipped": len(index["skipped"]),
               "shards": len(index["shards"]), "kind": index["kind"], "flip": index["flip"],
               "cond_key": index["cond_key"], "checkpoint": ckpt, "seconds": round(time.time() - start, 1)}
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"train from it with: data.params.train.params.latent_cache={summary['out']}")
    return summary


if __name__ == "__main__":
    from ldm.inference.entry import run

    sys.exit(run(main))
