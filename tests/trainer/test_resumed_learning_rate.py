"""ResumedLearningRate: a resumed run trains at the configured learning rate, the schedule keeping its place."""

import os
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ldm.trainer.resumed_learning_rate import ResumedLearningRate

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from trainer_helpers import only_run_folder, write_config  # noqa: E402


def halving(step: int) -> float:
    return 0.5 ** step


class Regression(pl.LightningModule):
    def __init__(self, lr: float, schedule: bool):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.lr, self.schedule = lr, schedule

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if not self.schedule:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=halving)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)),
                          batch_size=4)


class RecordRates(pl.Callback):
    """The first group's lr (and scheduler base rate) when training starts and after every batch."""

    def __init__(self):
        self.start = None
        self.after = []

    def _now(self, trainer):
        schedulers = trainer.lr_scheduler_configs
        return (float(trainer.optimizers[0].param_groups[0]["lr"]),
                schedulers[0].scheduler.base_lrs[0] if schedulers else None)

    def on_train_start(self, trainer, pl_module):
        self.start = self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(self._now(trainer)[0])


def _trainer(tmp_path, max_steps, *callbacks):
    return pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ResumedLearningRate(), *callbacks])


def _checkpoint(tmp_path, lr, schedule):
    trainer = _trainer(tmp_path, 2)
    trainer.fit(Regression(lr, schedule))
    path = str(tmp_path / "two_steps.ckpt")
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("schedule", [True, False])
def test_resume_with_a_new_rate_continues_at_it_and_keeps_the_schedule(tmp_path, schedule, caplog):
    path = _checkpoint(tmp_path, 1e-2, schedule)
    record = RecordRates()
    _trainer(tmp_path, 4, record).fit(Regression(1e-3, schedule), ckpt_path=path)
    factor = halving(2) if schedule else 1.0  # two scheduler steps were taken before the save
    assert record.start[0] == pytest.approx(1e-3 * factor, rel=1e-12)
    if schedule:
        assert record.start[1] == pytest.approx(1e-3)
        assert record.after == pytest.approx([1e-3 * halving(3), 1e-3 * halving(4)], rel=1e-12)
    else:
        assert record.after == pytest.approx([1e-3, 1e-3], rel=1e-12)
    assert "learning rate:" in caplog.text and "optimizer 0: 1.000e-02 -> 1.000e-03" in caplog.text


def test_resume_at_the_same_rate_and_a_fresh_run_change_nothing(tmp_path, caplog):
    path = _checkpoint(tmp_path, 1e-2, True)
    record = RecordRates()
    _trainer(tmp_path, 3, record).fit(Regression(1e-2, True), ckpt_path=path)
    assert record.start == (pytest.approx(1e-2 * halving(2), rel=1e-12), pytest.approx(1e-2))
    fresh = RecordRates()
    _trainer(tmp_path, 1, fresh).fit(Regression(1e-2, True))
    assert fresh.start == (pytest.approx(1e-2), pytest.approx(1e-2))
    assert "learning rate:" not in caplog.text


def test_main_resume_with_a_lower_base_learning_rate_trains_at_it(tmp_path, capsys):
    """The path the non-finite guard's advice takes: -r RUN model.base_learning_rate=<lower>, two optimizers."""
    import main
    from ldm.checkpoint import load_checkpoint

    cfg = write_config(tmp_path, model="trainer_dummies.TinyGAN", max_steps=2, limit_val_batches=1,
                       enable_progress_bar=False)
    logs = tmp_path / "logs"
    assert main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv"]) == 0
    run = only_run_folder(logs)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    assert [s["param_groups"][0]["lr"] for s in load_checkpoint(last)["optimizer_states"]] == \
        pytest.approx([4e-3, 4e-3])  # 4 (batch size) x 1e-3
    capsys.readouterr()
    assert main.main(["-r", run, "-t", "lightning.trainer.max_steps=3", "model.base_learning_rate=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "Setting learning rate to 4.00e-04" in out
    assert "optimizer 0: 4.000e-03 -> 4.000e-04" in out and "optimizer 1: 4.000e-03 -> 4.000e-04" in out
    assert [s["param_groups"][0]["lr"] for s in load_checkpoint(last)["optimizer_states"]] == \
        pytest.approx([4e-4, 4e-4])
