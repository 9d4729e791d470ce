"""Loading CompVis / our diffusion checkpoints into a model: `ignore_keys`, `make_it_fit`, and a clear key report."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ldm.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# Keys a diffusion checkpoint may lack without anything being wrong: original checkpoints trained without
# `scale_by_std` store no `scale_factor` (the config value is kept), and EMA-less checkpoints have no `model_ema.*`.
OPTIONAL_PREFIXES = ("scale_factor", "model_ema.")


@dataclass
class LoadReport:
    """What `restore_weights` did: tensors loaded, keys ignored, missing and unexpected keys, reshaped keys."""

    path: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    refit: list[str] = field(default_factory=list)

    @property
    def required_missing(self) -> list[str]:
        """Missing keys that are not optional (see OPTIONAL_PREFIXES)."""
        return [k for k in self.missing if not k.startswith(OPTIONAL_PREFIXES)]

    def summary(self) -> str:
        """One paragraph for the log, in the original's words plus the key lists."""
        lines = [f"Restored from {self.path} with {len(self.missing)} missing and {len(self.unexpected)} "
                 f"unexpected keys ({self.loaded} tensors loaded, {len(self.ignored)} ignored)"]
        if self.missing:
            lines.append(f"  missing keys: {_abbrev(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys: {_abbrev(self.unexpected)}")
        if self.refit:
            lines.append(f"  make_it_fit reshaped: {_abbrev(self.refit)}")
        return "\n".join(lines)


def _abbrev(keys: list[str], limit: int = 12) -> str:
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def drop_ignored(state: dict[str, torch.Tensor], ignore_keys: Iterable[str]) -> tuple[dict, list[str]]:
    """Remove every key starting with one of `ignore_keys` (the original's prefix rule); returns (state, removed)."""
    prefixes = tuple(ignore_keys or ())
    if not prefixes:
        return state, []
    removed = [k for k in state if k.startswith(prefixes)]
    return {k: v for k, v in state.items() if k not in set(removed)}, removed


def fit_tensor(old: torch.Tensor, new_shape: torch.Size, name: str = "") -> torch.Tensor:
    """Tile `old` over the first two axes to `new_shape` (SD `make_it_fit`): new[i, j] = old[i % O0, j % O1].

    Input channels (axis 1) repeated k times are divided by k so that feeding the same input to every copy gives
    the old output (the SD code divides by k + 1); axes beyond the second must agree.
    """
    if old.dim() != len(new_shape):
        raise CheckpointError(f"make_it_fit: {name} has {old.dim()} dims in the checkpoint but {len(new_shape)} here")
    if tuple(old.shape[2:]) != tuple(new_shape[2:]):
        raise CheckpointError(f"make_it_fit: {name} can only change its first two axes: checkpoint "
                              f"{tuple(old.shape)} vs model {tuple(new_shape)}")
    rows = torch.arange(new_shape[0]) % old.shape[0]
    out = old.index_select(0, rows)
    if old.dim() >= 2:
        cols = torch.arange(new_shape[1]) % old.shape[1]
        out = out.index_select(1, cols)
        uses = torch.bincount(cols, minlength=old.shape[1]).to(out.dtype)[cols]
        out = out / uses.view(1, -1, *((1,) * (old.dim() - 2)))
    return out.contiguous()


def make_it_fit(state: dict[str, torch.Tensor], module: nn.Module) -> tuple[dict, list[str]]:
    """Reshape checkpoint tensors whose first two axes differ from the module's (e.g. more UNet input channels)."""
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    out, refit = dict(state), []
    for name, target in own.items():
        if name in state and state[name].shape != target.shape:
            out[name] = fit_tensor(state[name], target.shape, name).to(target.dtype)
            refit.append(name)
    return out, refit


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """`load_state_dict`, or a diffusers folder converted to our names (`ldm.interop.diffusers`)."""
    from ldm.interop.diffusers import read_checkpoint  # imported here: interop sits above the models

    return read_checkpoint(path)


def restore_weights(module: nn.Module, path: str, ignore_keys: Iterable[str] = (), only_model: bool = False,
                    fit: bool = False) -> LoadReport:
    """Load a checkpoint into `module` (or only `module.model` with `only_model`), non-strict, and report keys.

    `path` may also be a diffusers folder (model_index.json, unet/, vae/), converted on the fly. Shape mismatches
    are an error naming the keys (unless `fit` reshapes them). With `only_model`, keys of a full
    checkpoint (`model.diffusion_model.*`) are accepted as well as wrapper-relative ones (`diffusion_model.*`).
    """
    state = _read_weights(path)
    state, ignored = drop_ignored(state, ignore_keys)
    target = module.model if only_model else module
    if only_model and any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    refit: list[str] = []
    if fit:
        state, refit = make_it_fit(state, target)
    own = target.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"checkpoint {path} does not fit this model's config (shape mismatch; "
                              f"make_it_fit: true tiles the first two axes):\n  " + "\n  ".join(bad[:20]))
    missing, unexpected = target.load_state_dict(state, strict=False)
    report = LoadReport(path=path, loaded=len(state) - len(unexpected), ignored=ignored, missing=list(missing),
                        unexpected=list(unexpected), refit=refit)
    if report.loaded == 0:
        raise CheckpointError(f"checkpoint {path} shares no weights with {type(target).__name__} "
                              f"(first checkpoint keys: {sorted(state)[:6]}); is it a checkpoint of this model?")
    if report.required_missing or report.unexpected:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report
