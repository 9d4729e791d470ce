"""Lightning CheckpointIO that writes atomically and reads with `weights_only=True` first."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ldm.checkpoint import CheckpointError, atomic_save, load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through `ldm.checkpoint.atomic_save` (temp file + fsync + rename), so a save killed half-way never
    destroys the previous `last.ckpt`.

    Loading (Lightning's resume, `fit(ckpt_path=...)`) reads with `weights_only=True`. Checkpoints inside
    `trusted_dirs` (the run's own `checkpoints/` folder, written by this program) that need full unpickling, e.g.
    because a model saved OmegaConf hyper-parameters, are read with `weights_only=False` and the log says so; any
    other file that is not weights-only-safe is refused.
    """

    def __init__(self, trusted_dirs: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self.trusted_dirs = [os.path.abspath(d) for d in trusted_dirs]

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write `checkpoint` to `path` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options "
                            f"(got {storage_options!r})")
        atomic_save(checkpoint, os.fspath(path))

    def _is_trusted(self, path: str) -> bool:
        folder = os.path.dirname(os.path.abspath(path))
        return any(folder == d or folder.startswith(d + os.sep) for d in self.trusted_dirs)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint for resuming; `weights_only=False` only for explicitly trusted files."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file not found: {path}")
        if weights_only is False:
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        try:
            return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)
        except CheckpointError:
            if weights_only is True or not self._is_trusted(path):
                raise
        rank_zero_info(f"{path} holds more than tensors (e.g. hyper-parameter objects); it was written by this "
                       "program in the run's own checkpoints/ folder, so it is loaded with weights_only=False")
        return super().load_checkpoint(path, map_location=map_location, weights_only=False)
