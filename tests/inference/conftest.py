"""Tiny in-process diffusion models for the inference tests (configs from tests/models/diffusion/diffusion_configs)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "diffusion"))

import diffusion_configs as dc  # noqa: E402

from ldm.inference.model_info import describe_model  # noqa: E402
from ldm.modules.ema import LitEma  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(single_thread):
    """Every test here runs on one thread (tests/conftest.py)."""
    yield


def build(cond):
    """(model in eval mode, its ModelInfo) for a tiny LatentDiffusion: 16 px, f = 2, 8x8x4 latents, 100 steps.

    The UNet's zero-initialised layers get small random weights (and the EMA restarts from them), so its output
    depends on x, t and the conditioning as a trained model's would.
    """
    config = dc.ldm_config(cond)
    torch.manual_seed(0)
    model = instantiate_from_config(config).eval()
    with torch.no_grad():
        for param in model.model.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    model.model_ema = LitEma(model.model)
    return model, describe_model({"model": config})


@pytest.fixture(scope="session")
def class_model():
    """Class-conditional (10 classes + a null class) tiny model and its info."""
    return build("class")


@pytest.fixture(scope="session")
def uncond_model():
    """Unconditional tiny model and its info."""
    return build("none")


@pytest.fixture
def images():
    """Two 16 px RGB images in [-1, 1], (2, 3, 16, 16)."""
    return dc.batch(n=2, size=16)["image"].permute(0, 3, 1, 2).contiguous()
