"""Lightning CheckpointIO that writes atomically and reads with `weights_only=True` first."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ldm.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_checkpoint_trusted


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through `ldm.checkpoint.atomic_save` (temp file + fsync + rename), so a save killed half-way never
    destroys the previous `last.ckpt`.

    Loading (Lightning's resume, `fit(ckpt_path=...)`) reads with `weights_only=True`, whatever folder the file is in:
    a run folder can come from someone else. Only a file named in `unsafe_files` (main.py `--unsafe-load FILE`: the
    user vouches for that one file) is unpickled with `weights_only=False`, and the log says so.
    """

    def __init__(self, unsafe_files: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self.unsafe_files = {os.path.realpath(f) for f in unsafe_files}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write `checkpoint` to `path` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options "
                            f"(got {storage_options!r})")
        atomic_save(checkpoint, os.fspath(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint for resuming: weights_only, unless the user named this very file as trusted."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file not found: {path}")
        if os.path.realpath(path) in self.unsafe_files:
            rank_zero_info(f"--unsafe-load: unpickling {path} with weights_only=False (trusted by the user)")
            return load_checkpoint_trusted(path, map_location="cpu" if map_location is None else map_location)
        try:
            return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)
        except CheckpointError as err:
            raise CheckpointError(f"{err} To resume from it anyway, and only if you trust where the file came "
                                  f"from (unpickling can run code), pass --unsafe-load {path}") from err.__cause__
