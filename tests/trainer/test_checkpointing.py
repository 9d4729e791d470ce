"""LDMModelCheckpoint: batch cadence for two-optimizer models, last.ckpt on crash / at the end / on request."""

import os

import pytest
import pytorch_lightning as pl
import torch

from ldm.checkpoint import load_checkpoint
from ldm.trainer.checkpointing import LDMModelCheckpoint
from ldm.util import batches_seen
from trainer_helpers import tiny_data, tiny_trainer
from trainer_dummies import TinyGAN, TinyModel


def _ckpt(tmp_path, **kwargs):
    return LDMModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True, **kwargs)


def test_exception_saves_last_and_reraises_the_original_error(tmp_path):
    model = TinyModel(fail_at_batch=2)
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [_ckpt(tmp_path, save_top_k=0)], max_steps=10)
    with pytest.raises(RuntimeError, match="planned failure at batch 2"):
        trainer.fit(model, tiny_data())
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert state["global_step"] == 2  # two batches trained before the failure


def test_keyboard_interrupt_saves_last(tmp_path):
    class CtrlC(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batches_seen(trainer) == 2:
                raise KeyboardInterrupt

    model = TinyModel()
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [_ckpt(tmp_path, save_top_k=0), CtrlC()], max_steps=10)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into exit status 1 after the on_exception hooks
        trainer.fit(model, tiny_data())
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["global_step"] == 3


def test_failure_before_any_batch_writes_nothing(tmp_path):
    model = TinyModel(fail_at_batch=0)
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [_ckpt(tmp_path, save_top_k=0)], max_steps=10)
    with pytest.raises(RuntimeError, match="planned failure"):
        trainer.fit(model, tiny_data())
    assert not os.path.exists(tmp_path / "checkpoints" / "last.ckpt")


def test_every_n_train_steps_counts_batches_not_optimizer_steps(tmp_path):
    """TinyGAN steps two optimizers per batch; every_n_train_steps=2 still means every 2 batches."""
    model = TinyGAN()
    model.learning_rate = 1e-3
    callback = _ckpt(tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{batch}")
    trainer = tiny_trainer(tmp_path, [callback], max_steps=2 * 5, limit_val_batches=0)
    trainer.fit(model, tiny_data(n=40))  # 10 batches per epoch; 5 batches run
    files = sorted(os.listdir(tmp_path / "checkpoints"))
    # batches 2 and 4 from the cadence, 5 from the (cut short) epoch end as in Lightning / CompVis
    assert files == ["batch=2.ckpt", "batch=4.ckpt", "batch=5.ckpt", "last.ckpt"]
    last = load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert last["global_step"] == 10  # written at the end (batch 5), not left at batch 4


def test_existing_last_ckpt_is_overwritten_not_versioned(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"old": True}, tmp_path / "checkpoints" / "last.ckpt")
    model = TinyModel()
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [_ckpt(tmp_path, save_top_k=0)], max_steps=2, limit_val_batches=0)
    trainer.fit(model, tiny_data())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["global_step"] == 2


def test_save_last_now_and_resume_continues_at_the_saved_batch(tmp_path):
    saved = {}

    class SaveAtBatch2(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batches_seen(trainer) == 1:
                saved["path"] = trainer.checkpoint_callback.save_last_now(trainer)
                saved["step"] = load_checkpoint(saved["path"])["global_step"]

    model = TinyModel()
    model.learning_rate = 1e-3
    callback = _ckpt(tmp_path, save_top_k=0)
    trainer = tiny_trainer(tmp_path, [callback, SaveAtBatch2()], max_steps=3, limit_val_batches=0)
    trainer.fit(model, tiny_data())
    assert saved["path"].endswith("last.ckpt") and saved["step"] == 2

    resumed = TinyModel()
    resumed.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [_ckpt(tmp_path, save_top_k=0)], max_steps=6, limit_val_batches=0)
    trainer.fit(resumed, tiny_data(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed.seen_batches == [3, 4, 5]  # continues after the 3 batches of the first run
    assert trainer.global_step == 6
