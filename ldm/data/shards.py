"""WebDataset `.tar` shards as a streamed training source, split by DDP rank and DataLoader worker, equal lengths.

A shard holds samples as tar members grouped by key (`000123.jpg`, `000123.txt`, `000123.json`, `000123.cls`); the
image is the first of .jpg/.jpeg/.png/.webp/.bmp. Items are the folder dataset's: `image` HWC float32 in [-1, 1],
`file_path_` "<shard url>#<key>", `caption` (the .txt, else the .json caption field; ldm.data.captions rules),
`class_label` (the .cls) and `human_label` when the manifest names the classes. Images are decoded as they stream.

Epochs. `scripts/make_shards.py` writes `manifest.json`: the samples per shard. An epoch reads the shards in an order
drawn from (seed, epoch) as one sequence of N samples; each rank gets N // world_size of it, cut into one contiguous
range per (rank, worker), so no two readers share a sample and every rank yields the same count (DDP hangs
otherwise). With many shards a range is mostly whole shards; with few, ranges split shards and a reader reads (does
not decode) the samples before its range. The last N % world_size samples of each epoch's order are left out of that
epoch; the order changes every epoch, so which ones changes too. A buffer of `shuffle_buffer` undecoded samples per
reader mixes the order within a range (its memory: that many samples' bytes per worker).
Without a manifest, `length` (samples per rank and epoch) is required: readers then take whole shards round-robin
(every n-th sample when there are fewer shards than readers) and cycle over them until they reach their share.

Unreadable samples (undecodable or missing image) are skipped with a BadImageWarning, counted in `num_skipped`
across workers, and replaced by a repeat of the reader's previous good sample, so lengths stay equal. A shard that
cannot be opened or read is an error naming it.

Each item is made under RNGs seeded from (seed, epoch, shard, position in shard), so its crop, flip and caption do
not depend on the number of ranks or workers.

Resume (`main.py -r`): the model, EMA, optimizers, lr schedules and step counter come back exactly from the
checkpoint; the stream is approximate. The dataset does not see the trainer's epoch: each worker counts its passes
from 0 in a fresh process (`set_epoch(e)` sets the count). Lightning finishes an interrupted epoch with its remaining
batches, and those come from the start of pass 0's stream: samples seen before the interruption come again and the
rest of that epoch's share is not seen (Lightning 2.6, checked: stopped after batch 3 of 7, the resumed epoch ran
batches 3-6 on the stream's first 4 samples). Resumed in epoch e, the run's epochs e, e+1, ... get the shard orders
and augmentations of epochs 0, 1, ... again, unless a callback calls `set_epoch(trainer.current_epoch)`.

Aspect-ratio buckets (`buckets`, as for folders: ldm.data.buckets): each image is resized and cropped to the bucket
of its aspect ratio, and each reader groups its stream into batches of one size (`batch_by_bucket`, which the data
module calls with its batch size and worker count; the loader then takes whole batches). Every reader yields
floor(its samples / batch size) batches, so ranks stay equal; per reader and epoch, fewer than batch size samples per
bucket are left over and not used (the order changes every epoch, so which ones changes too).

`pipe:` urls run a shell command (webdataset's url openers), so they are refused unless the user sets
LDM_ALLOW_PIPE_URLS=1: a shared config or run folder must not run commands.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls as wds_expand_urls
from webdataset.tariterators import base_plus_ext

from ldm.data.buckets import batches_by_shape, decode_side, nearest_bucket, parse_buckets
from ldm.data.captions import caption_field, caption_list, choose_caption
from ldm.data.image_folder import DEFAULT_EXTENSIONS, SPLITS, UnreadableImagesError
from ldm.data.resumable import derived_seed, run_seed, seeded_global_rngs
from ldm.data.skipped_images import BadImageWarning, SkipCounter
from ldm.data.transforms import ImageTransform, load_image
from ldm.util import ConfigError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
MAKE_SHARDS = "scripts/make_shards.py"
# Skip flags of shards without a manifest: a fixed table indexed by a hash of (shard, position); counts of more than
# a few thousand distinct bad samples come out slightly low (collisions).
HASHED_SKIP_SLOTS = 1 << 16
# Pass counters, one per DataLoader worker id (modulo this): workers made anew each epoch must still count on.
EPOCH_SLOTS = 256


class ShardError(UnreadableImagesError):
    """A shard cannot be opened or read, or a reader found no readable sample; the message names the shard."""


# Environment variable that allows `pipe:` shard urls (they run a shell command); there is no config key for it.
ALLOW_PIPES_ENV = "LDM_ALLOW_PIPE_URLS"


def expand_urls(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard urls from a string or a list: brace patterns (`x/{000000..000009}.tar`) and `::` lists are expanded."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    expanded = []
    for item in items:
        for url in wds_expand_urls(os.fspath(item)):
            expanded.append(os.path.expanduser(url) if local_path(url) is not None else url)
    if not expanded:
        raise ConfigError(f"no shard urls in {urls!r}")
    piped = [url for url in expanded if url.startswith("pipe:")]
    if piped and os.environ.get(ALLOW_PIPES_ENV) != "1":
        # A shared config or run folder must not run commands; the user allows it for their own shell, not the config
        raise ConfigError(f"shard url {piped[0]!r} runs a shell command; if you wrote it, allow shell-command urls "
                          f"with {ALLOW_PIPES_ENV}=1 in the environment")
    return expanded


def local_path(url: str) -> str | None:
    """The file path of a local shard url (plain path or file:), None for pipe:, http:, s3: ..."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def shard_name(url: str) -> str:
    """The file name a url reads, to find it in a manifest: `.../000001.tar` for paths, http and
    `pipe:aws s3 cp s3://b/000001.tar -` (the last word that looks like a tar)."""
    path = local_path(url)
    if path is not None:
        return os.path.basename(path)
    words = url.partition(":")[2].split() if url.startswith("pipe:") else [url]
    names = [os.path.basename(urlparse(w).path or w) for w in words]
    tars = [n for n in names if ".tar" in n or n.endswith(".tgz")]
    return tars[-1] if tars else names[-1]


