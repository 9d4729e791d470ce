"""Rows of the diffusion models' `log_images`: conditioning rendered as images, the forward-diffusion row, the
denoising row, all as B,C,H,W tensors in [-1, 1] (pre-gridded rows are a batch of one grid image)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Characters per text line per pixel of width for PIL's default font (about 6 px per character).
PIXELS_PER_CHAR = 6
LINE_HEIGHT = 11


def text_images(texts: Sequence[str], size: tuple[int, int], device: Any = None) -> torch.Tensor:
    """Each text drawn black on white with PIL's default font, wrapped to the width: (B, 3, H, W) in [-1, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = size
    font = ImageFont.load_default()
    per_line = max(1, width // PIXELS_PER_CHAR)
    out = []
    for text in texts:
        canvas = Image.new("RGB", (width, height), color="white")
        draw = ImageDraw.Draw(canvas)
        lines = textwrap.wrap(str(text), width=per_line) or [""]
        for row, line in enumerate(lines[: max(1, height // LINE_HEIGHT)]):
            draw.text((1, 1 + row * LINE_HEIGHT), line, fill="black", font=font)
        out.append(np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0)
    images = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return images.to(device) if device is not None else images


def label_texts(batch: Mapping[str, Any], labels: Any) -> list[str]:
    """Text for class labels: the batch's `human_label`, else the label number with the batch caption if any."""
    if "human_label" in batch:
        return [str(v) for v in batch["human_label"]]
    values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    captions = batch.get("caption")
    if captions is not None:
        return [f"{v}: {c}" for v, c in zip(values, captions)]
    return [f"class {v}" for v in values]


def conditioning_images(xc: Any, cond_key: str, batch: Mapping[str, Any], size: tuple[int, int], n: int,
                        device: Any = None) -> torch.Tensor | None:
    """The raw conditioning as an image batch, or None when it has no picture (e.g. a conditioner's tensor)."""
    if isinstance(xc, Mapping):  # class labels: the original passes the batch dict
        value = xc.get(cond_key, batch.get(cond_key))
        return None if value is None else text_images(label_texts(slice_dict(batch, n), value[:n]), size, device)
    if isinstance(xc, (list, tuple)) and all(isinstance(v, str) for v in xc):
        return text_images(list(xc[:n]), size, device)
    if isinstance(xc, torch.Tensor) and xc.dim() == 4 and xc.shape[1] in (1, 3):
        return xc[:n].float().clamp(-1, 1)
    if isinstance(xc, torch.Tensor) and xc.dim() == 1:
        return text_images(label_texts(slice_dict(batch, n), xc[:n]), size, device)
    return None


def slice_dict(batch: Mapping[str, Any], n: int) -> dict[str, Any]:
    """First n entries of every list / tensor in a batch dict."""
    return {k: v[:n] if isinstance(v, (list, tuple, torch.Tensor)) else v for k, v in batch.items()}


def logged_timesteps(num_timesteps: int, every: int) -> list[int]:
    """The forward-process steps shown in a diffusion row: multiples of `every` and the last step (original rule)."""
    every = max(1, int(every))
    return [t for t in range(num_timesteps) if t % every == 0 or t == num_timesteps - 1]


def frames_to_grid(frames: torch.Tensor) -> torch.Tensor:
    """(n_frames, B, C, H, W) -> one grid image (1, C, H', W'): a row per sample, a column per frame."""
    import torchvision

    n_frames, b = frames.shape[:2]
    tiles = frames.transpose(0, 1).reshape(n_frames * b, *frames.shape[2:])
    return torchvision.utils.make_grid(tiles.float().clamp(-1, 1), nrow=n_frames, pad_value=1.0)[None]


@torch.no_grad()
def diffusion_row(q_sample, decode, z: torch.Tensor, num_timesteps: int, every: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Inputs noised to x_t over t (q(x_t | x_0)) and decoded: one grid with a row per input, a column per t."""
    steps = logged_timesteps(num_timesteps, every)
    noisy = []
    for t in steps:
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        noisy.append(q_sample(z, tt, noise))
    decoded = decode(torch.cat(noisy))  # one decoder call for the whole row
    return frames_to_grid(decoded.reshape(len(steps), z.shape[0], *decoded.shape[1:]))


@torch.no_grad()
def denoise_row(decode, states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Intermediate sampler states decoded: one grid with a row per sample, a column per logged step."""
    decoded = decode(torch.cat(list(states)))
    return frames_to_grid(decoded.reshape(len(states), states[0].shape[0], *decoded.shape[1:]))
