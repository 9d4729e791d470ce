"""ldm: two-stage latent diffusion (perceptual autoencoder + latent DDPM) on modern PyTorch and Lightning."""
__version__ = "0.1.0"
