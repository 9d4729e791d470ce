"""Optimizer construction in one place: Adam/AdamW with the fused kernel where the parameters allow it."""

from __future__ import annotations

from collections.abc import Iterable

import torch

_FUSED_DEVICES = ("cpu", "cuda")


def _can_fuse(params: list[torch.nn.Parameter]) -> bool:
    return bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
         weight_decay: float = 0.0, decoupled_weight_decay: bool = False) -> torch.optim.Optimizer:
    """Adam (or AdamW when `decoupled_weight_decay`), fused into one kernel per step when possible.

    The fused implementation is ~2x faster than the per-tensor loop on CPU and the fastest on CUDA; it computes the
    same update.
    """
    params = [p for p in params if p.requires_grad]
    cls = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
    kwargs = {"fused": True} if _can_fuse(params) else {}
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)
