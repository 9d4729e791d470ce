"""A bounded memo of a frozen text encoder's output per caption, so repeated captions are encoded once.

Training sets repeat captions (a captioned dataset every epoch, the shapes data's 720 caption strings every few
batches), and a frozen encoder maps a caption to the same features every time: each caption is padded to a fixed
length on its own, so its features do not depend on the rest of the batch. The memo keeps the most recently used
`capacity` rows (least recently used evicted first) and must be cleared whenever the weights, device or dtype change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch


class CaptionCache:
    """LRU memo caption -> feature row (N, D), filled batch-wise: misses are encoded together in one call."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache_size must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Forget every row (weights, device or dtype changed)."""
        self._rows.clear()

    def lookup(self, captions: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Features (B, N, D) of `captions`; `encode(list)` is called once, on the distinct captions not memoised."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._rows))
        self.hits += len(captions) - sum(c in missing for c in captions)
        self.misses += len(missing)
        fresh = {}
        if missing:
            features = encode(missing).detach()
            fresh = dict(zip(missing, features))
        out = torch.stack([fresh[c] if c in fresh else self._rows[c] for c in captions])
        for caption in captions:  # most recently used last
            if caption in self._rows:
                self._rows.move_to_end(caption)
        for caption, row in fresh.items():
            self._rows[caption] = row
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return out
