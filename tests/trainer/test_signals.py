"""SIGUSR1 saves last.ckpt between batches and training goes on; the previous handler is restored."""

import os
import signal

import pytest
import pytorch_lightning as pl

from ldm.checkpoint import load_checkpoint
from ldm.trainer.checkpointing import LDMModelCheckpoint
from ldm.trainer.signals import CheckpointOnSignal
from ldm.util import batches_seen
from trainer_dummies import TinyModel
from trainer_helpers import tiny_data, tiny_trainer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")


def test_sigusr1_saves_and_training_continues(tmp_path):
    seen = {}

    class SendSignal(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batches_seen(trainer) == 1:
                os.kill(os.getpid(), signal.SIGUSR1)

    class Inspect(pl.Callback):  # runs after CheckpointOnSignal in the same batch end
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            path = tmp_path / "checkpoints" / "last.ckpt"
            if batches_seen(trainer) == 1 and path.exists():
                seen["step"] = load_checkpoint(str(path))["global_step"]

    before = signal.getsignal(signal.SIGUSR1)
    model = TinyModel()
    model.learning_rate = 1e-3
    callbacks = [LDMModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True, save_top_k=0),
                 SendSignal(), CheckpointOnSignal(), Inspect()]
    trainer = tiny_trainer(tmp_path, callbacks, max_steps=4, limit_val_batches=0)
    trainer.fit(model, tiny_data())
    assert seen["step"] == 2  # saved right after the second batch
    assert trainer.global_step == 4  # and training went on
    assert signal.getsignal(signal.SIGUSR1) == before
