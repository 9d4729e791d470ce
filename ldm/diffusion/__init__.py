"""Diffusion maths with no Lightning and no networks: schedules, the eps/x0/v conversion layer, losses, guidance,
and samplers (`ldm.diffusion.samplers`)."""

from ldm.diffusion.guidance import ClassifierFreeGuidance, concat_conditioning, drop_conditioning, guided_model_fn
from ldm.diffusion.losses import DiffusionLoss, get_loss, lvlb_weights, make_logvar, min_snr_weights, training_target
from ldm.diffusion.parameterization import PARAMETERIZATIONS, Denoiser, q_posterior, q_sample
from ldm.diffusion.samplers import available_samplers, get_sampler, register_sampler
from ldm.diffusion.schedule import (DiffusionSchedule, extract_into_tensor, make_beta_schedule, register_schedule,
                                    rescale_zero_terminal_snr)

__all__ = [
    "PARAMETERIZATIONS", "ClassifierFreeGuidance", "Denoiser", "DiffusionLoss", "DiffusionSchedule",
    "available_samplers", "concat_conditioning", "drop_conditioning", "extract_into_tensor", "get_loss",
    "get_sampler", "guided_model_fn", "lvlb_weights", "make_beta_schedule", "make_logvar", "min_snr_weights",
    "q_posterior", "q_sample", "register_sampler", "register_schedule", "rescale_zero_terminal_snr",
    "training_target",
]
