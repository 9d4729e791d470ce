"""Train a model from YAML configs: the CompVis `main.py` command line on Lightning 2.

    python main.py --base configs/autoencoder_kl_f8.yaml configs/overlays/cpu.yaml -t
    python main.py --base configs/x.yaml -t model.params.embed_dim=8 lightning.trainer.max_steps=100
    python main.py -r logs/<run>                      # continue training from checkpoints/last.ckpt

This file only parses arguments, merges configs, builds objects and runs them; the Lightning glue lives in
`ldm/trainer/`. Configs may name `main.DataModuleFromConfig`, `main.ImageLogger`, `main.SetupCallback` and
`main.CUDACallback` as in CompVis.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from typing import Any

# Only light imports here (argparse, omegaconf): `--help` and argument errors answer before torch and Lightning load.
from ldm.errors import UsageError
from ldm.run_folder import resolve_resume
from ldm.targets import ALLOW_ENV
from ldm.trainer.cli import load_run_config, parse_args
from ldm.trainer.logdir import (LOGDIR_ENV, RunPaths, choose_logdir, export_logdir_to_ranks, launched_processes,
                                logdir_from_rank_zero, move_to_debug_runs, remove_if_unused, restore_env)
from ldm.util import ConfigError


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user fixes without reading a traceback: printed as one line, exit status 1 (ConfigError/UsageError:
    2)."""
    from ldm.checkpoint import CheckpointError

    return FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, CheckpointError


def __getattr__(name: str) -> Any:
    """`main.DataModuleFromConfig`, `main.SetupCallback`, `main.CUDACallback`, `main.ImageLogger` (CompVis config
    targets) and `main.instantiate_from_config` (imported from here by the original scripts, e.g. inpaint.py),
    imported on first use."""
    import ldm.util

    if f"main.{name}" in ldm.util.LEGACY_TARGETS:  # where the CompVis `main.<X>` config targets live in the package
        return ldm.util.get_obj_from_str(ldm.util.LEGACY_TARGETS[f"main.{name}"])
    if name in ("instantiate_from_config", "get_obj_from_str"):
        return getattr(ldm.util, name)
    raise AttributeError(f"module 'main' has no attribute '{name}'")


def log_rank_zero(message: str, error: bool = False) -> None:
    """A note (stdout) or error (stderr) on global rank 0 only, through logging, so `<logdir>/log.txt` has it too."""
    import logging

    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        logging.getLogger("ldm.main").log(logging.ERROR if error else logging.INFO, message, extra={"bare": True})


def complain(message: str) -> None:
    """An error line on stderr, rank 0 only."""
    log_rank_zero(message, error=True)


