"""CompVis module path of the diffusion models: `ldm.models.diffusion.ddpm.{DDPM, LatentDiffusion, DiffusionWrapper}`.

Configs and scripts written for the original import these names from here; the implementations live in the sibling
modules (`base.py`: DDPM, `latent_diffusion.py`: LatentDiffusion, `wrapper.py`: DiffusionWrapper and the plain
`model_fn` for samplers, `first_stage.py`, `conditioning.py`, `image_logging.py`, `restore.py`).
"""

from ldm.models.diffusion.denoising_diffusion import DDPM
from ldm.models.diffusion.first_stage import disabled_train
from ldm.models.diffusion.inpainting import LatentInpaintDiffusion
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.models.diffusion.wrapper import DiffusionWrapper

# The original's map from conditioning_key to the UNet input it feeds.
__conditioning_keys__ = {"concat": "c_concat", "crossattn": "c_crossattn", "adm": "y"}

__all__ = ["DDPM", "DiffusionWrapper", "LatentDiffusion", "disabled_train"]
