"""A folder of images as a dataset: recursive scan, captions (sidecar .txt / metadata.jsonl / metadata.csv), class
sub-folders, deterministic train/validation split, and skipping of unreadable files without stopping the run.

A folder without images, or whose images are all unreadable, is a `ConfigError` naming the folder and the counts
(main.py prints it as one line and leaves no run folder behind)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import warnings
from collections.abc import Iterable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ldm.data.buckets import decode_side, nearest_bucket, parse_buckets
from ldm.data.captions import MISSING_CAPTIONS, caption_field, caption_list, choose_caption
from ldm.data.skipped_images import BadImageWarning, SkipCounter
from ldm.data.transforms import ImageTransform, load_image
from ldm.util import ConfigError

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SPLITS = {None: None, "all": None, "train": "train", "training": "train",
          "validation": "validation", "val": "validation", "valid": "validation"}


class UnreadableImagesError(ConfigError, RuntimeError):
    """Not one image a dataset could return can be decoded. A ConfigError (the configured folder is unusable) and, as
    it always was, a RuntimeError."""

    def __init__(self, message: str):
        # A DataLoader worker's error is re-raised in the main process as type(err)("Caught ... in DataLoader worker
        # ...\nOriginal Traceback ...\n<module>.UnreadableImagesError: <message>"): keep the one-line message.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _normalize_extensions(extensions: str | Iterable[str]) -> tuple[str, ...]:
    """('jpg', '.PNG') -> ('.jpg', '.png')."""
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = tuple("." + str(e).lower().lstrip(".") for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file extension")
    return exts


def scan_folder(root: str, extensions: Sequence[str]) -> tuple[list[str], set[str], list[str]]:
    """Walk `root` (following links, skipping hidden entries) in sorted order.

    Returns image paths and sidecar .txt paths relative to root (POSIX separators), and metadata file paths, shallowest
    first so deeper metadata can override it.
    """
    images, texts, metadata = [], set(), []
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        # Hidden entries include macOS "._x.jpg" resource forks, which look like images but are not
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = posixpath.join(rel_dir, name)
            lower = name.lower()
            if lower.endswith(tuple(extensions)):
                images.append(rel)
            elif lower.endswith(".txt"):
                texts.add(rel)
            elif lower in METADATA_FILES:
                metadata.append(rel)
    images.sort()
    metadata.sort(key=lambda p: (p.count("/"), p))
    return images, texts, metadata


def other_files(root: str, limit: int = 100_000) -> tuple[int, str | None]:
    """(count, an example) of the files under `root` that are not images, for "no images found" (at most `limit`
    are counted); hidden names are counted too (the scan skips them), a visible one is the preferred example."""
    count, example, hidden = 0, None, None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            count += 1
            if name.startswith(".") or any(part.startswith(".") for part in rel.split(os.sep)[:-1]):
                hidden = hidden or rel
            else:
                example = example or rel
            if count >= limit:
                return count, example or hidden
    return count, example or hidden


def no_images_message(root: str, extensions: Sequence[str]) -> str:
    """'no images (.jpg, ...) found under ROOT (the folder is empty | found K other files, e.g. x.txt)'."""
    count, example = other_files(root)
    found = "the folder is empty" if not count else f"found {count} other file(s), e.g. {example}"
    if example and os.path.basename(example).startswith("."):
        found += "; names starting with '.' are skipped"
    return f"no images ({', '.join(extensions)}) found under {root} ({found})"


def read_metadata(path: str, caption_key: str | None = None, label_key: str | None = None) -> dict[str, dict]:
    """Rows of a metadata.jsonl / metadata.csv: {file_name relative to the metadata file's folder: {"captions": [...],
    "label": value or None}} (a JSON caption may be a list: several captions; a CSV cell one caption per line)."""
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".jsonl"):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({err})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append((lineno, row))
        else:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "file_name" not in reader.fieldnames:
                raise ValueError(f"{path}: the CSV header must have a 'file_name' column, got {reader.fieldnames}")
            rows = [(lineno, row) for lineno, row in enumerate(reader, 2)]
    entries = {}
    for lineno, row in rows:
        if "file_name" not in row:
            raise ValueError(f"{path}:{lineno}: no 'file_name' field")
        label = row.get(label_key) if label_key else None
        entries[posixpath.normpath(str(row["file_name"]).replace("\\", "/"))] = {
            "captions": caption_list(caption_field(row, caption_key)), "label": None if label in ("", None) else label}
    if rows and caption_key and not any(e["captions"] for e in entries.values()):
        raise ValueError(f"{path}: no row has the caption column '{caption_key}' (caption_key)")
    if rows and label_key and all(e["label"] is None for e in entries.values()):
        raise ValueError(f"{path}: no row has the label column '{label_key}' (label_key)")
    return entries


def read_file_list(file_list: str | Sequence[str], root: str) -> list[str]:
    """Relative image paths from a txt file (one per line; blank lines and '#' comments ignored) or a list."""
    if isinstance(file_list, (str, os.PathLike)):
        path = os.fspath(file_list)
        if not os.path.isabs(path) and not os.path.isfile(path):
            path = os.path.join(root, path)  # a bare name means a list stored next to the images
        if not os.path.isfile(path):
            raise FileNotFoundError(f"file_list not found: {file_list}")
        with open(path, encoding="utf-8") as f:
            entries = [line.strip() for line in f]
    else:
        entries = [str(e).strip() for e in file_list]
    rels = [posixpath.normpath(e.replace("\\", "/")) for e in entries if e and not e.startswith("#")]
    missing = [r for r in rels if not os.path.isfile(os.path.join(root, r))]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"file_list names {len(missing)} file(s) missing under {root}: {shown}")
    return rels


def _hash_order(paths: Sequence[str], seed: int) -> list[int]:
    """Indices of `paths` in a pseudo-random order that depends only on each path and the seed (stable when files are added)."""
    def key(i: int) -> str:
        return hashlib.sha1(f"{seed}:{paths[i]}".encode()).hexdigest()
    return sorted(range(len(paths)), key=key)


def split_indices(paths: Sequence[str], split: str | None, validation_fraction: float, seed: int = 0) -> list[int]:
    """Deterministic train / validation partition: the first round(n * fraction) paths in hash order are validation."""
    if split is None or validation_fraction <= 0:
        return list(range(len(paths)))
    n = len(paths)
    n_val = min(max(1, round(n * validation_fraction)), n - 1) if n > 1 else 0
    val = set(_hash_order(paths, seed)[:n_val])
    return [i for i in range(n) if (i in val) == (split == "validation")]


def class_folders(root: str) -> list[str]:
    """Sorted non-hidden top-level sub-folders of `root`: the class names (torchvision ImageFolder's rule)."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


class ImageFolder(Dataset):
    """Images under `root` (recursive) as dicts: `image` HWC float32 in [-1, 1], `file_path_`, and when available
    `caption` (sidecar `<name>.txt` > metadata.jsonl / metadata.csv as in HF imagefolder; several captions, one per
    line or a JSON list, give a random one per training step, see ldm.data.captions) and `class_label` /
    `human_label` (the metadata column `label_key` when given, else the top-level sub-folder, sorted, used when every
    image lies in one).

    `missing_captions`: in a partly captioned folder, "skip" drops the images without a caption (counted in
    `num_uncaptioned`), "empty" trains them with ""; None (default) keeps them as "" without judging (autoencoders).

    `file_list` (a txt of relative paths, or a list) replaces the scan, as the CompVis `txt_file` datasets did.
    `split` = "train" / "validation" with `validation_fraction` carves a deterministic split from one folder.
    `buckets` ({pixels, multiple, max_ratio} or a list of [h, w]; see ldm.data.buckets) gives each image the
    non-square size of its aspect-ratio bucket (cover-resized, then cropped as `size` would be) instead of a
    `size` square; `bucket_of(i)` reads only the file header. Pick `multiple` = first-stage x UNet downsampling,
    e.g. 8 x 8 = 64 for KL-f8 with a 4-level UNet. Batches must then come from BucketBatchSampler (the
    DataModule does this).
    `max_items` keeps a fixed pseudo-random subset. A file that cannot be decoded is skipped with a BadImageWarning and
    the next readable item is returned; `num_skipped` counts such files across DataLoader workers.
    """

    def __init__(self, root: str, size: int | None = 256, random_crop: bool = False, flip: bool = False,
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS, caption_key: str | None = None,
                 class_from_subfolders: bool = True, max_items: int | None = None,
                 file_list: str | Sequence[str] | None = None, split: str | None = None,
                 validation_fraction: float = 0.0, split_seed: int = 0, interpolation: str = "bicubic",
                 label_key: str | None = None, missing_captions: str | None = None, training: bool | None = None,
                 buckets: dict | Sequence[Sequence[int]] | None = None):
        root = os.path.expanduser(os.fspath(root))
        if not os.path.exists(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"image folder is not a directory: {root}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {[s for s in SPLITS if s]} or None, got {split!r}")
        if not 0.0 <= float(validation_fraction) < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        split = SPLITS[split]
        if missing_captions not in (None, *MISSING_CAPTIONS):
            raise ValueError(f"missing_captions must be one of {MISSING_CAPTIONS} or null, got {missing_captions!r}")
        if split == "validation" and validation_fraction <= 0 and file_list is None:
            raise ValueError(f"split='validation' of {root} needs validation_fraction > 0 or a file_list")
        self.root = root
        self.split = split
        self.training = split != "validation" if training is None else bool(training)
        self.transform = ImageTransform(size, random_crop=random_crop, flip=flip, interpolation=interpolation)
        exts = _normalize_extensions(extensions)

        scanned, texts, metadata = scan_folder(root, exts)
        paths = read_file_list(file_list, root) if file_list is not None else scanned
        if not paths:
            if file_list is not None:
                raise ConfigError(f"no images found in file_list {file_list} (root {root})")
            raise ConfigError(no_images_message(root, exts))
        keep = split_indices(paths, split, float(validation_fraction), split_seed)
        if max_items is not None and len(keep) > max_items:
            kept = [paths[i] for i in keep]
            keep = sorted(keep[j] for j in _hash_order(kept, split_seed + 1)[:max(0, int(max_items))])
        self.paths = [paths[i] for i in keep]
        if not self.paths:
            raise ConfigError(f"the {split} split of {root} is empty ({len(paths)} images, "
                              f"validation_fraction={validation_fraction}, max_items={max_items})")
        self._folder_paths = paths  # the same strings: the whole folder, to count it if this part is unreadable
        self._reasons: dict[int, str] = {}  # why item i is unreadable (this process's findings)

        rows = self._read_metadata(metadata, caption_key, label_key)
        self.captions = self._resolve_captions(texts, rows)
        self.has_captions = any(c is not None for c in self.captions)
        self.missing_captions = missing_captions
        self.num_uncaptioned = sum(c is None for c in self.captions) if self.has_captions else 0
        if missing_captions == "skip" and self.num_uncaptioned:
            keep_items = [i for i, c in enumerate(self.captions) if c is not None]
            self.paths = [self.paths[i] for i in keep_items]
            self.captions = [self.captions[i] for i in keep_items]
        if label_key:
            self.class_names, self._labels = self._labels_from_metadata(rows, label_key)
        else:
            self.class_names = self._resolve_classes(paths) if class_from_subfolders else None
        self._skips = SkipCounter(len(self.paths))
        self.bucket_sizes = parse_buckets(buckets) if buckets is not None else None
        self._image_sizes: dict[str, tuple[int, int]] = {}  # (width, height) from the file header, per path

    def _read_metadata(self, metadata: list[str], caption_key: str | None, label_key: str | None) -> dict[str, dict]:
        """Metadata rows of every metadata file, keyed by image path relative to root (deeper files override)."""
        rows: dict[str, dict] = {}
        for meta in metadata:  # shallowest first, so deeper files override
            folder = posixpath.dirname(meta)
            for name, row in read_metadata(os.path.join(self.root, meta), caption_key, label_key).items():
                rows[posixpath.normpath(posixpath.join(folder, name))] = row
        return rows

    def _resolve_captions(self, texts: set[str], rows: dict[str, dict]) -> list:
        """Per item: ('sidecar', relpath) for a .txt next to it, else its metadata captions (a list), else None."""
        captions: list = []
        for rel in self.paths:
            sidecar = posixpath.splitext(rel)[0] + ".txt"
            # Sidecars are read lazily in __getitem__: reading millions of small files here would stall start-up
            from_meta = rows.get(rel, {}).get("captions")
            captions.append(("sidecar", sidecar) if sidecar in texts else (from_meta or None))
        return captions

    def _labels_from_metadata(self, rows: dict[str, dict], label_key: str) -> tuple[list[str], list[int]]:
        """Class names and per-item indices from the metadata column `label_key`: integer labels are used as
        they are (names "0", "1", ...), other values are sorted and numbered."""
        values = [rows.get(rel, {}).get("label") for rel in self.paths]
        missing = [rel for rel, v in zip(self.paths, values) if v is None]
        if missing:
            raise ConfigError(f"{self.root}: {len(missing)} of {len(values)} images have no '{label_key}' "
                              f"(label_key) in the metadata, e.g. {missing[0]}")
        try:
            ints = [int(str(v)) for v in values]
        except ValueError:
            names = sorted({str(v) for v in values})
            index = {name: i for i, name in enumerate(names)}
            return names, [index[str(v)] for v in values]
        if min(ints) < 0:
            raise ConfigError(f"{self.root}: negative class label {min(ints)} in '{label_key}' (label_key)")
        return [str(i) for i in range(max(ints) + 1)], ints

    def _resolve_classes(self, all_paths: Sequence[str]) -> list[str] | None:
        """Class names when every image lies in a top-level sub-folder, else None."""
        if any("/" not in p for p in all_paths):
            return None
        names = class_folders(self.root)
        self._class_index = {name: i for i, name in enumerate(names)}
        return names

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable files skipped so far, counted across all DataLoader worker processes."""
        return self._skips.count

    def skipped_files(self) -> list[str]:
        """Paths of the unreadable files skipped so far."""
        return [os.path.join(self.root, self.paths[i]) for i in self._skips.indices()]

    def __len__(self) -> int:
        return len(self.paths)

    def caption_choices(self, i: int) -> list[str]:
        """All captions of item i ([] when it has none)."""
        caption = self.captions[i]
        if isinstance(caption, tuple):
            path = os.path.join(self.root, caption[1])
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    return caption_list(f.read())
            except OSError as err:
                warnings.warn(f"cannot read caption file {path}: {err}", BadImageWarning, stacklevel=2)
                return []
        return caption_list(caption)

    def _caption(self, i: int) -> str:
        """The caption of item i for this step: one of its captions at random when training, else the first."""
        return choose_caption(self.caption_choices(i), self.training)

    def bucket_of(self, index: int) -> int:
        """Bucket of item `index` by its file header's aspect ratio (no decode; 0 for an unreadable header)."""
        rel = self.paths[index]
        if rel not in self._image_sizes:
            try:
                with Image.open(os.path.join(self.root, rel)) as img:
                    # EXIF rotation swaps the sides the loader will see
                    w, h = img.size
                    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                        w, h = h, w
            except Exception:  # __getitem__ skips it with a warning
                w = h = 1
            self._image_sizes[rel] = (w, h)
        w, h = self._image_sizes[rel]
        return nearest_bucket(h, w, self.bucket_sizes)

    def _example(self, i: int, image, bucket: int | None = None) -> dict:
        """The example dict of item i from its decoded RGB image, at the size of `bucket` (default: item i's)."""
        path = os.path.join(self.root, self.paths[i])
        out = None if self.bucket_sizes is None else self.bucket_sizes[self.bucket_of(i) if bucket is None else bucket]
        example = {"image": self.transform(image, out=out), "file_path_": path}
        if self.has_captions:
            example["caption"] = self._caption(i)
        label = self.class_label(i)
        if label is not None:
            example["class_label"] = label
            example["human_label"] = self.class_names[label]
        return example

    def class_label(self, i: int) -> int | None:
        """Class index of item i: from the metadata's label column, else its top-level sub-folder; None when the
        folder has no classes."""
        if self.class_names is None:
            return None
        if hasattr(self, "_labels"):
            return self._labels[i]
        return self._class_index[self.paths[i].split("/", 1)[0]]

    def __getitem__(self, index: int) -> dict:
        """Item `index`, or the next readable one when its file cannot be decoded (at item `index`'s bucket size, so
        a bucket batch keeps one shape)."""
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for k in range(n):
            j = (index + k) % n
            if self._skips.is_marked(j):
                continue
            image, error = self._load(self.paths[j])
            if error is not None:
                self._reasons[j] = error
                if self._skips.mark(j):
                    warnings.warn(f"skipping unreadable image {error}", BadImageWarning, stacklevel=2)
                continue
            return self._example(j, image, None if j == index or self.bucket_sizes is None else self.bucket_of(index))
        raise UnreadableImagesError(self._unreadable_message())

    def _load(self, rel: str) -> tuple[object, str | None]:
        """(decoded image, None), or (None, '<path>: <error type>: <message>') for a file that cannot be decoded."""
        path = os.path.join(self.root, rel)
        try:
            return load_image(path, min_side=decode_side(self.transform.size, self.bucket_sizes)), None
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
            return None, f"{path}: {type(err).__name__}: {err}"

    def _unreadable_message(self) -> str:
        """Why no item can be returned, counting the whole folder: 'all N images under ROOT (train split: k) are
        unreadable; first: <path>: <reason>', or which part of the folder is unreadable when the rest is not."""
        first = self._reasons.get(0) or self._load(self.paths[0])[1]  # marked by another worker: ask again
        k, n = len(self.paths), len(self._folder_paths)
        if k == n:
            return f"all {n} images under {self.root} are unreadable; first: {first}"
        part = f"{self.split} split" if self.split else "max_items subset"
        mine = set(self.paths)
        if not any(self._load(rel)[1] is None for rel in self._folder_paths if rel not in mine):
            return f"all {n} images under {self.root} ({part}: {k}) are unreadable; first: {first}"
        return (f"all {k} images of the {part} of {self.root} are unreadable (the folder's readable images are all "
                f"outside it; remove or replace the bad files); first: {first}")

    def __repr__(self) -> str:
        return (f"ImageFolder(root='{self.root}', n={len(self)}, split={self.split}, captions={self.has_captions}, "
                f"classes={None if self.class_names is None else len(self.class_names)}, {self.transform})")
