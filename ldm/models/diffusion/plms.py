"""CompVis `PLMSSampler` (`ldm.models.diffusion.plms`) as a thin adapter over our "plms" sampler.

Same interface as `ldm.models.diffusion.ddim.DDIMSampler` (whose translation it reuses); as the original, eta must be
0 (`make_schedule` raises otherwise) and `temperature` other than 1 is refused. `stochastic_encode` / `decode`
(img2img) come with the DDIM adapter and run PLMS steps here.
"""

from __future__ import annotations

from typing import Any

from ldm.models.diffusion.ddim import DDIMSampler, refuse_unsupported


class PLMSSampler(DDIMSampler):
    """The original `PLMSSampler(model, schedule="linear")`: `make_schedule` and `sample`, over our PLMS."""

    sampler_name = "plms"

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """As DDIMSampler.make_schedule; PLMS is deterministic, so ddim_eta must be 0 (the original raises too)."""
        if ddim_eta != 0:
            raise ValueError(f"ddim_eta must be 0 for PLMS, got {ddim_eta}")
        super().make_schedule(ddim_num_steps, ddim_discretize, ddim_eta, verbose)

    def _options(self, temperature: float) -> dict[str, Any]:
        refuse_unsupported(type(self).__name__, temperature=temperature)
        return {}
