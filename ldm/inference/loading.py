"""Where a model comes from (a main.py run folder, or config files + a checkpoint) and loading it for inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ldm.inference.errors import UsageError
from ldm.trainer.runs import load_inference_model, run_config
from ldm.util import load_configs


@dataclass(frozen=True)
class ModelSource:
    """A model to load: its merged config, the checkpoint file, and the run folder (None for --config/--ckpt)."""

    config: DictConfig
    ckpt: str
    logdir: str | None = None


def resolve_source(resume: str | None = None, config: Sequence[str] | str | None = None,
                   ckpt: str | None = None) -> ModelSource:
    """Check and resolve `-r <run folder or .ckpt inside it>` (optionally with `--ckpt` picking another checkpoint)
    or `--config <yaml> [...] --ckpt <file>`; reads only the configs (UsageError for missing pieces)."""
    configs = [config] if isinstance(config, str) else list(config or [])
    if resume and configs:
        raise UsageError("-r/--resume and --config are alternatives: a run folder brings its own configs")
    if ckpt and not os.path.isfile(ckpt):
        raise UsageError(f"--ckpt: checkpoint file not found: {ckpt}")
    if resume:
        merged, run_ckpt = run_config(resume)  # UsageError naming -r for a bad run folder
        logdir = os.path.dirname(os.path.dirname(run_ckpt))
        return ModelSource(merged, os.path.abspath(ckpt) if ckpt else run_ckpt, logdir)
    if not configs:
        raise UsageError("no model given: pass -r <run folder> (a main.py log dir) or --config <yaml> --ckpt <file>")
    if not ckpt:
        raise UsageError("--config needs --ckpt <checkpoint file> (the weights to load)")
    for path in configs:
        if not os.path.isfile(path):
            raise UsageError(f"--config: file not found: {path}")
    return ModelSource(load_configs(configs), os.path.abspath(ckpt))


def load_model(source: ModelSource, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model without its training losses, load the checkpoint (weights_only), move it, eval mode
    (`ldm.trainer.runs.load_inference_model`)."""
    return load_inference_model(source.config, source.ckpt, device)
