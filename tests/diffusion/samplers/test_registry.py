"""The sampler registry."""
import inspect

import pytest

from ldm.diffusion.samplers import available_samplers, get_sampler, register_sampler, sample_ddim, sample_ddpm

SHARED = ["model_fn", "schedule", "x_T", "steps", "cond", "uncond", "guidance_scale", "eta", "mask", "x0",
          "callback", "generator", "parameterization"]


def test_registry_lookup_and_errors():
    assert {"ddim", "ddpm"} <= set(available_samplers())
    assert get_sampler("ddim") is sample_ddim and get_sampler("ddpm") is sample_ddpm
    with pytest.raises(ValueError, match="unknown sampler 'nope'; available: .*ddim"):
        get_sampler("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("ddim")(lambda *a, **k: None)


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_shared_signature(name):
    params = list(inspect.signature(get_sampler(name)).parameters)
    assert params[:len(SHARED)] == SHARED
