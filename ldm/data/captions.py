"""Caption rules shared by every captioned source (image folders, shards, the shard packer).

An image's captions come as one text (a sidecar `.txt`: one caption per non-empty line) or as a metadata value
(a string, or a list of strings for several captions). Training picks one of them at random per step (from the
global `random` module, which the resumable loader seeds per item, so resumes see the same choice); validation
always uses the first, so every validation run sees the same captions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

# Metadata columns looked for when `caption_key` is not given, in this order (HF imagefolder uses "text").
CAPTION_COLUMNS = ("text", "caption")
# What to do with an image that has no caption in a folder where others have one.
MISSING_CAPTIONS = ("skip", "empty")
# The layouts a captioned folder may use, for error messages.
LAYOUTS = ("a sidecar <name>.txt next to each image (one caption per line)",
           "a metadata.jsonl or metadata.csv with a 'file_name' column and a caption column "
           f"({' or '.join(repr(c) for c in CAPTION_COLUMNS)}, or the one `caption_key` names)")


def caption_list(value: Any) -> list[str]:
    """All captions in `value`: a text (one per non-empty line), a list of texts, or None (no captions)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [c for item in value for c in caption_list(item)]
    return [line.strip() for line in str(value).splitlines() if line.strip()]


def choose_caption(captions: Sequence[str], training: bool) -> str:
    """One caption: a random one when training, the first otherwise; '' when there is none."""
    if not captions:
        return ""
    if training and len(captions) > 1:
        return captions[random.randrange(len(captions))]
    return captions[0]


def caption_field(row: dict, caption_key: str | None) -> Any:
    """The caption value of one metadata row: `caption_key`, else the first of CAPTION_COLUMNS present."""
    for key in [caption_key] if caption_key else CAPTION_COLUMNS:
        if row.get(key) is not None:
            return row[key]
    return None


def no_captions_message(where: str, n_images: int, n_captioned: int = 0) -> str:
    """What a text model got instead of captioned images, and the layouts that work."""
    return (f"{where}: found {n_images} images and {n_captioned} captions; a text-conditional model needs captions: "
            + "; or ".join(LAYOUTS))
