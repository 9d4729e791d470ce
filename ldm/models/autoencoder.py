"""CompVis module path for the first-stage models; the implementations live in `ldm.models.autoencoders`."""

from ldm.models.autoencoders.adversarial import AdversarialAutoencoder
from ldm.models.autoencoders.identity import IdentityFirstStage
from ldm.models.autoencoders.kl import AutoencoderKL
from ldm.models.autoencoders.vq import VQModel, VQModelInterface

__all__ = ["AdversarialAutoencoder", "AutoencoderKL", "IdentityFirstStage", "VQModel", "VQModelInterface"]
