"""Rewrite a checkpoint into a file that loads without unpickling code: safetensors, or a `weights_only=True`-readable
.ckpt / .pt (scripts/convert_checkpoint.py). Also `unshare`, which every safetensors writer needs."""

from __future__ import annotations

import os
from typing import Any

import torch

from ldm.checkpoint import CheckpointError, UnsafeCheckpointError, atomic_save, load_checkpoint, load_checkpoint_trusted
from ldm.errors import UsageError
from ldm.files import atomic_write

# Values a weights_only unpickler reads besides tensors, dicts, lists and tuples.
PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def read_checkpoint(path: str, trust: bool) -> dict[str, Any]:
    """IN as a dict: weights_only first; the full unpickler only when the user trusted the file."""
    try:
        checkpoint = load_checkpoint(path)
    except UnsafeCheckpointError as err:
        if not trust:
            raise UsageError(f"{path} is not a weights-only checkpoint ({err.reason}); pass --trust-this-file only if "
                             f"you trust where the file came from (unpickling runs code)") from err
        print(f"--trust-this-file: unpickling {path} with weights_only=False")
        checkpoint = load_checkpoint_trusted(path)
    if isinstance(checkpoint, torch.nn.Module):  # a whole pickled model
        checkpoint = {"state_dict": checkpoint.state_dict()}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def split_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(plain CPU tensors by name, names of the non-tensor entries dropped)."""
    tensors, dropped = {}, []
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and isinstance(key, str):
            tensors[key] = value.detach().cpu()  # detach: a Parameter becomes a plain tensor
        else:
            dropped.append(str(key))
    return tensors, dropped


def unshare(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors safetensors accepts: each contiguous with a storage of its own; returns (tensors, number cloned)."""
    owners: dict[int, str] = {}
    out, cloned = {}, 0
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and \
            storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in owners or not whole:  # tied weights or a view: safetensors refuses both
            out[key] = tensor.clone(memory_format=torch.contiguous_format)
            cloned += 1
        else:
            out[key] = tensor
        if tensor.numel():
            owners.setdefault(storage.data_ptr(), key)
    return out, cloned


def plain(value: Any) -> tuple[bool, Any]:
    """(whether `weights_only=True` can read `value`, the value with dict subclasses made plain dicts)."""
    if isinstance(value, torch.Tensor):
        return True, value.detach()
    if type(value) in PLAIN_SCALARS:
        return True, value
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            ok_key, key = plain(key)
            ok_item, item = plain(item)
            if not (ok_key and ok_item):
                return False, None
            items[key] = item
        return True, items
    if type(value) in (list, tuple):
        converted = [plain(item) for item in value]
        if not all(ok for ok, _ in converted):
            return False, None
        return True, type(value)(item for _, item in converted)
    return False, None


def write_safetensors(tensors: dict[str, torch.Tensor], out: str, source: str) -> list[str]:
    """Save `tensors` to `out` atomically; returns notes."""
    from safetensors.torch import save

    tensors, cloned = unshare(tensors)
    data = save(tensors, metadata={"format": "pt", "source": os.path.basename(source)})
    atomic_write(out, lambda f: f.write(data), expected_bytes=len(data))
    return [f"copied {cloned} tensor(s) that shared storage or were views (safetensors stores each one)"] if cloned \
        else []


def write_pickle(checkpoint: dict[str, Any], tensors: dict[str, torch.Tensor], out: str,
                 state_dict_only: bool) -> list[str]:
    """Save {"state_dict": tensors, plain top-level fields...} to `out` atomically; returns notes."""
    state_dict_key = "state_dict" if "state_dict" in checkpoint else "model" if "model" in checkpoint else None
    result: dict[str, Any] = {"state_dict": tensors}
    dropped = []
    if not state_dict_only and state_dict_key is not None:
        for key, value in checkpoint.items():
            if key == state_dict_key:
                continue
            ok, value = plain(value)
            if ok and isinstance(key, str) and key != "state_dict":
                result[key] = value
            else:
                dropped.append(str(key))
    atomic_save(result, out)
    return [f"dropped top-level field(s) weights_only cannot read: {', '.join(dropped)}"] if dropped else []
