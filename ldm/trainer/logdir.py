"""Run folder layout (`logs/<now>_<name><postfix>/`), naming, and the hand-off of the chosen folder to DDP ranks."""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass

# Environment variables that carry rank 0's choice to the processes Lightning (or torchrun/SLURM, if the user sets
# them) starts for the other ranks, so every rank agrees on one folder instead of making its own timestamp.
LOGDIR_ENV = "LDM_LOGDIR"
NOW_ENV = "LDM_RUN_NOW"

# Timestamp format of run folders and saved config files, as in CompVis (`2022-01-31T12-00-00`).
TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"


def timestamp() -> str:
    """Current local time formatted as in CompVis run names."""
    return datetime.datetime.now().strftime(TIME_FORMAT)


def run_name(now: str, name: str | None = None, postfix: str = "", base: list[str] | None = None) -> str:
    """`<now>_<name><postfix>`; the name defaults to the first config file's stem (CompVis naming)."""
    if name:
        suffix = "_" + name
    elif base:
        suffix = "_" + os.path.splitext(os.path.basename(base[0]))[0]
    else:
        suffix = ""
    return now + suffix + (postfix or "")


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run: `checkpoints/`, `configs/`, `images/{train,val}/` below `logdir`."""

    logdir: str

    @property
    def name(self) -> str:
        """The run's folder name (also the wandb run id, so a resumed run continues the same wandb run)."""
        return os.path.basename(os.path.normpath(self.logdir))

    @property
    def ckptdir(self) -> str:
        """Folder of `last.ckpt` and the top-k checkpoints."""
        return os.path.join(self.logdir, "checkpoints")

    @property
    def cfgdir(self) -> str:
        """Folder of the saved `<now>-project.yaml` / `<now>-lightning.yaml`."""
        return os.path.join(self.logdir, "configs")

    @property
    def imgdir(self) -> str:
        """Folder of the image logger's PNG grids (`train/`, `val/`)."""
        return os.path.join(self.logdir, "images")

    @property
    def last_ckpt(self) -> str:
        """Path of `checkpoints/last.ckpt`."""
        return os.path.join(self.ckptdir, "last.ckpt")

    def make(self) -> None:
        """Create every folder of the layout."""
        for folder in (self.logdir, self.ckptdir, self.cfgdir, os.path.join(self.imgdir, "train"),
                       os.path.join(self.imgdir, "val")):
            os.makedirs(folder, exist_ok=True)


def new_logdir(root: str, name: str) -> str:
    """`root/name`, made unique with `-1`, `-2`, ... if a run started in the same second already took it."""
    candidate = os.path.join(root, name)
    n = 0
    while os.path.exists(candidate):
        n += 1
        candidate = os.path.join(root, f"{name}-{n}")
    return candidate


def logdir_from_rank_zero() -> tuple[str, str] | None:
    """(logdir, now) chosen by rank 0 and passed through the environment, or None in the launching process."""
    logdir = os.environ.get(LOGDIR_ENV)
    if not logdir:
        return None
    return logdir, os.environ.get(NOW_ENV) or timestamp()


def launched_processes() -> int:
    """How many processes an external launcher started for this run: torchrun's WORLD_SIZE, srun's
    SLURM_STEP_NUM_TASKS (1 when main.py starts its own DDP ranks, which get the folder through
    `export_logdir_to_ranks`)."""
    counts = []
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        try:
            counts.append(int(os.environ.get(key, "1")))
        except ValueError:
            pass
    return max([1, *counts])


def choose_logdir(root: str, name: str | None = None, postfix: str = "", base: list[str] | None = None,
                  resume_logdir: str | None = None) -> tuple[str, str]:
    """(logdir, now): the resumed run's folder, the one rank 0 handed over (DDP ranks > 0), or a new
    `root/<now>_<name><postfix>` (see `run_name`)."""
    handed = logdir_from_rank_zero()
    now = handed[1] if handed else timestamp()
    if resume_logdir is not None:
        return resume_logdir, now
    if handed:
        return handed[0], now
    return new_logdir(os.path.abspath(root), run_name(now, name, postfix, base)), now


def remove_if_unused(paths: "RunPaths", batches_trained: int) -> bool:
    """Delete a run folder in which no training batch ran and no checkpoint exists; True if it was removed."""
    if batches_trained > 0 or not os.path.isdir(paths.logdir):
        return False
    if os.path.isdir(paths.ckptdir) and any(f.endswith(".ckpt") for f in os.listdir(paths.ckptdir)):
        return False
    shutil.rmtree(paths.logdir, ignore_errors=True)
    return True


def export_logdir_to_ranks(logdir: str, now: str) -> dict[str, str | None]:
    """Export the run folder for processes started later (DDP ranks); returns the previous values for `restore_env`."""
    previous = {LOGDIR_ENV: os.environ.get(LOGDIR_ENV), NOW_ENV: os.environ.get(NOW_ENV)}
    os.environ[LOGDIR_ENV] = logdir
    os.environ[NOW_ENV] = now
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    """Undo `export_logdir_to_ranks` (so a second run in the same process picks a new folder)."""
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def move_to_debug_runs(logdir: str) -> str:
    """Move a finished `-d/--debug` run to `<root>/debug_runs/<name>` as CompVis does; returns the new path."""
    root, name = os.path.split(os.path.normpath(logdir))
    target_root = os.path.join(root, "debug_runs")
    os.makedirs(target_root, exist_ok=True)
    target = new_logdir(target_root, name)
    shutil.move(logdir, target)
    return target
