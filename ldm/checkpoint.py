"""Safe checkpoint reading (weights_only / safetensors) and atomic writing: the one place that touches checkpoint files."""

from __future__ import annotations

import os
from typing import Any

import torch

from ldm.files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model; the message names the file."""


class _PickledPlaceholder:
    """Stands in for objects pickled into Lightning checkpoints (e.g. callback instances) that we never need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals that CompVis / Lightning 1.x checkpoints pickle next to the tensors. They are mapped to a harmless
# placeholder (or to plain numpy types) so that `weights_only=True` can read those files.
def _checkpoint_safe_globals() -> list[Any]:
    import numpy as np

    allowed: list[Any] = [
        (_PickledPlaceholder, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (_PickledPlaceholder, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
        (_PickledPlaceholder, "omegaconf.dictconfig.DictConfig"),
        (_PickledPlaceholder, "omegaconf.listconfig.ListConfig"),
        (_PickledPlaceholder, "argparse.Namespace"),
        np.dtype,
        type(np.dtype(np.float64)),
        type(np.dtype(np.int64)),
        type(np.dtype(np.float32)),
    ]
    try:  # numpy scalars (e.g. best_model_score) live under one of these names depending on the numpy that wrote them
        from numpy._core.multiarray import scalar as _scalar  # type: ignore[attr-defined]
        allowed += [_scalar, (_scalar, "numpy.core.multiarray.scalar")]
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import scalar as _scalar  # type: ignore[no-redef]
        allowed.append(_scalar)
    return allowed


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a `.ckpt/.pt/.pth/.bin` (with `weights_only=True`) or `.safetensors` file into a dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return {"state_dict": load_file(path, device=str(map_location))}
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (weights_only=True): {err}. If you trust this file, convert it "
            f"once with `python scripts/convert_checkpoint.py {path}` to a safetensors file and load that instead."
        ) from err


def extract_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights inside a Lightning checkpoint dict, or the dict itself if it already is a state_dict."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        return checkpoint["state_dict"]
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointError(f"no state_dict found in checkpoint (top-level keys: {sorted(checkpoint)[:10]})")


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Model weights from any supported checkpoint file."""
    return extract_state_dict(load_checkpoint(path, map_location))


def atomic_save(obj: Any, path: str) -> None:
    """`torch.save` through `ldm.files.atomic_write` (temporary file, fsync, rename): a killed save never leaves a
    torn file."""
    atomic_write(path, lambda f: torch.save(obj, f))
