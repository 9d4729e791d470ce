"""Where a model comes from (a main.py run folder, or config files + a checkpoint) and loading it for inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.errors import UsageError
from ldm.models.from_run import load_inference_model
from ldm.run_folder import run_config, run_logdir
from ldm.util import load_configs


@dataclass(frozen=True)
class ModelSource:
    """A model to load: its merged config, the checkpoint file, and the run folder (None for --config/--ckpt)."""

    config: DictConfig
    ckpt: str
    logdir: str | None = None


def resolve_source(resume: str | None = None, config: Sequence[str] | str | None = None,
                   ckpt: str | None = None, from_diffusers: str | None = None) -> ModelSource:
    """Check and resolve `-r <run folder or .ckpt inside it>` (optionally with `--ckpt` picking another checkpoint),
    `--config <yaml> [...] --ckpt <file>`, or `--from-diffusers <folder>`; reads only the configs (UsageError for
    missing pieces)."""
    configs = [config] if isinstance(config, str) else list(config or [])
    if from_diffusers:
        if resume or configs or ckpt:
            raise UsageError("--from-diffusers brings its own config and weights: drop -r/--config/--ckpt")
        return _diffusers_source(from_diffusers)
    if resume and configs:
        raise UsageError("-r/--resume and --config are alternatives: a run folder brings its own configs")
    if ckpt and not os.path.isfile(ckpt):
        raise UsageError(f"--ckpt: checkpoint file not found: {ckpt}")
    if resume:
        merged, run_ckpt = run_config(resume)  # UsageError naming -r for a bad run folder
        logdir = run_logdir(run_ckpt)  # <logdir>/checkpoints/x.ckpt, or an original-layout folder
        return ModelSource(merged, os.path.abspath(ckpt) if ckpt else run_ckpt, logdir)
    if not configs:
        raise UsageError("no model given: pass -r <run folder> (a main.py log dir) or --config <yaml> --ckpt <file>")
    if not ckpt:
        raise UsageError("--config needs --ckpt <checkpoint file> (the weights to load)")
    for path in configs:
        if not os.path.isfile(path):
            raise UsageError(f"--config: file not found: {path}")
    return ModelSource(load_configs(configs), os.path.abspath(ckpt))


def _diffusers_source(folder: str) -> ModelSource:
    """A diffusers folder as a model source: our config built from its JSON files; the weights are converted when
    the model loads (`restore_weights` reads diffusers folders)."""
    from ldm.interop.diffusers import diffusers_model_config, is_diffusers_path
    from ldm.interop.diffusers_keys import KeyMapError

    if not os.path.isdir(folder) or not is_diffusers_path(folder):
        raise UsageError(f"--from-diffusers: {folder} is not a diffusers folder (no model_index.json or unet/)")
    try:
        model = diffusers_model_config(folder)
    except KeyMapError as err:
        raise UsageError(f"--from-diffusers: {err}") from err
    # the folder holds one set of weights: an EMA copy of them would only double the UNet's memory here
    model["params"]["use_ema"] = False
    return ModelSource(OmegaConf.create({"model": model}), os.path.abspath(folder))


def load_model(source: ModelSource, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model without its training losses, load the checkpoint (weights_only), move it, eval mode
    (`ldm.models.from_run.load_inference_model`)."""
    return load_inference_model(source.config, source.ckpt, device)
