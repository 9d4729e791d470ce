"""Training-loader throughput: one generated image folder read as an ImageFolder vs packed into WebDataset shards.

Both go through the loader training uses: the folder through `ResumableDataLoader` (shuffled, items seeded), the
shards through a plain DataLoader (they order themselves), with random crops and flips, persistent workers, epochs
cycled as needed. Each round times `--batches` batches after `--warmup` (worker start-up and first reads excluded),
rounds alternate folder / shards so drift hits both; the median round is printed with the ratio shards / folder.

    python benchmarks/bench_data.py                       # 512 JPEGs of 96x96 with captions, size 64, batch 16
    python benchmarks/bench_data.py --images 2048 --image-size 512 --format png
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_folder(root: str, n: int, side: int, fmt: str, seed: int = 0) -> None:
    """n smooth random images (photo-like for the codecs) with a two-line caption sidecar each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        f = rng.uniform(2, 9, size=(3, 2))
        arr = 127.5 + 100 * np.sin(f[:, 0] * xx[..., None] + f[:, 1] * yy[..., None] + rng.uniform(0, 6, 3))
        arr = arr + rng.normal(0, 8, arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(os.path.join(root, f"{i:05d}.{fmt}"),
                                                                    quality=90)
        with open(os.path.join(root, f"{i:05d}.txt"), "w") as fh:
            fh.write(f"picture number {i}\nanother caption of {i}\n")


def endless(loader):
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


def images_per_second(stream, warmup: int, batches: int) -> float:
    for _ in range(warmup):
        next(stream)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += len(next(stream)["image"])
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=96, help="side of the generated images")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--size", type=int, default=64, help="training crop size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batches", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from torch.utils.data import DataLoader

    from ldm.data.image_folder import ImageFolder
    from ldm.data.resumable import ResumableDataLoader
    from ldm.data.shards import ShardDataset
    from scripts.make_shards import pack

    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")  # Lightning-style hint, not ours
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "images"), os.path.join(tmp, "shards")
        make_folder(src, args.images, args.image_size, args.format)
        manifest = pack(src, out, args.shard_size)
        size_mb = sum(os.path.getsize(os.path.join(out, s["name"])) for s in manifest["shards"]) / 1e6
        common = {"batch_size": args.batch, "num_workers": args.workers, "persistent_workers": args.workers > 0}
        folder = ImageFolder(src, size=args.size, random_crop=True, flip=True)
        shards = ShardDataset(os.path.join(out, f"{{000000..{len(manifest['shards']) - 1:06d}}}.tar"),
                              size=args.size, shuffle_buffer=256)
        streams = {"folder": endless(ResumableDataLoader(folder, shuffle=True, seed=0, **common)),
                   "shards": endless(DataLoader(shards, **common))}
        rates: dict[str, list[float]] = {name: [] for name in streams}
        for _ in range(args.rounds):
            for name, stream in streams.items():
                rates[name].append(images_per_second(stream, args.warmup, args.batches))
                args.warmup = min(args.warmup, 1)  # later rounds: workers already run
        for stream in streams.values():
            stream.close()
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{args.images} {args.format} images of {args.image_size}px ({len(manifest['shards'])} shards, "
          f"{size_mb:.1f} MB), crop {args.size}, batch {args.batch}, {args.workers} workers, "
          f"{args.batches} batches x {args.rounds} rounds (median)")
    print(f"{'source':<8} {'images/s':>9}   rounds")
    for name, rate in median.items():
        print(f"{name:<8} {rate:>9.1f}   " + " ".join(f"{r:.1f}" for r in rates[name]))
    print(f"shards / folder: {median['shards'] / median['folder']:.2f}x")
    return median


if __name__ == "__main__":
    main()
