"""Tests for `model.params.compile`: which networks DDPM / LatentDiffusion hand to the regional compiler at fit start."""
import diffusion_configs as dc
import pytest

from ldm.models.diffusion import denoising_diffusion
from ldm.util import instantiate_from_config


@pytest.fixture
def compiled(monkeypatch):
    """Record the compile_or_warn calls made by the model instead of compiling (the real compile is tested in
    tests/modules/test_compile.py)."""
    calls = []
    monkeypatch.setattr(denoising_diffusion, "compile_or_warn",
                        lambda net, device, what: calls.append((net, str(device), what)))
    return calls


def test_compile_true_compiles_the_unet_of_a_ddpm(compiled):
    model = instantiate_from_config(dc.ddpm_config(compile=True))
    model.on_fit_start()
    assert compiled == [(model.model.diffusion_model, "cpu", "the U-Net")]


def test_compile_true_also_compiles_the_first_stage_of_a_latent_diffusion(compiled):
    model = instantiate_from_config(dc.ldm_config(compile=True))
    model.on_fit_start()
    assert [(net, what) for net, _, what in compiled] == [(model.model.diffusion_model, "the U-Net"),
                                                         (model.first_stage_model, "the first stage")]


def test_compile_is_off_by_default(compiled):
    model = instantiate_from_config(dc.ldm_config())
    model.on_fit_start()
    assert compiled == [] and model.compile_blocks is False
