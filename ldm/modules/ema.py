"""Exponential moving average of model weights, state_dict-compatible with CompVis `LitEma` (`model_ema.*` keys)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

RESERVED_BUFFERS = ("decay", "num_updates")


def shadow_name(param_name: str) -> str:
    """Buffer name of a parameter's shadow copy: the parameter name with dots removed (the original's rule)."""
    return param_name.replace(".", "")


class LitEma(nn.Module):
    """Shadow weights s <- s - (1 - d) (s - p) for every trainable parameter p, as CompVis LitEma.

    Buffers: `decay` (float32), `num_updates` (int32; -1 when updates are not counted) and one shadow per trainable
    parameter named by `shadow_name`. When counting, the effective decay is min(decay, (1 + n) / (10 + n)) with n the
    update count after incrementing. Accepts the original's misspelt `use_num_upates` and `use_num_updates`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True,
                 use_num_updates: bool | None = None):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"LitEma decay must be between 0 and 1, got {decay}")
        count = use_num_upates if use_num_updates is None else use_num_updates
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if count else -1, dtype=torch.int))
        self._count_updates = bool(count)  # host copy of (num_updates >= 0), so forward never reads the device
        owner: dict[str, str] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            s_name = shadow_name(name)
            if s_name in RESERVED_BUFFERS or s_name in owner:
                clash = owner.get(s_name, "the EMA's own buffer")
                raise ValueError(f"LitEma: parameter {name!r} maps to shadow name {s_name!r}, which is taken by "
                                 f"{clash}; rename one of them")
            owner[s_name] = name
            self.m_name2s_name[name] = s_name
            self.register_buffer(s_name, param.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (shadow, parameter) lists for the trainable parameters of `model`."""
        shadows, params = [], []
        buffers = dict(self.named_buffers(recurse=False))
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            s_name = self.m_name2s_name.get(name)
            if s_name is None:
                raise KeyError(f"LitEma has no shadow for trainable parameter {name!r}; was the EMA built from a "
                               "different model, or was requires_grad switched on later?")
            shadows.append(buffers[s_name])
            params.append(param)
        return shadows, params

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA step towards the current parameters of `model` (vectorised with torch._foreach_*, no host sync)."""
        decay = self.decay
        if self._count_updates:
            self.num_updates.add_(1)
            warmup = (1 + self.num_updates) / (10 + self.num_updates)
            decay = torch.minimum(decay, warmup.to(decay.dtype))
        one_minus_decay = 1.0 - decay
        shadows, params = self._pairs(model)
        if not shadows:
            return
        params = [p.detach().to(s.dtype) if p.dtype != s.dtype else p.detach() for s, p in zip(shadows, params)]
        diffs = torch._foreach_sub(shadows, params)
        torch._foreach_mul_(diffs, one_minus_decay)
        torch._foreach_sub_(shadows, diffs)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the trainable parameters of `model` with the shadow weights."""
        shadows, params = self._pairs(model)
        if params:
            torch._foreach_copy_(params, shadows)

    @torch.no_grad()
    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Save a copy of `parameters` so `restore` can put them back after evaluating with EMA weights."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Copy the tensors saved by `store` back into `parameters` (same order), then drop the copies."""
        parameters = list(parameters)
        if len(parameters) != len(self.collected_params):
            raise RuntimeError(f"LitEma.restore got {len(parameters)} parameters but store() saved "
                               f"{len(self.collected_params)}; call store() with the same parameters first")
        if parameters:
            torch._foreach_copy_(parameters, self.collected_params)
        self.collected_params = []

    def reset_num_updates(self) -> None:
        """Restart the warm-up count (num_updates = 0), as in the Stable Diffusion LitEma."""
        self.num_updates.zero_()
        self._count_updates = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Load as usual, then refresh the host-side counting flag from the loaded `num_updates` (once, at load)."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "num_updates"
        if key in state_dict:
            self._count_updates = bool(int(state_dict[key]) >= 0)


@contextlib.contextmanager
def ema_scope(model: nn.Module, ema: LitEma | None, enabled: bool = True) -> Iterator[nn.Module]:
    """Context in which `model` carries the EMA weights; the training weights come back on exit, even on errors."""
    if ema is None or not enabled:
        yield model
        return
    params = list(model.parameters())
    ema.store(params)
    try:
        ema.copy_to(model)
        yield model
    finally:
        ema.restore(params)
