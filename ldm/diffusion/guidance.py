"""Classifier-free guidance (Ho & Salimans 2022) around any `model_fn(x, t, cond)`, and training-time CFG dropout.

Conditioning may be a tensor, a list/tuple of tensors (the original `c_crossattn` lists) or a dict of those
(`{"c_concat": [...], "c_crossattn": [...]}`); guidance concatenates every tensor leaf along the batch dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.diffusion.parameterization import ModelFn


def _is_batch_list(c: Any) -> bool:
    """A list of per-sample non-tensor values (e.g. captions), as opposed to a structural list of tensors."""
    return isinstance(c, (list, tuple)) and not any(isinstance(v, (torch.Tensor, list, tuple, Mapping)) for v in c)


def concat_conditioning(uncond: Any, cond: Any, path: str = "cond") -> Any:
    """[uncond; cond] along the batch dim for every tensor leaf of matching tensor / list / dict structures."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise TypeError(f"{path}: cond is a tensor but uncond is {type(uncond).__name__}")
        if uncond.shape[1:] != cond.shape[1:]:
            raise ValueError(f"{path}: uncond shape {tuple(uncond.shape)} does not match cond {tuple(cond.shape)}")
        if uncond.shape[0] != cond.shape[0]:
            if uncond.shape[0] != 1:
                raise ValueError(f"{path}: uncond batch {uncond.shape[0]} is neither 1 nor cond's {cond.shape[0]}")
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        return torch.cat([uncond.to(cond), cond])
    if isinstance(cond, Mapping):
        if not isinstance(uncond, Mapping) or set(uncond) != set(cond):
            got = sorted(uncond) if isinstance(uncond, Mapping) else type(uncond).__name__
            raise ValueError(f"{path}: uncond keys {got} do not match cond keys {sorted(cond)}")
        return {k: concat_conditioning(uncond[k], cond[k], f"{path}.{k}") for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
            raise ValueError(f"{path}: uncond must be a list of {len(cond)} entries like cond")
        return [concat_conditioning(u, c, f"{path}[{i}]") for i, (u, c) in enumerate(zip(uncond, cond))]
    raise TypeError(f"{path}: cannot batch conditioning of type {type(cond).__name__} for guidance; "
                    "encode it to tensors first")


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Match the guided output's per-sample std to the conditional one, mixed by phi (Lin et al. 2023, sec. 3.4)."""
    dims = tuple(range(1, guided.dim()))
    std_cond = cond_out.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    return phi * guided * (std_cond / std_guided) + (1 - phi) * guided


class ClassifierFreeGuidance:
    """`model_fn` wrapper: out = uncond + scale * (cond - uncond), both in one batch; scale 1 runs cond only."""

    def __init__(self, model_fn: ModelFn, uncond: Any, scale: float = 1.0, rescale: float = 0.0):
        if scale != 1.0 and uncond is None:
            raise ValueError(f"guidance scale {scale} needs an unconditional conditioning (uncond)")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale phi must lie in [0, 1], got {rescale}")
        self.model_fn = model_fn
        self.uncond = uncond
        self.scale = float(scale)
        self.rescale = float(rescale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Guided raw output at (x, t); guidance is applied to the raw output (linear, so eps, x0 and v agree)."""
        if self.scale == 1.0:
            return self.model_fn(x, t, cond)
        out = self.model_fn(torch.cat([x, x]), torch.cat([t, t]), concat_conditioning(self.uncond, cond))
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + self.scale * (out_cond - out_uncond)
        if self.rescale > 0:
            guided = rescale_guidance(guided, out_cond, self.rescale)
        return guided


def guided_model_fn(model_fn: ModelFn, uncond: Any = None, scale: float = 1.0, rescale: float = 0.0) -> ModelFn:
    """`model_fn` itself when scale is 1 (one call per step), else a ClassifierFreeGuidance wrapper."""
    if scale == 1.0:
        return model_fn
    return ClassifierFreeGuidance(model_fn, uncond, scale, rescale)


# ---- training-time dropout --------------------------------------------------------------------------------------

def _first_tensor(c: Any) -> torch.Tensor | None:
    """The first tensor leaf of a conditioning structure (for its batch size), or None."""
    if isinstance(c, torch.Tensor):
        return c
    values = c.values() if isinstance(c, Mapping) else c if isinstance(c, (list, tuple)) else ()
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def _batch_size(c: Any) -> int:
    """Batch size of a conditioning structure: first tensor's dim 0, or the length of a per-sample list."""
    first = _first_tensor(c)
    if first is not None:
        return first.shape[0]
    if _is_batch_list(c):
        return len(c)
    if isinstance(c, Mapping):
        for v in c.values():
            return _batch_size(v)
    raise ValueError(f"cannot infer the batch size of conditioning of type {type(c).__name__}")


def _replace(keep: torch.Tensor, c: Any, null: Any, path: str) -> Any:
    """Per sample, keep `c` where keep is True and take `null` elsewhere, leaf by leaf."""
    if isinstance(c, torch.Tensor):
        if null is None:
            null = torch.zeros((), dtype=c.dtype, device=c.device)
        null = torch.as_tensor(null, dtype=c.dtype, device=c.device)
        try:
            fits = torch.broadcast_shapes(null.shape, c.shape) == c.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{path}: null conditioning shape {tuple(null.shape)} does not fit {tuple(c.shape)}")
        mask = keep.to(c.device, non_blocking=True).view(-1, *((1,) * (c.dim() - 1)))
        return torch.where(mask, c, null)
    if isinstance(c, Mapping):
        if null is not None and not (isinstance(null, Mapping) and set(null) >= set(c)):
            raise ValueError(f"{path}: null conditioning must be a dict with keys {sorted(c)}")
        return {k: _replace(keep, v, None if null is None else null[k], f"{path}.{k}") for k, v in c.items()}
    if _is_batch_list(c):
        flags = keep.tolist()  # per-sample Python values (captions) live on the host anyway
        if isinstance(null, (list, tuple)):
            if len(null) != len(c):
                raise ValueError(f"{path}: null list has {len(null)} entries for a batch of {len(c)}")
            return type(c)(v if k else n for v, n, k in zip(c, null, flags))
        return type(c)(v if k else null for v, k in zip(c, flags))
    if isinstance(c, (list, tuple)):
        nulls = null if isinstance(null, (list, tuple)) else [null] * len(c)
        if len(nulls) != len(c):
            raise ValueError(f"{path}: null list has {len(nulls)} entries, conditioning has {len(c)}")
        return [_replace(keep, v, n, f"{path}[{i}]") for i, (v, n) in enumerate(zip(c, nulls))]
    raise TypeError(f"{path}: cannot drop conditioning of type {type(c).__name__}")


def drop_conditioning(cond: Any, null_cond: Any, ucg_rate: float, generator: torch.Generator | None = None,
                      return_mask: bool = False):
    """Replace each sample's conditioning by its null with probability `ucg_rate` (CFG training dropout).

    One draw per sample decides for all leaves of a dict. `null_cond` mirrors `cond` (tensors of batch 1 or B, a
    scalar, or None for zeros; a value or a list for per-sample lists such as captions). The draw is made on the
    generator's device (CPU by default) and sent to tensors without a host sync.
    """
    if not 0.0 <= ucg_rate <= 1.0:
        raise ValueError(f"ucg_rate must lie in [0, 1], got {ucg_rate}")
    batch = _batch_size(cond)
    device = generator.device if generator is not None else torch.device("cpu")
    keep = torch.rand(batch, generator=generator, device=device) >= ucg_rate
    out = cond if ucg_rate == 0.0 else _replace(keep, cond, null_cond, "cond")
    return (out, keep) if return_mask else out