def read_manifest(path: str) -> dict:
    """A manifest written by make_shards: {"total": N, "shards": [{"name", "count"}], ...}; any gopen url works."""
    try:
        with gopen(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"shard manifest not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read shard manifest {path}: {type(err).__name__}: {err}") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and {"name", "count"} <= set(s) for s in shards):
        raise ConfigError(f"{path}: not a shard manifest (expected 'shards': [{{'name', 'count'}}, ...]); "
                          f"write one with {MAKE_SHARDS}")
    return manifest


def write_manifest(path: str, counts: dict[str, int], **info: Any) -> dict:
    """Write a manifest atomically: the count per shard name (in order), the total and `info` (source, captions...)."""
    from ldm.files import atomic_write

    manifest = {"format": MANIFEST_FORMAT, "total": sum(counts.values()),
                "shards": [{"name": name, "count": int(n)} for name, n in counts.items()], **info}
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return manifest


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # a pipe closed before its end reports the broken pipe; nothing was lost that we wanted
        pass


def tar_members(url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of one tar, streamed in order (webdataset's url openers)."""
    try:
        stream = gopen(url, "rb")
    except Exception as err:
        raise ShardError(f"cannot open shard {url}: {type(err).__name__}: {err}") from None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if info.isreg():
                    yield info.name, tar.extractfile(info).read()
                tar.members = []  # a streamed tar still keeps every header it read: forget them
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ShardError(f"cannot read shard {url}: {type(err).__name__}: {err}") from None
    finally:
        _close_quietly(stream)


def read_shard(url: str) -> Iterator[dict]:
    """Samples of one shard in order: {"__key__": key, "<ext>": bytes, ...} for each run of members with one key."""
    sample: dict | None = None
    for name, data in tar_members(url):
        key, ext = base_plus_ext(name)
        base = os.path.basename(name)
        if key is None or base.startswith(".") or (base.startswith("__") and base.endswith("__")):
            continue  # no extension, hidden, or webdataset metadata
        ext = ext.lower()
        if sample is not None and key != sample["__key__"]:
            yield sample
            sample = None
        sample = sample or {"__key__": key}
        if ext in sample:
            raise ShardError(f"cannot read shard {url}: member {name} appears twice in sample {key}")
        sample[ext] = data
    if sample is not None:
        yield sample


def count_samples(url: str) -> int:
    """Number of samples (keys) in one shard, by reading it."""
    return sum(1 for _ in read_shard(url))


def stream_share(length: int, readers: int, reader: int) -> tuple[int, int]:
    """(offset, count) of reader `reader` of `readers` splitting `length` samples: counts differ by at most one."""
    base, extra = divmod(length, readers)
    return reader * base + min(reader, extra), base + (reader < extra)


def plan_range(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """The samples [start, stop) of the shards read in `order` as one sequence: (shard, skip, take) pieces."""
    pieces, offset = [], 0
    for shard in order:
        lo, hi = max(start, offset), min(stop, offset + counts[shard])
        if lo < hi:
            pieces.append((shard, lo - offset, hi - lo))
        offset += counts[shard]
        if offset >= stop:
            break
    return pieces


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """`items` through a buffer of `size`: each new item takes a random slot and its occupant goes out."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        buffer[slot], item = item, buffer[slot]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def world_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the overrides, else torch.distributed when initialized, else env RANK / WORLD_SIZE."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            found = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardDataset(IterableDataset):
    """Samples of WebDataset shards as the folder dataset's items, split by rank and worker (see the module doc).

    `urls`: a list, one string, a brace pattern or anything webdataset opens (`pipe:...`, `https://...`).
    `manifest`: make_shards' manifest.json (default: next to the first local shard); `length` (samples per rank and
    epoch) replaces it, or shortens the epoch. `training` (default: `split` is not validation) shuffles shards and
    samples and picks random captions; `random_crop` / `flip` default to `training`. `seed` defaults to the run's.
    `buckets`: aspect-ratio buckets ({pixels, multiple, max_ratio} or a list of [h, w]) instead of `size` squares;
    see the module doc.
    """

    def __init__(self, urls: str | Sequence[str], size: int | None = 256, manifest: str | None = None,
                 shuffle_buffer: int = 1000, caption_key: str | None = None, training: bool | None = None,
                 split: str | None = None, random_crop: bool | None = None, flip: bool | None = None,
                 seed: int | None = None, length: int | None = None, interpolation: str = "bicubic",
                 rank: int | None = None, world_size: int | None = None,
                 buckets: dict | Sequence[Sequence[int]] | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {[s for s in SPLITS if s]} or None, got {split!r}")
        if length is not None and int(length) <= 0:
            raise ValueError(f"length must be a positive number of samples per rank, got {length}")
        self.urls = expand_urls(urls)
        missing = [u for u in self.urls if local_path(u) is not None and not os.path.isfile(local_path(u))]
        if missing:
            raise FileNotFoundError(f"shard not found: {missing[0]} ({len(missing)} of {len(self.urls)} missing)")
        self.training = SPLITS[split] != "validation" if training is None else bool(training)
        self.transform = ImageTransform(size, random_crop=self.training if random_crop is None else random_crop,
                                        flip=self.training if flip is None else flip, interpolation=interpolation)
        self.shuffle_buffer = int(shuffle_buffer)
        self.caption_key = caption_key
        self.seed = run_seed() if seed is None else int(seed)
        self.length = None if length is None else int(length)
        self.rank, self.world_size = rank, world_size
        self.bucket_sizes = parse_buckets(buckets) if buckets is not None else None
        self.bucket_batch: tuple[int, int] | None = None  # (batch size, DataLoader workers): see batch_by_bucket

        self.manifest_path = self._find_manifest(manifest)
        info = read_manifest(self.manifest_path) if self.manifest_path else {}
        self.counts = self._match_counts(info) if info else None
        if self.counts is None and self.length is None:
            raise ConfigError(self._no_manifest_message())
        self.total = None if self.counts is None else sum(self.counts)
        self.class_names = info.get("classes")
        captioned = info.get("captioned")
        self.has_captions = captioned is None or captioned > 0  # unknown: every item carries one ('' if none)
        self.num_uncaptioned = int(info.get("uncaptioned") or 0)
        if self.counts is not None:
            self._offsets = [0]
            for n in self.counts:
                self._offsets.append(self._offsets[-1] + n)
        self._skips = SkipCounter(self.total if self.counts is not None else HASHED_SKIP_SLOTS)
        # [epoch base, passes of worker 0, 1, ...] in shared memory: set_epoch reaches running (persistent) workers,
        # and workers started anew each epoch continue their predecessor's count
        self._epochs = torch.zeros(1 + EPOCH_SLOTS, dtype=torch.int64).share_memory_()
        self._warned: set[tuple[int, int]] = set()

    # -- manifest ------------------------------------------------------------------------------------------------

    def _find_manifest(self, manifest: str | None) -> str | None:
        """The manifest to read: the given one, else manifest.json next to the first local shard when it exists."""
        if manifest is not None:
            return os.path.expanduser(os.fspath(manifest))
        first = local_path(self.urls[0])
        if first is not None:
            candidate = os.path.join(os.path.dirname(first), MANIFEST_NAME)
            return candidate if os.path.isfile(candidate) else None
        return None

    def _no_manifest_message(self) -> str:
        first = local_path(self.urls[0])
        where = (f"no {MANIFEST_NAME} next to {first}" if first is not None
                 else f"no manifest given for {self.urls[0]}")
        return (f"{where}, so the epoch length of these {len(self.urls)} shard(s) is unknown: pack the images with "
                f"`python {MAKE_SHARDS} DIR OUT` (or index existing shards with `python {MAKE_SHARDS} --index "
                f"SHARD_DIR`) and set `manifest`, or set `length` (samples per rank and epoch)")

    def _match_counts(self, info: dict) -> list[int]:
        """The manifest's count of each url, matched by shard file name."""
        by_name = {os.path.basename(str(s["name"])): int(s["count"]) for s in info["shards"]}
        counts = []
        for url in self.urls:
            name = shard_name(url)
            if name not in by_name:
                listed = ", ".join(list(by_name)[:3]) + (" ..." if len(by_name) > 3 else "")
                raise ConfigError(f"shard {url} ({name}) is not in the manifest {self.manifest_path} (it lists "
                                  f"{len(by_name)}: {listed}); rebuild it with `python {MAKE_SHARDS} --index DIR`")
            counts.append(by_name[name])
        return counts

    # -- lengths, epochs, skips ----------------------------------------------------------------------------------

    def rank_length(self, world_size: int) -> int:
        """Samples each of `world_size` ranks yields per epoch: total // world_size, or `length`."""
        if self.counts is None:
            return self.length
        per_rank = self.total // world_size
        if per_rank == 0:
            raise ConfigError(f"{self.total} samples in {len(self.urls)} shard(s) cannot give each of "
                              f"{world_size} ranks one")
        if self.length is not None and self.length > per_rank:
            raise ConfigError(f"length={self.length} is more than the {per_rank} samples per rank that "
                              f"{self.total} samples give {world_size} rank(s) ({self.manifest_path})")
        return self.length or per_rank

    def batch_by_bucket(self, batch_size: int, num_workers: int) -> None:
        """Yield whole batches of one bucket each (for a DataLoader with batch_size=None and `num_workers`)."""
        if not self.bucket_sizes:
            raise ValueError("batch_by_bucket needs `buckets`")
        self.bucket_batch = (int(batch_size), max(1, int(num_workers)))
        if len(self) == 0:
            rank_share = self.rank_length(world_info(self.rank, self.world_size)[1])
            raise ConfigError(f"{rank_share} samples per rank, split over {self.bucket_batch[1]} DataLoader "
                              f"worker(s), do not make one bucket batch of {batch_size}; lower the batch size or "
                              f"num_workers")

    def _reader_batches(self, length: int, workers: int, worker: int) -> int:
        """Bucket batches DataLoader worker `worker` of `workers` yields from a rank share of `length` samples."""
        return stream_share(length, workers, worker)[1] // self.bucket_batch[0]

    def __len__(self) -> int:
        """Samples per epoch of this rank, or batches when batching by bucket."""
        length = self.rank_length(world_info(self.rank, self.world_size)[1])
        if self.bucket_batch is None:
            return length
        workers = self.bucket_batch[1]
        return sum(self._reader_batches(length, workers, w) for w in range(workers))

    def __getstate__(self) -> dict:
        # Pickled for spawned DataLoader workers (e.g. under mp.spawn / ddp_spawn), which have no process group and
        # often no RANK in their environment: they take the rank of the process that starts them
        state = dict(self.__dict__)
        state["rank"], state["world_size"] = world_info(self.rank, self.world_size)
        return state

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch` (later passes count on from it), in this process and its workers."""
        self._epochs[1:] = 0
        self._epochs[0] = int(epoch)

    def _next_epoch(self, worker: int) -> int:
        """The epoch of this pass of worker `worker` (each worker, or the main process as worker 0, counts its own)."""
        slot = 1 + worker % EPOCH_SLOTS
        passes = int(self._epochs[slot])
        self._epochs[slot] = passes + 1
        return int(self._epochs[0]) + passes

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable samples skipped so far, across DataLoader workers (without a manifest: approximate)."""
        return self._skips.count

    def skipped_files(self) -> list[str]:
        """'<shard url> sample <position>' of the skipped samples (known with a manifest only)."""
        if self.counts is None:
            return []
        found = []
        for index in self._skips.indices():
            shard = next(s for s in range(len(self.urls)) if index < self._offsets[s + 1])
            found.append(f"{self.urls[shard]} sample {index - self._offsets[shard]}")
        return found

    def _note_skip(self, shard: int, pos: int, key: str, reason: str) -> None:
        """Count a skipped sample (once, across workers) and warn about it (once per process)."""
        if self.counts is None:
            self._skips.mark(zlib.crc32(f"{shard}:{pos}".encode()) % HASHED_SKIP_SLOTS)
        elif pos < self.counts[shard]:  # beyond it, the shard is longer than the manifest says: not counted
            self._skips.mark(self._offsets[shard] + pos)
        if (shard, pos) not in self._warned:
            self._warned.add((shard, pos))
            warnings.warn(f"skipping unreadable sample {self.urls[shard]}#{key}: {reason}", BadImageWarning,
                          stacklevel=3)

    # -- reading -------------------------------------------------------------------------------------------------

    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.urls)))
        if self.training:
            random.Random(derived_seed(self.seed, epoch)).shuffle(order)
        return order

    def _passes(self, epoch: int, reader: int, readers: int, start: int, count: int) -> Iterator[Iterator[tuple]]:
        """Passes over this reader's share, each an iterator of undecoded (shard, position, sample): one pass with
        a manifest, endless passes without (the consumer stops when it has its share or a pass is empty)."""
        order = self._shard_order(epoch)
        if self.counts is not None:
            yield self._range(plan_range(self.counts, order, start, start + count))
            return
        while True:
            yield self._strided(order, reader, readers)

    def _range(self, pieces: list[tuple[int, int, int]]) -> Iterator[tuple]:
        for shard, skip, take in pieces:
            for pos, sample in enumerate(read_shard(self.urls[shard])):
                if pos >= skip + take:
                    break
                if pos >= skip:
                    yield shard, pos, sample

    def _strided(self, order: list[int], reader: int, readers: int) -> Iterator[tuple]:
        """Whole shards round-robin, or every n-th sample of the sequence when there are fewer shards than readers."""
        mine = order[reader::readers] if len(order) >= readers else order
        index = 0
        for shard in mine:
            for pos, sample in enumerate(read_shard(self.urls[shard])):
                if len(order) >= readers or index % readers == reader:
                    yield shard, pos, sample
                index += 1

    def __iter__(self) -> Iterator[dict]:
        if self.bucket_batch is None:
            yield from self._examples()
            return
        worker, workers = _worker()
        if workers != self.bucket_batch[1]:
            raise RuntimeError(f"batch_by_bucket was told {self.bucket_batch[1]} DataLoader worker(s), but "
                               f"{workers} read the shards")
        length = self.rank_length(world_info(self.rank, self.world_size)[1])
        yield from batches_by_shape(self._examples(), self._reader_batches(length, workers, worker),
                                    self.bucket_batch[0])

    def _examples(self) -> Iterator[dict]:
        """This reader's share of the epoch, one example at a time."""
        rank, world = world_info(self.rank, self.world_size)
        worker, workers = _worker()
        epoch = self._next_epoch(worker)
        length = self.rank_length(world)
        offset, count = stream_share(length, workers, worker)
        reader, readers = rank * workers + worker, world * workers
        rng = random.Random(derived_seed(self.seed, epoch, reader, readers))
        made, last_good, first_error = 0, None, None
        for pass_, items in enumerate(self._passes(epoch, reader, readers, rank * length + offset, count)):
            if made == count or (pass_ > 0 and last_good is None):
                break  # done, or a whole pass over this reader's shards without one readable sample
            if self.training and self.shuffle_buffer > 1:
                items = shuffled(items, self.shuffle_buffer, rng)
            got = 0
            try:
                for shard, pos, sample in items:
                    if made == count:
                        break
                    got += 1
                    example, error = self._make(shard, pos, sample, epoch)
                    if error is None:
                        last_good = (shard, pos, sample)
                    else:
                        self._note_skip(shard, pos, sample["__key__"], error)
                        first_error = first_error or f"{self.urls[shard]}#{sample['__key__']}: {error}"
                        if last_good is None:
                            continue  # made up for at the end
                        example, _ = self._make(*last_good, epoch, repeat=made)
                    made += 1
                    yield example
            finally:
                items.close()  # closes the open shard when the share ends inside it
            if not got:
                break
        if made < count and last_good is None:
            where = f"rank {rank}, worker {worker} of {len(self.urls)} shard(s) from {self.urls[0]}"
            raise ShardError(f"no readable sample in the share of {where}; "
                             + (f"first: {first_error}" if first_error else "the shards are empty"))
        if made < count and first_error is None:
            warnings.warn(f"the shards hold fewer samples than {self.manifest_path} says; rebuild it with "
                          f"`python {MAKE_SHARDS} --index DIR`", BadImageWarning, stacklevel=2)
        for k in range(made, count):  # bad samples before the first good one, or shards shorter than the manifest
            yield self._make(*last_good, epoch, repeat=k)[0]

    # -- one sample ----------------------------------------------------------------------------------------------

    def _make(self, shard: int, pos: int, sample: dict, epoch: int, repeat: int = -1) -> tuple[dict | None, str | None]:
        """(item, None), or (None, why the sample is unreadable); seeded from (seed, epoch, shard, pos[, repeat])."""
        ext = next((e for e in DEFAULT_EXTENSIONS if e in sample), None)
        if ext is None:
            found = ", ".join("." + k for k in sample if not k.startswith("__")) or "nothing"
            return None, f"no image ({', '.join('.' + e for e in DEFAULT_EXTENSIONS)}) in the sample, found {found}"
        parts = (self.seed, epoch, shard, pos) + ((repeat,) if repeat >= 0 else ())
        member, data = ext, None
        with seeded_global_rngs(derived_seed(*parts)):
            try:
                data = io.BytesIO(sample[ext])
                image = load_image(data, min_side=decode_side(self.transform.size, self.bucket_sizes))
                out = None if not self.bucket_sizes else self.bucket_sizes[nearest_bucket(image.height, image.width,
                                                                                          self.bucket_sizes)]
                example = {"image": self.transform(image, out=out),
                           "file_path_": f"{self.urls[shard]}#{sample['__key__']}"}
                if self.has_captions:
                    member = "txt/.json"
                    example["caption"] = choose_caption(self._captions(sample), self.training)
                if "cls" in sample:
                    member = "cls"
                    label = int(sample["cls"].decode("utf-8").strip())
                    example["class_label"] = label
                    if self.class_names is not None and 0 <= label < len(self.class_names):
                        example["human_label"] = self.class_names[label]
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
                message = str(err).replace(" " + repr(data), "")  # PIL names the in-memory buffer: noise
                return None, f".{member}: {type(err).__name__}: {message}"
        return example, None

    def _captions(self, sample: dict) -> list[str]:
        """All captions of a sample: its .txt (one per line), else its .json caption field."""
        captions = caption_list(sample["txt"].decode("utf-8", errors="replace")) if "txt" in sample else []
        if not captions and "json" in sample:
            row = json.loads(sample["json"].decode("utf-8"))
            captions = caption_list(caption_field(row, self.caption_key) if isinstance(row, dict) else None)
        return captions

    def __repr__(self) -> str:
        return (f"ShardDataset({len(self.urls)} shard(s) from {self.urls[0]!r}, total={self.total}, "
                f"length={self.length}, training={self.training}, {self.transform})")
