#!/usr/bin/env python
"""Pack a (captioned) image folder into WebDataset shards for `ldm.data.shards.ShardDataset`.

    python scripts/make_shards.py DIR OUT --shard-size 1000 [--caption-key K] [--missing-captions skip|empty]
    python scripts/make_shards.py --index SHARD_DIR      # only write SHARD_DIR/manifest.json for existing *.tar

The folder is read as `ldm.data.image_folder.ImageFolder` reads it (same scan order, caption and class rules).
Image i of that order becomes the sample with key `i` (six digits or more) in OUT/000000.tar, 000001.tar, ...:
`<key>.<ext>` the original file's bytes (not re-encoded), `<key>.txt` all its captions one per line (none when it
has none), `<key>.cls` its class index when the folder has class sub-folders (or a label column), `<key>.json`
{"file_name": its path under DIR}. Tars are byte-for-byte reproducible (fixed member times and owners).
OUT/manifest.json (written last, atomically) holds the count per shard and the total, which the dataset needs to
give every DDP rank the same epoch length.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.data.captions import MISSING_CAPTIONS  # noqa: E402  (torch-free: --help answers before torch loads)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One read-only member with fixed owner and time, so the same input gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def pack(src: str, out: str, shard_size: int, caption_key: str | None = None,
         missing_captions: str = "empty") -> dict:
    """Write the shards and the manifest; returns the manifest."""
    from ldm.data.image_folder import ImageFolder
    from ldm.data.shards import MANIFEST_NAME, write_manifest
    from ldm.files import atomic_write

    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"output folder {out} exists and is not empty; choose a new one")
    folder = ImageFolder(src, size=None, caption_key=caption_key, missing_captions=missing_captions,
                         training=False)
    n = len(folder.paths)
    width = max(6, len(str(n - 1)))
    os.makedirs(out, exist_ok=True)
    counts, uncaptioned = {}, 0
    for first in range(0, n, shard_size):
        name = f"{first // shard_size:06d}.tar"
        items = range(first, min(first + shard_size, n))

        def write(f, items=items):
            nonlocal uncaptioned
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in items:
                    rel, key = folder.paths[i], f"{i:0{width}d}"
                    with open(os.path.join(folder.root, rel), "rb") as image:
                        _add(tar, f"{key}.{rel.rsplit('.', 1)[1].lower()}", image.read())
                    captions = folder.caption_choices(i)
                    uncaptioned += not captions
                    if captions:
                        _add(tar, f"{key}.txt", "\n".join(captions).encode("utf-8"))
                    label = folder.class_label(i)
                    if label is not None:
                        _add(tar, f"{key}.cls", str(label).encode())
                    _add(tar, f"{key}.json", json.dumps({"file_name": rel}).encode("utf-8"))

        atomic_write(os.path.join(out, name), write)
        counts[name] = len(items)
    return write_manifest(os.path.join(out, MANIFEST_NAME), counts, source=os.path.abspath(folder.root),
                          shard_size=shard_size, captioned=n - uncaptioned, uncaptioned=uncaptioned,
                          skipped_uncaptioned=folder.num_uncaptioned if missing_captions == "skip" else 0,
                          classes=folder.class_names)


def index(shard_dir: str) -> dict:
    """Write SHARD_DIR/manifest.json for the *.tar already there (counts by reading them)."""
    from ldm.data.shards import MANIFEST_NAME, count_samples, write_manifest

    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(shard_dir), "*.tar")))
    if not names:
        raise FileNotFoundError(f"no .tar shards in {shard_dir}")
    counts = {name: count_samples(os.path.join(shard_dir, name)) for name in names}
    return write_manifest(os.path.join(shard_dir, MANIFEST_NAME), counts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="image folder to pack (with --index: the folder of existing shards)")
    parser.add_argument("out", nargs="?", help="new folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--caption-key", default=None, help="caption column of metadata.jsonl / .csv")
    parser.add_argument("--missing-captions", choices=MISSING_CAPTIONS, default="empty",
                        help="images without a caption: leave them out (skip) or pack them without .txt (empty)")
    parser.add_argument("--index", action="store_true", help="only write DIR/manifest.json for DIR/*.tar")
    args = parser.parse_args(argv)
    if not args.index and not args.out:
        parser.error("OUT is required (or --index DIR)")
    src = os.path.expanduser(args.dir)
    from ldm.data.shards import MANIFEST_NAME

    try:
        if args.index:
            manifest = index(src)
            print(f"wrote {os.path.join(src, MANIFEST_NAME)}: {manifest['total']} samples in "
                  f"{len(manifest['shards'])} shards")
            return manifest
        if not os.path.isdir(src):
            raise FileNotFoundError(f"image folder not found: {src}")
        manifest = pack(src, os.path.expanduser(args.out), args.shard_size, args.caption_key, args.missing_captions)
    except (OSError, ValueError) as err:  # missing folder, existing output, no images (ConfigError): one line
        parser.exit(2, f"make_shards: error: {err}\n")
    skipped = f", {manifest['skipped_uncaptioned']} without caption left out" if manifest["skipped_uncaptioned"] else ""
    print(f"wrote {manifest['total']} images in {len(manifest['shards'])} shards to {args.out} "
          f"({manifest['uncaptioned']} without caption{skipped}"
          + (f", {len(manifest['classes'])} classes" if manifest["classes"] else "") + ")")
    return manifest


if __name__ == "__main__":
    main()
