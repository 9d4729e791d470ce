"""Training randomness as a function of (seed, rank, batch): exact resume, and evaluation that cannot perturb it.

Before every training batch the global RNGs (torch CPU and CUDA, numpy, `random`) are seeded from the run's seed,
the global rank and the batch index. The timesteps, noise, posterior samples and conditioning dropout of batch k are
then the same whether the run was interrupted and resumed, and no matter how much randomness validation, image
logging or an evaluation callback drew in between. The seed is saved in the checkpoint and reused on resume.
(Bit-exact GPU runs also need deterministic kernels: `lightning.trainer.deterministic: true`.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ldm.data.resumable import derived_seed, run_seed
from ldm.util import batches_seen


class TrainingRNG(Callback):
    """Seeds torch / CUDA / numpy / random from (seed, global rank, batch index) at the start of each training batch."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed = run_seed() if seed is None else int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Seed every global RNG for this batch."""
        seed = derived_seed(self.seed, trainer.global_rank, batches_seen(trainer))
        torch.manual_seed(seed)  # CPU and every CUDA device
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The run's seed (so -r continues the same streams whatever -s says)."""
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the interrupted run's seed."""
        self.seed = int(state_dict.get("seed", self.seed))
