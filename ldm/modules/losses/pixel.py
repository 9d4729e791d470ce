"""Per-pixel reconstruction errors of the first-stage losses, by config name (`pixel_loss: l1 | l2`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.util import ConfigError


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel absolute error (the original default)."""
    return torch.abs(x - y)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error: its gradient grows with the error, so a few badly coloured pixels (a small object)
    weigh more against many slightly wrong background pixels than under l1."""
    return torch.pow(x - y, 2)


PIXEL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"l1": l1, "l2": l2}


def select_pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-pixel loss called `name`; a ConfigError lists the choices."""
    if name not in PIXEL_LOSSES:
        raise ConfigError(f"pixel_loss must be one of {sorted(PIXEL_LOSSES)}, got {name!r}")
    return PIXEL_LOSSES[name]
