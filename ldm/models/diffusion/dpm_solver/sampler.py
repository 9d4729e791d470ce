"""`DPMSolverSampler` of CompVis/stable-diffusion as a thin adapter over our "dpmpp_2m" sampler.

The original runs DPM-Solver++ (data prediction), multistep, order 2, with time-uniform steps from t = 1 and a
first-order last step. Ours is the same method (`ldm.diffusion.samplers.dpm_solver.sample_dpmpp_2m`) on the DDPM
indices round(linspace(T - 1, 0, S)) (`spacing="linspace"`, the discrete twin of time-uniform) ending at sigma = 0,
so results are close to, not bit-identical with, the original's continuous-time interpolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.diffusion.samplers import get_sampler
from ldm.models.diffusion.ddim import guidance, legacy_callback, refuse_unsupported, start_noise

# The timestep grid standing in for the original's "time_uniform" skip type.
DPM_SOLVER_SPACING = "linspace"


class DPMSolverSampler:
    """The original `DPMSolverSampler(model)`: `sample(S, batch_size, shape, conditioning, ...) -> (samples, None)`."""

    sampler_name = "dpmpp_2m"

    def __init__(self, model: torch.nn.Module, **kwargs: Any):
        self.model = model
        self.alphas_cumprod = model.alphas_cumprod.detach().clone().float()

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store `attr` as an attribute, tensors on the model's device (original helper)."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.model.betas.device)
        setattr(self, name, attr)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable | None = None, normals_sequence: Any = None, img_callback: Callable | None = None,
               quantize_x0: bool = False, eta: float = 0.0, mask: torch.Tensor | None = None,
               x0: torch.Tensor | None = None, temperature: float = 1.0, noise_dropout: float = 0.0,
               score_corrector: Any = None, corrector_kwargs: dict | None = None, verbose: bool = True,
               x_T: torch.Tensor | None = None, log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """S solver steps from x_T (or fresh noise) of shape (batch_size, *shape); returns (samples, None).

        eta must be 0 (the solver is deterministic). Unlike the original, callback / img_callback and mask / x0
        are honoured; other keyword arguments go to our sampler (e.g. spacing) and an unknown one raises TypeError.
        """
        refuse_unsupported(type(self).__name__, quantize_x0=quantize_x0, noise_dropout=noise_dropout,
                           score_corrector=score_corrector, temperature=temperature)
        x_T = start_noise(self.model, batch_size, shape, x_T)
        scale, uncond = guidance(unconditional_guidance_scale, unconditional_conditioning)
        kwargs.setdefault("spacing", DPM_SOLVER_SPACING)
        samples = get_sampler(self.sampler_name)(self.model.model_fn(), self.model.sampling_schedule(), x_T, int(S),
                                                 cond=conditioning, uncond=uncond, guidance_scale=scale, eta=eta,
                                                 mask=mask, x0=x0, callback=legacy_callback(callback, img_callback),
                                                 parameterization=self.model.parameterization, **kwargs)
        return samples, None
