"""Install ldm as a package (`pip install -e .`)."""
from setuptools import find_packages, setup

setup(
    name="ldm",
    version="0.1.0",
    description="Two-stage latent diffusion: perceptual autoencoders and latent DDPMs on modern PyTorch/Lightning",
    packages=find_packages(include=["ldm", "ldm.*"]),
    py_modules=["main"],
    python_requires=">=3.10",
    install_requires=[
        line.strip() for line in open("requirements.txt") if line.strip() and not line.startswith("#")
    ],
)
