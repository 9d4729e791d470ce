"""The hyperparameters a run logs to every experiment logger at start: the merged config plus run facts.

`run_hyperparameters` builds one nested dict: the config's sections (`model`, `data`, `lightning`, ...) as
written, and under `run`: parameter counts (total / trainable, per top-level module), dataset sizes, the git
commit of the code and the command line. wandb stores it nested (run config); Lightning's TensorBoard logger
flattens it to `model/params/unet_config/params/model_channels` keys with lists as strings (its hparams);
the CSV logger writes it to `<logdir>/hparams.yaml`.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Key under which the facts that are not config values are logged.
RUN_KEY = "run"
# Seconds git may take to answer before the commit is left out (a slow network file system must not delay a run).
GIT_TIMEOUT_S = 5.0


def config_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (interpolations resolved when they can be)."""
    if isinstance(config, DictConfig):
        try:
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
        except Exception:  # an unresolvable interpolation: log it as written
            return OmegaConf.to_container(config, resolve=False)  # type: ignore[return-value]
    return dict(config or {})


def parameter_counts(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """{"all": {total, trainable}, <child>: {total, trainable}} for the model and each top-level submodule."""

    def count(params: Iterable[torch.nn.Parameter]) -> dict[str, int]:
        total = trainable = 0
        for p in params:
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                continue  # lazy modules have no size yet
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        return {"total": total, "trainable": trainable}

    counts = {"all": count(model.parameters())}
    for name, child in model.named_children():
        counts[name] = count(child.parameters())
    return counts


def dataset_sizes(data: Any) -> dict[str, int]:
    """Examples per split of a data module with a `datasets` dict (splits without a length are left out)."""
    sizes: dict[str, int] = {}
    for split, dataset in (getattr(data, "datasets", None) or {}).items():
        try:
            sizes[str(split)] = len(dataset)
        except TypeError:  # an iterable dataset without a length
            continue
    return sizes


def git_commit(path: str | None = None) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} when `path` (default: the folder holding the `ldm` package) is the root of a
    git checkout, else None (an installed copy inside some other repository must not report that one's commit)."""
    folder = path or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(folder, ".git")):  # a folder, or a file in worktrees and submodules
        return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": bool(status)}


def command_line(argv: Sequence[str] | None = None, program: str | None = None) -> str:
    """The command that started the run, shell-quoted (`python main.py ...`)."""
    program = program or os.path.basename(sys.argv[0] or "main.py")
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", program, *args])


def run_hyperparameters(config: Any, model: torch.nn.Module | None = None, data: Any = None,
                        command: str | None = None) -> dict[str, Any]:
    """The merged config plus `run`: parameters, dataset_sizes, git, command (see the module docstring)."""
    params = config_dict(config)
    run: dict[str, Any] = {"command": command or command_line()}
    if model is not None:
        run["parameters"] = parameter_counts(model)
    if data is not None:
        run["dataset_sizes"] = dataset_sizes(data)
    git = git_commit()
    if git is not None:
        run["git"] = git
    params[RUN_KEY] = run
    return params


def log_hyperparameters(loggers: Iterable[Any], params: dict[str, Any]) -> None:
    """`log_hyperparams(params)` on every logger; a logger that fails is reported, never fatal."""
    for logger in loggers:
        try:
            logger.log_hyperparams(params)
        except Exception as err:  # e.g. a custom logger that cannot take nested values: training goes on
            log.warning("could not log the hyperparameters to %s: %s: %s", type(logger).__name__,
                        type(err).__name__, err)
