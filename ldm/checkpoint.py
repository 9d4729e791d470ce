"""Safe checkpoint reading (weights_only / safetensors) and atomic writing: the one place touching checkpoint files."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from ldm.files import SaveError, atomic_write

__all__ = ["CheckpointError", "SaveError", "UnsafeCheckpointError", "atomic_save", "extract_state_dict",
           "load_checkpoint", "load_checkpoint_trusted", "load_state_dict", "tensor_bytes"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint pickles objects that `weights_only=True` refuses (code could run when unpickling them);
    `reason` is the short cause, e.g. 'Unsupported global: GLOBAL pathlib.PosixPath'."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


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


def _weights_only_reason(err: Exception) -> str:
    """The useful part of torch's long weights_only error, e.g. 'Unsupported global: GLOBAL pathlib.PosixPath'."""
    text = str(err)
    marker = "WeightsUnpickler error: "
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split(" was not an allowed global", 1)[0]
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a `.ckpt/.pt/.pth/.bin` (with `weights_only=True`) or `.safetensors` file into a dict.

    Raises UnsafeCheckpointError for a file that pickles other objects (the message names the converter), and
    CheckpointError for a missing or unreadable one.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return {"state_dict": load_file(path, device=str(map_location))}
        except Exception as err:
            raise CheckpointError(f"cannot read safetensors file {path}: {err}") from err
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        stem, reason = os.path.splitext(path)[0], _weights_only_reason(err)
        raise UnsafeCheckpointError(
            f"cannot read checkpoint {path} safely (weights_only=True: {reason}). If you trust this file, convert "
            f"it once with `python scripts/convert_checkpoint.py {path} {stem}.safetensors --trust-this-file` and "
            f"load that instead.", reason
        ) from err
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, or not a PyTorch checkpoint?): "
                              f"{type(err).__name__}: {first_line}") from err


def load_checkpoint_trusted(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Unpickle a checkpoint with `weights_only=False`: this can run any code the file contains.

    ONLY for a file the user explicitly vouched for with a flag that names it (`scripts/convert_checkpoint.py
    --trust-this-file`, main.py `--unsafe-load FILE`); never for a file just because of where it lies. Everything
    else goes through `load_checkpoint`.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {first_line}") from err


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


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages inside `obj` (walking dicts, lists and tuples; each storage counted once, as
    torch.save writes it once): a lower bound of the saved size."""
    seen_storages: set[tuple[str, int]] = set()
    seen_containers: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            try:
                storage = item.untyped_storage()
                key = (str(storage.device), storage.data_ptr())
                if key not in seen_storages:
                    seen_storages.add(key)
                    total += storage.nbytes()
            except (RuntimeError, NotImplementedError):  # sparse / exotic layouts have no plain storage
                total += item.numel() * item.element_size()
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen_containers:
            seen_containers.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    return total


def atomic_save(obj: Any, path: str) -> None:
    """`torch.save` through `ldm.files.atomic_write` (temporary file, fsync, rename): a killed save never leaves a
    torn file. A folder without room for the tensors fails before writing; disk full and permission problems raise
    `SaveError` (an OSError) naming `path`."""
    atomic_write(path, lambda f: torch.save(obj, f), expected_bytes=tensor_bytes(obj))