def build(opt: Namespace, dotlist: list[str]) -> dict[str, Any]:
    """Config, model, data, callbacks, loggers and Trainer; writes no files (errors here leave no run folder)."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf
    from pytorch_lightning.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.utilities.model_helpers import is_overridden

    from ldm.trainer.build import checkpoint_config, config_number, configured_callbacks, learning_rate, trainer_kwargs
    from ldm.trainer.callbacks import SetupCallback
    from ldm.trainer.checkpoint_io import AtomicCheckpointIO
    from ldm.trainer.loggers import build_loggers
    from ldm.trainer.progress import ThroughputProgressBar, TrainingStats
    from ldm.trainer.resumed_learning_rate import ResumedLearningRate
    from ldm.trainer.signals import CheckpointOnSignal
    from ldm.util import instantiate_from_config

    from ldm.trainer.checks import check_buckets, check_data_for_model, check_writable_logdir, fit_intervals_to_epoch

    resume = resolve_resume(opt.resume) if opt.resume else None
    if resume is None and logdir_from_rank_zero() is None and launched_processes() > 1:
        # torchrun / srun start every process themselves: each would pick its own timestamped folder
        raise UsageError(f"{launched_processes()} processes were launched by torchrun/srun: set "
                         f"{LOGDIR_ENV}=logs/<run name> (the same on every node) so that they share one run folder, "
                         "or resume one with -r")
    logdir, now = choose_logdir(opt.logdir, opt.name, opt.postfix, opt.base, resume.logdir if resume else None)
    paths = RunPaths(logdir)
    if opt.train:
        check_writable_logdir(logdir)
    config = load_run_config(opt, dotlist, resume)
    pl.seed_everything(opt.seed, workers=True)
    lightning_cfg = config.get("lightning") or OmegaConf.create()
    for section in ("model", "data"):
        if OmegaConf.select(config, section) is None:
            raise ConfigError(f"{section}: missing from the config (expected {section}: {{target: ..., params: ...}})")

    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    trainer_cfg, notes, extra_callbacks = trainer_kwargs(lightning_cfg.get("trainer"), model)
    loggers = build_loggers(lightning_cfg.get("logger"), logdir, paths.name, opt.project, opt.debug)
    checkpoint = None
    if trainer_cfg.get("enable_checkpointing", True):
        checkpoint = instantiate_from_config(checkpoint_config(lightning_cfg, model, paths))
    else:
        log_rank_zero("lightning.trainer.enable_checkpointing=false: no checkpoints, so this run cannot be resumed")
    stats = TrainingStats()
    callbacks = [SetupCallback(resume=resume, now=now, logdir=logdir, ckptdir=paths.ckptdir, cfgdir=paths.cfgdir,
                               config=config, lightning_config=lightning_cfg, command=getattr(opt, "command", None)),
                 *([checkpoint, CheckpointOnSignal()] if checkpoint is not None else []), stats, ResumedLearningRate(),
                 *configured_callbacks(lightning_cfg).values(), *extra_callbacks]
    if trainer_cfg.get("enable_progress_bar", True):
        max_batches = OmegaConf.select(lightning_cfg, "trainer.max_steps", default=None)
        callbacks.append(ThroughputProgressBar(stats, max_batches=max_batches if (max_batches or 0) > 0 else None))
    try:
        trainer = pl.Trainer(**trainer_cfg, logger=loggers, callbacks=callbacks, default_root_dir=logdir,
                             plugins=[AtomicCheckpointIO(unsafe_files=opt.unsafe_load)])
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"lightning.trainer: {err}") from err

    can_test = OmegaConf.select(config, "data.params.test") is not None and is_overridden("test_step", model)
    will_test = not opt.no_test and can_test
    if opt.train or will_test:  # CompVis sets data up before fit too: a missing folder fails before files are written
        data.prepare_data()
        data.setup("fit" if opt.train else "test")
    for split, dataset in (getattr(data, "datasets", None) or {}).items():
        log_rank_zero(f"data: {split}: {type(dataset).__name__}, {len(dataset)} examples")
    if opt.train:
        check_buckets(config, data)
        notes += check_data_for_model(model, data) + fit_intervals_to_epoch(trainer, data)

    if opt.train:
        base_lr = OmegaConf.select(config, "model.base_learning_rate")
        batch_size = OmegaConf.select(config, "data.params.batch_size") or getattr(data, "batch_size", None)
        if base_lr is None or batch_size is None:
            raise ConfigError("model.base_learning_rate and data.params.batch_size are needed to set the learning rate")
        base_lr = config_number(base_lr, "model.base_learning_rate", float)
        accumulate = config_number(OmegaConf.select(lightning_cfg, "trainer.accumulate_grad_batches", default=1) or 1,
                                   "lightning.trainer.accumulate_grad_batches", int)
        model.learning_rate, message = learning_rate(base_lr, config_number(batch_size, "data.params.batch_size", int),
                                                     accumulate,
                                                     trainer.num_devices, trainer.num_nodes, scale=opt.scale_lr)
        notes.append(message)
    for line in notes:
        log_rank_zero(line)
    return dict(config=config, model=model, data=data, trainer=trainer, paths=paths, now=now, resume=resume,
                loggers=loggers, checkpoint=checkpoint, test=will_test)


def _cleanup(built: dict[str, Any]) -> None:
    """After a failed fit: remove a fresh run folder in which no batch ran (rank 0)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    checkpoint = built["checkpoint"]
    trained = checkpoint._batches_this_process if checkpoint is not None else built["trainer"].global_step
    if rank_zero_only.rank == 0 and built["resume"] is None and remove_if_unused(built["paths"], trained):
        log_rank_zero(f"removed the run folder {built['paths'].logdir}: no training batch ran")


def _report_divergence(err: Exception, built: dict[str, Any]) -> None:
    """One-line error for a diverged run, and which checkpoint is still good."""
    checkpoint = built["checkpoint"]
    path, batch = checkpoint.last_good if checkpoint is not None else (None, None)
    if path is None:
        where = "no checkpoint of this run exists (it diverged before the first save)"
    elif batch is None:
        where = f"last good checkpoint: {path} (the one this run started from)"
    else:
        where = f"last good checkpoint: {path} (after {batch} training batches)"
    complain(f"error: training stopped: {err}; {where}")


