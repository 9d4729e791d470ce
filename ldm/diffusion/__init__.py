"""Diffusion maths with no Lightning and no networks: schedules, the eps/x0/v conversion layer, losses, guidance,
and samplers (`ldm.diffusion.samplers`).

Names load on first use (module-level __getattr__), so importing a submodule that needs no torch (the sampler
registry) does not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(["ClassifierFreeGuidance", "concat_conditioning", "drop_conditioning", "guided_model_fn"],
                    "ldm.diffusion.guidance"),
    **dict.fromkeys(["DiffusionLoss", "get_loss", "lvlb_weights", "make_logvar", "min_snr_weights",
                     "training_target"], "ldm.diffusion.losses"),
    **dict.fromkeys(["PARAMETERIZATIONS", "Denoiser", "q_posterior", "q_sample"], "ldm.diffusion.parameterization"),
    **dict.fromkeys(["available_samplers", "get_sampler", "register_sampler"], "ldm.diffusion.samplers.registry"),
    **dict.fromkeys(["DiffusionSchedule", "extract_into_tensor", "make_beta_schedule", "register_schedule",
                     "rescale_zero_terminal_snr"], "ldm.diffusion.schedule"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
