"""Aspect-ratio buckets: a set of non-square (h, w) sizes of about equal area, which bucket an image belongs to, and a
DDP-aware, resumable sampler whose batches each hold items of one bucket only (so a batch stacks to one shape);
for streamed data (shards), `batches_by_shape` groups a stream into such batches instead.

Pick `multiple` = first-stage downsampling x UNet downsampling (2 ** (len(channel_mult) - 1)), e.g. 8 x 8 = 64 for
KL-f8 with a 4-level UNet, so every bucket gives whole latents and whole UNet levels (`check_bucket_multiple`)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ldm.data.resumable import ResumableDataLoader, SeededDataset, SeededIndex, _world, derived_seed
from ldm.util import ConfigError


def make_buckets(pixels: int, multiple: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """Sorted (h, w) sizes, sides multiples of `multiple`, area at most `pixels`, w/h within [1/max_ratio, max_ratio]."""
    if pixels < multiple * multiple or multiple <= 0 or max_ratio < 1:
        raise ValueError(f"buckets need pixels >= multiple**2, multiple > 0, max_ratio >= 1; got {pixels}, "
                         f"{multiple}, {max_ratio}")
    buckets = set()
    for h in range(multiple, int(pixels // multiple) + 1, multiple):
        w = (pixels // h) // multiple * multiple  # the widest side that keeps the area within `pixels`
        if w >= multiple and 1 / max_ratio <= w / h <= max_ratio:
            buckets |= {(h, w), (w, h)}  # both orientations, so portrait and landscape get the same choices
    return sorted(buckets)


def parse_buckets(buckets: Any) -> list[tuple[int, int]]:
    """The `buckets` option: {pixels, multiple, max_ratio} for `make_buckets`, or an explicit list of [h, w]."""
    if hasattr(buckets, "keys"):
        return make_buckets(int(buckets["pixels"]), int(buckets["multiple"]), float(buckets.get("max_ratio", 2.0)))
    sizes = sorted({(int(h), int(w)) for h, w in buckets})
    if not sizes:
        raise ValueError("buckets: the list of [h, w] sizes is empty")
    return sizes


def nearest_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest to height/width's (compared as log ratios)."""
    target = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][1] / buckets[i][0]) - target))


def decode_side(size: int | None, bucket_sizes: Sequence[tuple[int, int]] | None) -> int | None:
    """Shortest side a JPEG may be drafted down to (`load_image`'s min_side): the crop size, or the longest bucket
    side."""
    return max(max(hw) for hw in bucket_sizes) if bucket_sizes else size


def check_bucket_multiple(sizes: Sequence[tuple[int, int]], factor: int) -> None:
    """ConfigError when a bucket side is not a multiple of `factor` (first-stage x UNet downsampling)."""
    bad = [(h, w) for h, w in sizes if h % factor or w % factor]
    if bad:
        raise ConfigError(f"bucket sizes {bad} are not multiples of {factor} (first-stage x UNet downsampling); "
                          f"set buckets.multiple to a multiple of {factor}")


class BucketBatchSampler(DistributedSampler):
    """Yields lists of `SeededIndex`, each list from one bucket, split by rank; a DistributedSampler so Lightning
    calls `set_epoch` and does not replace it.

    Per epoch (from seed + epoch): each bucket's items are shuffled and cut into batches (a bucket's last batch may
    be smaller), all batches are shuffled, and the list is cut to a multiple of the world size (the few batches
    past it are dropped, a different few each epoch); rank r takes batches r, r + world, ... so every rank gets the
    same number of batches and no item is on two ranks. `start` skips that many of this rank's batches once."""

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        world, my_rank = _world()
        world = world if world_size is None else int(world_size)
        super().__init__(range(len(bucket_ids)), num_replicas=world, rank=my_rank if rank is None else int(rank),
                         shuffle=shuffle, seed=seed, drop_last=True)
        self.bucket_ids = [int(b) for b in bucket_ids]
        self.batch_size = int(batch_size)
        self.start = 0
        self.epoch_offset = 0  # see ResumableSampler

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch + self.epoch_offset)

    def _all_batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order."""
        rng = random.Random(derived_seed(self.seed, self.epoch))
        members: dict[int, list[int]] = {}
        for i, b in enumerate(self.bucket_ids):
            members.setdefault(b, []).append(i)
        batches = []
        for b in sorted(members):
            items = members[b]
            if self.shuffle:
                rng.shuffle(items)
            batches += [items[k:k + self.batch_size] for k in range(0, len(items), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches[:len(batches) // self.num_replicas * self.num_replicas]

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for b in self.bucket_ids:
            counts[b] = counts.get(b, 0) + 1
        return sum(-(-n // self.batch_size) for n in counts.values()) // self.num_replicas

    def __iter__(self) -> Iterator[list[SeededIndex]]:  # type: ignore[override]
        mine = self._all_batches()[self.rank::self.num_replicas]
        start, self.start = self.start, 0
        for k in range(start, len(mine)):
            yield [SeededIndex(i, derived_seed(self.seed, self.epoch, self.rank, k * self.batch_size + j))
                   for j, i in enumerate(mine[k])]


class _BatchDataset(Dataset):
    """`ds[[SeededIndex, ...]]` is the collated batch of those seeded items (the sampler yields whole batches)."""

    def __init__(self, dataset: Dataset):
        self.seeded = SeededDataset(dataset)

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, items: list) -> Any:
        return default_collate([self.seeded[i] for i in items])

    def __getattr__(self, name: str) -> Any:
        if name == "seeded":
            raise AttributeError(name)
        return getattr(self.seeded, name)


class BucketDataLoader(ResumableDataLoader):
    """A ResumableDataLoader (same saved state, same mid-epoch resume) whose batches come from a BucketBatchSampler
    over `dataset.bucket_of(i)`."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs: Any):
        ids = [dataset.bucket_of(i) for i in range(len(dataset))]  # type: ignore[attr-defined,arg-type]
        self.resumable_sampler = BucketBatchSampler(ids, batch_size, shuffle=shuffle, seed=seed)
        # batch_size=None: the sampler yields whole batches and the dataset collates them
        DataLoader.__init__(self, _BatchDataset(dataset), batch_size=None, sampler=self.resumable_sampler, **kwargs)
        self._batches_out = 0
        self._pending = None

    def _skip(self, batches: int) -> None:
        self.resumable_sampler.start = batches


def batches_by_shape(examples: Iterable[dict], n_batches: int, batch_size: int) -> Iterator[Any]:
    """Exactly `n_batches` collated batches (fewer only if the stream runs dry) from a stream of examples, each batch
    of one image shape: a shape's batch is yielded as soon as it holds `batch_size` examples; when the stream ends
    first, the fullest partial batches make up the rest. A stream of at least n_batches * batch_size examples always
    suffices (its leftovers, fewer than batch_size per shape, hold more than the missing batches' worth), so every
    reader, and so every rank, yields the same number of batches. Examples still pending when n_batches are out are
    not used this epoch: fewer than batch_size per shape."""
    if n_batches <= 0:
        return
    pending: dict[tuple, list[dict]] = {}
    made = 0
    stream = iter(examples)
    try:
        for example in stream:
            shape = tuple(example["image"].shape)
            group = pending.setdefault(shape, [])
            group.append(example)
            if len(group) == batch_size:
                del pending[shape]
                yield default_collate(group)
                made += 1
                if made == n_batches:
                    return
        for group in sorted(pending.values(), key=len, reverse=True)[:n_batches - made]:
            yield default_collate(group)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stops the reader (and closes its open shard) when the batches are out before the stream ends
