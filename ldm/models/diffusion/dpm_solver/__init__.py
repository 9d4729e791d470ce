"""CompVis/stable-diffusion's `ldm.models.diffusion.dpm_solver`: `DPMSolverSampler` over our DPM-Solver++(2M)."""

from ldm.models.diffusion.dpm_solver.sampler import DPMSolverSampler

__all__ = ["DPMSolverSampler"]
