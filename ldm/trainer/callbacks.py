"""Small Lightning callbacks of the CompVis CLI: run-folder setup (configs, log.txt, hyperparameters to the loggers),
batch limit, CUDA stats."""

from __future__ import annotations

import os
import time
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ldm.trainer.logdir import RunPaths
from ldm.util import batches_seen


def project_config(config: DictConfig) -> DictConfig:
    """The merged config without its `lightning` section (saved as `<now>-project.yaml`)."""
    return OmegaConf.create({k: v for k, v in config.items() if k != "lightning"})


def save_run_configs(cfgdir: str, now: str, config: DictConfig, lightning_config: DictConfig | None) -> list[str]:
    """Write `<now>-project.yaml` and `<now>-lightning.yaml` into `cfgdir`; returns the paths."""
    os.makedirs(cfgdir, exist_ok=True)
    project_path = os.path.join(cfgdir, f"{now}-project.yaml")
    lightning_path = os.path.join(cfgdir, f"{now}-lightning.yaml")
    OmegaConf.save(project_config(config), project_path)
    OmegaConf.save(OmegaConf.create({"lightning": lightning_config if lightning_config is not None else {}}),
                   lightning_path)
    return [project_path, lightning_path]


class SetupCallback(Callback):
    """Creates the run folders, saves the merged configs, opens `log.txt` (when main.py set up logging) and logs
    the run's hyperparameters (`ldm.trainer.hparams`) to every logger when fitting (or testing) starts; rank 0 only.

    Accepts the CompVis constructor arguments (`resume, now, logdir, ckptdir, cfgdir, config, lightning_config`);
    `command` is the command line recorded with the hyperparameters.
    """

    def __init__(self, resume: Any, now: str, logdir: str, ckptdir: str | None = None, cfgdir: str | None = None,
                 config: DictConfig | None = None, lightning_config: DictConfig | None = None,
                 command: str | None = None):
        super().__init__()
        self.resume = resume
        self.now = now
        self.logdir = logdir
        self.paths = RunPaths(logdir)
        self.ckptdir = ckptdir or self.paths.ckptdir
        self.cfgdir = cfgdir or self.paths.cfgdir
        self.config = config if config is not None else OmegaConf.create()
        self.lightning_config = lightning_config
        self.command = command
        self.saved: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Make the run folders, save the configs, open log.txt, log the hyperparameters (once, rank 0)."""
        from ldm.trainer.hparams import log_hyperparameters, run_hyperparameters
        from ldm.trainer.logging_setup import attach_logfile

        if not trainer.is_global_zero or self.saved:
            return
        self.paths.make()
        os.makedirs(self.ckptdir, exist_ok=True)
        attach_logfile(self.logdir)
        self.saved = save_run_configs(self.cfgdir, self.now, self.config, self.lightning_config)
        rank_zero_info(f"run folder: {self.logdir}\nproject config:\n{OmegaConf.to_yaml(project_config(self.config))}"
                       f"lightning config:\n{OmegaConf.to_yaml(self.lightning_config or {})}")
        log_hyperparameters(trainer.loggers, run_hyperparameters(self.config, pl_module, trainer.datamodule,
                                                                 self.command))


class BatchLimit(Callback):
    """Stops training after exactly `max_batches` training batches.

    Needed when Lightning's optimizer-step `max_steps` cannot express a batch count exactly (gradient
    accumulation); main.py adds it only then.
    """

    def __init__(self, max_batches: int):
        super().__init__()
        self.max_batches = int(max_batches)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Request a stop once `max_batches` batches are done."""
        if batches_seen(trainer) + 1 >= self.max_batches:
            trainer.should_stop = True


class CUDACallback(Callback):
    """Reports epoch time and peak GPU memory at each training epoch end (CompVis `main.CUDACallback`); no-op on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None

    @staticmethod
    def _cuda(trainer: pl.Trainer) -> torch.device | None:
        device = trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset the peak-memory counter and start the epoch clock."""
        device = self._cuda(trainer)
        if device is not None:
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)  # once per epoch, so the epoch time is exact
        self._start = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the epoch time and peak memory averaged over ranks."""
        device = self._cuda(trainer)
        if device is None or self._start is None:
            return
        torch.cuda.synchronize(device)
        epoch_time = time.time() - self._start
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        stats = torch.tensor([epoch_time, peak_mib], device=device)
        stats = trainer.strategy.reduce(stats, reduce_op="mean")
        rank_zero_info(f"epoch time {stats[0].item():.2f} s, peak GPU memory {stats[1].item():.0f} MiB")
