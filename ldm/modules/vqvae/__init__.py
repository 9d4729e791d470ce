"""Vector quantization: the VQ bottleneck of VQModel (`quantize.VectorQuantizer`, alias `VectorQuantizer2`)."""

from ldm.modules.vqvae.quantize import VectorQuantizer, VectorQuantizer2

__all__ = ["VectorQuantizer", "VectorQuantizer2"]
