"""Helpers shared by the trainer tests: config files, subprocess runs of main.py, a tiny Trainer."""

import os
import subprocess
import sys

import yaml

from trainer_dummies import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write_config(folder, name="tiny.yaml", **kwargs):
    """Write `tiny_config(**kwargs)` as YAML; returns its path."""
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        yaml.safe_dump(tiny_config(**kwargs), f)
    return path


def subprocess_env(**extra):
    """Environment for `python main.py`: offline, quiet, dummies importable, one thread."""
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([HERE, ROOT]), HF_HUB_OFFLINE="1", WANDB_MODE="offline",
               WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("LDM_LOGDIR", "LDM_RUN_NOW", "WANDB_API_KEY", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    env.update({k: v for k, v in extra.items() if v is not None})
    for key in [k for k, v in extra.items() if v is None]:
        env.pop(key, None)
    return env


def run_main(args, env=None, timeout=180):
    """Run main.py with `args`; returns the CompletedProcess (stdout and stderr captured as text)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def only_run_folder(logs):
    """The single run folder under `logs` (asserts there is exactly one)."""
    runs = [d for d in os.listdir(logs) if os.path.isdir(os.path.join(logs, d))]
    assert len(runs) == 1, runs
    return os.path.join(logs, runs[0])


def tiny_data(n=16, batch_size=4, **kwargs):
    """TinyDataModule with n random 8x8 images in train and validation."""
    from trainer_dummies import TinyDataModule

    dataset = {"target": "trainer_dummies.RandomImages", "params": {"n": n, "size": 8}}
    return TinyDataModule(batch_size=batch_size, train=dataset, validation=dataset, **kwargs)


def tiny_trainer(root, callbacks=(), max_steps=4, logger=False, **kwargs):
    """A quiet CPU Trainer writing under `root`, with the atomic checkpoint IO."""
    import pytorch_lightning as pl

    from ldm.trainer.checkpoint_io import AtomicCheckpointIO

    options = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=logger, callbacks=list(callbacks),
                   default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, log_every_n_steps=1,
                   plugins=[AtomicCheckpointIO([os.path.join(str(root), "checkpoints")])])
    options.update(kwargs)
    if not any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in options["callbacks"]):
        options.setdefault("enable_checkpointing", False)
    return pl.Trainer(**options)
