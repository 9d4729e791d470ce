"""Pretrained weight files in the torch hub cache: found there, downloaded (hash-checked) when online, or a clear error.

Online users get what torchvision and torch-fidelity do: the file is downloaded once into
`<torch.hub.get_dir()>/checkpoints/` ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints) and its
SHA-256 is checked against the prefix in its name (torch.hub's `<name>-<sha256 prefix>.<ext>` convention, which
torchvision's files follow; a caller whose file name does not follow it passes check_hash=False). Offline (HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1, or a download
that fails) nothing is fetched and the caller's error names the file, where to put it and the flag for a local
path. Files are only downloaded here; they are read through `ldm.checkpoint` (weights_only).
"""

from __future__ import annotations

import os
import re

import torch

from ldm.util import ConfigError

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>


class MissingWeightsError(ConfigError, FileNotFoundError):
    """A pretrained weights file is neither on disk nor downloadable; the message says where to put it."""


def downloads_allowed() -> bool:
    """False when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), read now."""
    from ldm.modules.encoders.pretrained import hub_offline

    return not hub_offline()


def hub_checkpoint_path(filename: str) -> str:
    """Where torch.hub keeps `filename`: `<torch.hub.get_dir()>/checkpoints/<filename>`."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def try_download(url: str, filename: str, check_hash: bool = True) -> tuple[str | None, str]:
    """(path, "") after downloading `url` into the hub cache as `filename` (with `check_hash`, its SHA-256 checked
    against the prefix the name carries), or (None, why) when offline or the download fails. An existing file is
    returned as it is."""
    path = hub_checkpoint_path(filename)
    if os.path.isfile(path):
        return path, ""
    if not downloads_allowed():
        return None, "downloads are off (HF_HUB_OFFLINE=1)"
    match = _HASH_IN_NAME.search(filename) if check_hash else None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # download_url_to_file writes a temporary file and renames it, so a broken download leaves nothing behind
        torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None, progress=True)
    except Exception as err:  # noqa: BLE001 - no network, HTTP error, hash mismatch, unwritable cache
        first = (str(err).strip().splitlines() or [""])[0]
        return None, f"the download from {url} failed ({type(err).__name__}: {first})"
    return path, ""


def fetch_weights(url: str, filename: str, what: str, how_to_set: str, path: str | None = None,
                  check_hash: bool = True) -> str:
    """The local file of a pretrained weights file: `path` when given (it must exist), else the hub cache copy,
    downloading it when online; MissingWeightsError naming the file, where to put it and `how_to_set` otherwise."""
    if path:
        local = os.path.expanduser(path)
        if not os.path.isfile(local):
            raise MissingWeightsError(f"{what}: the weights file given by {how_to_set} ({path}) does not exist "
                                      f"(expected '{filename}', from {url})")
        return local
    found, why = try_download(url, filename, check_hash)
    if found:
        return found
    raise MissingWeightsError(
        f"{what} needs the weights file '{filename}', which is not at {hub_checkpoint_path(filename)} and {why}. "
        f"Download it from {url} where there is internet and put it there ($TORCH_HOME/hub/checkpoints/), "
        f"or give its path with {how_to_set}")
