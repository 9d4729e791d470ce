"""`DPMSolverSampler` of CompVis/stable-diffusion as a thin adapter over our "dpmpp_2m" sampler.

The original runs DPM-Solver++ (data prediction), multistep, order 2, with time-uniform steps from t = 1 and a
first-order last step. Ours is the same method (`ldm.diffusion.samplers.dpm_solver.sample_dpmpp_2m`) on the DDPM
indices round(linspace(T - 1, 0, S)) (`spacing="linspace"`, the discrete twin of time-uniform) ending at sigma = 0,
so results are close to, not bit-identical with, the original's continuous-time interpolation.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.diffusion.samplers import get_sampler
from ldm.models.diffusion.ddim import OriginalSampleCall, OriginalSampler, refuse_unsupported

# The timestep grid standing in for the original's "time_uniform" skip type.
DPM_SOLVER_SPACING = "linspace"


class DPMSolverSampler(OriginalSampler):
    """The original `DPMSolverSampler(model)`: `sample(S, batch_size, shape, conditioning, ...) -> (samples, None)`."""

    sampler_name = "dpmpp_2m"

    def __init__(self, model: torch.nn.Module, **kwargs: Any):
        self.model = model
        self.alphas_cumprod = model.alphas_cumprod.detach().clone().float()

    def _sample(self, call: OriginalSampleCall) -> tuple[torch.Tensor, None]:
        """S solver steps; returns (samples, None). eta must be 0 (the solver is deterministic). Unlike the original,
        callback / img_callback and mask / x0 are honoured; other keyword arguments go to our sampler (e.g. spacing)."""
        refuse_unsupported(type(self).__name__, temperature=call.temperature)
        options = {"spacing": DPM_SOLVER_SPACING, **call.options}
        samples = get_sampler(self.sampler_name)(self.model.model_fn(), self.model.sampling_schedule(), call.x_T,
                                                 call.steps, cond=call.cond, uncond=call.uncond,
                                                 guidance_scale=call.scale, eta=call.eta, mask=call.mask, x0=call.x0,
                                                 callback=call.callback, parameterization=self.model.parameterization,
                                                 **options)
        return samples, None
