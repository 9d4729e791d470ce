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
    assert "schedule keeps its place" in caplog.text


def test_resume_at_the_same_rate_and_a_fresh_run_change_nothing(tmp_path, caplog):
    path = _checkpoint(tmp_path, 1e-2, True)
    record = RecordRates()
    _trainer(tmp_path, 3, record).fit(Regression(1e-2, True), ckpt_path=path)
    assert record.start == (pytest.approx(1e-2 * halving(2), rel=1e-12), pytest.approx(1e-2))
    fresh = RecordRates()
    _trainer(tmp_path, 1, fresh).fit(Regression(1e-2, True))
    assert fresh.start == (pytest.approx(1e-2), pytest.approx(1e-2))
    assert "learning rate:" not in caplog.text


SCHEDULES = {
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=halving),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"] * 10,
                                                                total_steps=20),
    "cosine_eta_min": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=6, eta_min=opt.param_groups[0]["lr"] / 2),
    "sequential": lambda opt: torch.optim.lr_scheduler.SequentialLR(
        opt, [torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=3),
              torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)], milestones=[3]),
    "cyclic": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=opt.param_groups[0]["lr"] / 4,
                                                            max_lr=opt.param_groups[0]["lr"], step_size_up=2),
}


def _optimizer(lr, kind):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": lr / 10}], lr=lr, momentum=0.9)
    return opt, SCHEDULES[kind](opt) if kind else None


def _fake_trainer(opt, scheduler, ckpt_path=None):
    from types import SimpleNamespace

    configs = [SimpleNamespace(scheduler=scheduler)] if scheduler is not None else []
    return SimpleNamespace(optimizers=[opt], lr_scheduler_configs=configs, ckpt_path=ckpt_path)


def _steps(opt, scheduler, n):
    rates = []
    for _ in range(n):
        opt.step()
        if scheduler is not None:
            scheduler.step()
        rates.extend(float(g["lr"]) for g in opt.param_groups)
    return rates


@pytest.mark.parametrize("kind", [None, *SCHEDULES])
@pytest.mark.parametrize("with_callback_state", [True, False])
def test_a_resumed_schedule_at_a_new_rate_is_the_schedule_of_that_rate(kind, with_callback_state):
    """Saved after 4 steps at lr 0.1, resumed at 0.02: the next steps' rates are those of a run at 0.02 throughout."""
    opt, scheduler = _optimizer(0.1, kind)
    first = ResumedLearningRate()
    first.on_fit_start(_fake_trainer(opt, scheduler), None)
    _steps(opt, scheduler, 4)
    saved = (opt.state_dict(), scheduler.state_dict() if scheduler else None, first.state_dict())

    opt, scheduler = _optimizer(0.02, kind)
    resumed = ResumedLearningRate()
    trainer = _fake_trainer(opt, scheduler, ckpt_path="last.ckpt")
    resumed.on_fit_start(trainer, None)  # Lightning's order: configure, on_fit_start, restore, on_train_start
    opt.load_state_dict(saved[0])
    if scheduler is not None:
        scheduler.load_state_dict(saved[1])
    if with_callback_state:
        resumed.load_state_dict(saved[2])
    resumed.on_train_start(trainer, None)

    reference_opt, reference_scheduler = _optimizer(0.02, kind)
    _steps(reference_opt, reference_scheduler, 4)
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx(
        [float(g["lr"]) for g in reference_opt.param_groups], rel=1e-9)
    assert _steps(opt, scheduler, 8) == pytest.approx(_steps(reference_opt, reference_scheduler, 8), rel=1e-9)


def test_an_unchanged_rate_keeps_what_reduce_on_plateau_did():
    opt, _ = _optimizer(0.1, None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    callback = ResumedLearningRate()
    callback.on_fit_start(_fake_trainer(opt, scheduler), None)
    for _ in range(3):
        scheduler.step(1.0)  # no improvement: the rate drops
    reduced = [float(g["lr"]) for g in opt.param_groups]
    assert reduced[0] < 0.1
    saved = (opt.state_dict(), scheduler.state_dict(), callback.state_dict())

    for state in (saved[2], None):  # with the callback's state, and a checkpoint that has none
        opt, _ = _optimizer(0.1, None)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
        resumed = ResumedLearningRate()
        trainer = _fake_trainer(opt, scheduler, ckpt_path="last.ckpt")
        resumed.on_fit_start(trainer, None)
        opt.load_state_dict(saved[0])
        scheduler.load_state_dict(saved[1])
        if state is not None:
            resumed.load_state_dict(state)
        resumed.on_train_start(trainer, None)
        assert [float(g["lr"]) for g in opt.param_groups] == reduced


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
