"""A `main.py` run folder, or a model folder in the original CompVis release layout: what `-r` points at, which
checkpoint and configs it means, and its configs merged. Light imports only (main.py resolves `-r` before torch
loads); loading the model itself is `ldm.models.from_run`."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from omegaconf import DictConfig

from ldm.errors import UsageError
from ldm.util import load_configs

# The original CompVis layout of a released / exported model: one folder with these two files (the original
# `sample_diffusion.py -r FOLDER` reads them; `scripts/export.py --format compvis` writes them).
COMPVIS_CONFIG, COMPVIS_CKPT = "config.yaml", "model.ckpt"


@dataclass
class ResumeInfo:
    """What `-r` points at: the run folder, the checkpoint to continue from, and the run's saved configs.

    `layout` is "run" for a main.py run folder and "compvis" for a config.yaml + model.ckpt folder (inference only).
    """

    logdir: str
    ckpt: str
    configs: list[str] = field(default_factory=list)
    layout: str = "run"


def _compvis_folder(folder: str, ckpt: str | None = None) -> ResumeInfo | None:
    """ResumeInfo of a config.yaml + model.ckpt folder (another .ckpt inside it may be named), else None."""
    config = os.path.join(folder, COMPVIS_CONFIG)
    ckpt = ckpt or os.path.join(folder, COMPVIS_CKPT)
    if os.path.isfile(config) and os.path.isfile(ckpt) and not os.path.isdir(os.path.join(folder, "configs")):
        return ResumeInfo(logdir=folder, ckpt=os.path.abspath(ckpt), configs=[config], layout="compvis")
    return None


def resolve_resume(path: str, inference: bool = False) -> ResumeInfo:
    """Turn `-r <logdir>` or `-r <logdir>/checkpoints/<x>.ckpt` into a ResumeInfo; clear errors for bad paths.

    With `inference`, a folder holding config.yaml + model.ckpt (the original layout), or a .ckpt inside it, is
    accepted too; training cannot resume from it (no optimizer or loop state), which the error says.
    """
    if not os.path.exists(path):
        raise UsageError(f"-r/--resume: cannot find {path}")
    path = os.path.normpath(path)
    folder = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
    compvis = _compvis_folder(folder, os.path.abspath(path) if os.path.isfile(path) else None)
    if compvis is not None:
        if not inference:
            raise UsageError(f"-r/--resume: {folder} holds {COMPVIS_CONFIG} + {COMPVIS_CKPT} (an exported model), "
                             "which has no training state to resume; sampling scripts take it with -r, and training "
                             f"starts from it with --base {os.path.join(folder, COMPVIS_CONFIG)} "
                             f"model.params.ckpt_path={compvis.ckpt}")
        return compvis
    if os.path.isfile(path):
        ckptdir = os.path.dirname(os.path.abspath(path))
        if os.path.basename(ckptdir) != "checkpoints":
            raise UsageError(f"-r/--resume: {path} is not inside a run's checkpoints/ folder "
                             "(expected <logdir>/checkpoints/<name>.ckpt"
                             + (f" or a folder with {COMPVIS_CONFIG} + {COMPVIS_CKPT})" if inference else ")"))
        logdir = os.path.dirname(ckptdir)
        ckpt = os.path.abspath(path)
    else:
        logdir = os.path.abspath(path)
        if os.path.basename(logdir) == "checkpoints" and not os.path.isdir(os.path.join(logdir, "configs")):
            logdir = os.path.dirname(logdir)
        ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
        if not os.path.isfile(ckpt):
            hint = f" (nor {COMPVIS_CONFIG} + {COMPVIS_CKPT})" if inference else ""
            raise UsageError(f"-r/--resume: {logdir} has no checkpoints/last.ckpt{hint}; nothing to resume from")
    configs = sorted(glob.glob(os.path.join(logdir, "configs", "*.yaml")))
    if not configs:
        raise UsageError(f"-r/--resume: {logdir} has no saved configs in configs/*.yaml; is it a run folder?")
    return ResumeInfo(logdir=logdir, ckpt=ckpt, configs=configs)


def run_config(path: str) -> tuple[DictConfig, str]:
    """(merged config, checkpoint path) of a run folder or of a `.ckpt` inside one, or of a folder in the original
    layout (config.yaml + model.ckpt)."""
    info = resolve_resume(path, inference=True)
    return load_configs(info.configs), info.ckpt


def run_logdir(ckpt: str) -> str:
    """The folder a run's checkpoint belongs to: <logdir> of <logdir>/checkpoints/x.ckpt, or the folder of an
    original-layout model.ckpt (next to its config.yaml)."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return folder if os.path.basename(folder) != "checkpoints" else os.path.dirname(folder)
