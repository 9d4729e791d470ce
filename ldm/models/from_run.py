"""Load a trained model from a `main.py` run folder (its saved configs + a checkpoint) for evaluation and sampling,
with its training losses replaced by an identity (no discriminator or LPIPS weights needed)."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.run_folder import run_config
from ldm.util import instantiate_from_config

log = logging.getLogger(__name__)

INFERENCE_LOSS = {"target": "torch.nn.Identity"}


# Sub-models whose configs may carry their own training loss (CompVis first stages name LPIPSWithDiscriminator or
# DummyLoss there); the inference rewrite reaches into these.
NESTED_MODEL_CONFIGS = ("first_stage_config", "cond_stage_config")


def _drop_loss(params: DictConfig) -> None:
    if "lossconfig" in params:
        params.lossconfig = INFERENCE_LOSS


def inference_model_config(model_cfg: DictConfig) -> DictConfig:
    """A model config for inference: no training losses (no LPIPS/discriminator) at the top level or in the first /
    cond stage configs, and the weights come from the run's ckpt (no ckpt_path)."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    params = cfg.get("params", {})
    _drop_loss(params)
    for key in ("ckpt_path",):
        if key in params:
            params[key] = None
    for name in NESTED_MODEL_CONFIGS:
        nested = params.get(name)
        if isinstance(nested, DictConfig) and isinstance(nested.get("params"), DictConfig):
            _drop_loss(nested.params)
    first_stage = params.get("first_stage_config")
    if isinstance(first_stage, DictConfig) and "params" in first_stage:
        first_stage.params.ckpt_path = None  # the run's checkpoint already holds first_stage_model.*
    return cfg


def load_inference_model(config: DictConfig, ckpt: str, device: str | torch.device = "cpu",
                         eval_mode: bool = True) -> torch.nn.Module:
    """Instantiate `config.model` without training losses (`inference_model_config`), load `ckpt` into it
    (weights_only), move it to `device` and, with `eval_mode`, switch it to eval mode."""
    model = instantiate_from_config(inference_model_config(config.model))
    if not hasattr(model, "init_from_ckpt"):
        raise TypeError(f"{type(model).__name__} has no init_from_ckpt; cannot load {ckpt}")
    model.init_from_ckpt(ckpt)
    model = model.to(device)
    if eval_mode:
        model.eval()
    log.info("loaded %s from %s", type(model).__name__, ckpt)
    return model


def load_model_from_run(path: str, checkpoint: str | None = None, device: str | torch.device = "cpu",
                        eval_mode: bool = True):
    """Instantiate the run's model without training losses and load its weights (weights_only). Returns (model, cfg)."""
    config, ckpt = run_config(path)
    model = load_inference_model(config, ckpt if checkpoint is None else checkpoint, device, eval_mode)
    return model, config