def run(opt: Namespace, built: dict[str, Any]) -> int:
    """Fit (and test); hand the run folder to DDP ranks; report wandb sync; returns the exit status."""
    import warnings

    from omegaconf import OmegaConf
    from pytorch_lightning.utilities.exceptions import SIGTERMException
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from ldm.trainer.loggers import finish_wandb, start_wandb

    from ldm.checkpoint import CheckpointError
    from ldm.files import remove_stale_temp_files
    from ldm.trainer.finite_guard import NonFiniteTrainingError

    trainer, paths = built["trainer"], built["paths"]
    if not opt.train and not built["test"]:
        log_rank_zero("nothing to do: pass -t/--train to train (the config has no test data or the model no test_step)")
        return 0
    if opt.train and rank_zero_only.rank == 0:  # left by a save that was killed (kill -9, power loss)
        for stale in remove_stale_temp_files(paths.ckptdir):
            log_rank_zero(f"removed {stale}: an unfinished checkpoint write of an earlier process")
    # Lightning 2.6 on torch 2.14 warns about a torch-internal deprecation on every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    if built["resume"] is not None:  # the run's own checkpoints are expected there
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    previous_env = export_logdir_to_ranks(paths.logdir, built["now"])
    logdir = paths.logdir
    try:
        trainer.loggers = start_wandb(list(trainer.loggers), paths.logdir, paths.name, opt.project)
        if opt.train:
            ckpt = built["resume"].ckpt if built["resume"] else None
            if ckpt:
                log_rank_zero(f"resuming from {ckpt}")
            try:
                trainer.fit(built["model"], built["data"], ckpt_path=ckpt)
            except SIGTERMException:
                log_rank_zero(f"SIGTERM: training stopped and {paths.last_ckpt} was saved; continue with: "
                    f"python main.py -r {paths.logdir}")
                return 0
            except NonFiniteTrainingError as err:
                _report_divergence(err, built)
                return 1
            except ConfigError:
                _cleanup(built)
                raise
            except (CheckpointError, OSError) as err:  # e.g. disk full, folder not writable: the message names the path
                if opt.debug:
                    raise
                complain(f"error: {type(err).__name__}: {err}")
                good, _ = built["checkpoint"].last_good if built["checkpoint"] is not None else (None, None)
                if good:
                    complain(f"the last complete checkpoint is {good}; continue with: python main.py -r {paths.logdir}")
                return 1
            except BaseException:  # the original error propagates unchanged (a checkpoint was saved if possible)
                if opt.debug and rank_zero_only.rank == 0 and sys.stdin.isatty():
                    import pdb

                    pdb.post_mortem(sys.exc_info()[2])
                elif not opt.debug:
                    _cleanup(built)
                raise
            checkpoint = built["checkpoint"]
            if built["resume"] is not None and checkpoint is not None and checkpoint._batches_this_process == 0:
                max_steps = OmegaConf.select(built["config"], "lightning.trainer.max_steps", default=None)
                log_rank_zero(f"nothing trained: the run already reached lightning.trainer.max_steps={max_steps}; to train "
                    f"longer: python main.py -r {paths.logdir} lightning.trainer.max_steps=<more>")
        if built["test"] and not trainer.interrupted:
            trainer.test(built["model"], built["data"])
    finally:
        restore_env(previous_env)
        if opt.train and rank_zero_only.rank == 0:
            from ldm.trainer.plots import plot_run_safely

            plot_run_safely(paths.logdir)  # <logdir>/plots/*.png from metrics.csv; a failure is only a warning
        hint = finish_wandb(list(trainer.loggers)) if rank_zero_only.rank == 0 else None
        if opt.debug and built["resume"] is None and rank_zero_only.rank == 0 and os.path.isdir(logdir):
            logdir = move_to_debug_runs(logdir)
            log_rank_zero(f"debug run moved to {logdir}")
            hint = hint.replace(paths.logdir, logdir) if hint else None
        if hint:
            log_rank_zero(f"wandb ran offline; upload this run with:\n  {hint}")
    log_rank_zero(f"run folder: {logdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns 0 on success, 2 for config / usage errors, 1 for other errors before training."""
    from ldm.trainer.logging_setup import setup_logging, teardown_logging

    setup_logging()  # INFO to the console; SetupCallback opens <logdir>/log.txt
    try:
        return _main(argv)
    finally:
        teardown_logging()


def _main(argv: list[str] | None) -> int:
    try:
        opt, dotlist = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ldm.trainer.hparams import command_line

    opt.command = command_line(argv, program="main.py")  # logged with the hyperparameters
    if opt.allow_target:  # through the environment, so DDP ranks started later see it too
        os.environ[ALLOW_ENV] = ",".join(filter(None, [os.environ.get(ALLOW_ENV, ""), *opt.allow_target]))
    try:
        built = build(opt, dotlist)
    except (ConfigError, UsageError) as err:
        if opt.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except user_errors() as err:
        if opt.debug:
            raise
        print(f"error: {type(err).__name__}: {err}\n(run with -d for the full traceback)", file=sys.stderr)
        return 1
    try:
        return run(opt, built)
    except ConfigError as err:
        if opt.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
