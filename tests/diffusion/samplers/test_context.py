"""The split of a sampler into context and algorithm: a torch-free registry, custom samplers from a few lines over a
ready denoiser, and the public signature built from the algorithm's own options."""
import inspect
import math
import subprocess
import sys

import pytest
import torch

from ldm.diffusion.samplers import available_samplers, get_sampler, register_sampler, registry
from ldm.diffusion.samplers.signature import sigma_sampler, timestep_sampler


def test_registry_lists_names_without_importing_torch():
    code = ("import sys; import ldm.diffusion.samplers.registry as r; from ldm.diffusion.samplers import "
            "available_samplers; print(r.available_samplers() == available_samplers(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_custom_callable_registers_and_is_listed():
    def mine(model_fn, schedule, x_T, steps=None, **kw):
        return x_T

    try:
        assert register_sampler("mine_for_test")(mine) is mine
        assert get_sampler("mine_for_test") is mine and "mine_for_test" in available_samplers()
        register_sampler("mine_for_test")(mine)  # the same callable again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_sampler("mine_for_test")(lambda *a, **k: None)
    finally:
        registry._REGISTERED.pop("mine_for_test", None)
    assert "mine_for_test" not in available_samplers()


def test_a_timestep_algorithm_gets_the_context_for_free(small_schedule, make_gaussian_model):
    """DDIM at eta = 0 written over the ready denoiser equals the built-in, with guidance, mask and callbacks."""
    def my_ddim(denoise, x, grid, step, noise):
        for i, t in enumerate(grid.timesteps):
            eps, x0 = denoise(x, t)
            x = step(i, grid.abar_prev[i].sqrt().item() * x0 + (1 - grid.abar_prev[i]).sqrt().item() * eps, x0)
        return x

    mine = timestep_sampler("my_ddim", my_ddim, steps=10)
    model = make_gaussian_model(small_schedule, 0.5, 0.8)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    kw = dict(cond=None, mask=mask, x0=torch.randn(2, 1, 4, 4, dtype=torch.float64))
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    seen_mine, seen_ref = [], []
    out = mine(model, small_schedule, x_T, callback=lambda i, t, x, x0: seen_mine.append(t), **kw)
    ref = get_sampler("ddim")(model, small_schedule, x_T, 10, callback=lambda i, t, x, x0: seen_ref.append(t), **kw)
    torch.testing.assert_close(out, ref)
    assert seen_mine == seen_ref and torch.equal(out[..., :2], kw["x0"][..., :2])


def test_a_sigma_algorithm_and_its_signature(ldm_schedule, gaussian):
    """An Euler written over denoise(x, sigma) equals the built-in; its own options join the public signature."""
    def my_euler(denoise, x, sigmas, step, noise, *, gain=1.0):
        for i in range(len(sigmas) - 1):
            d = denoise(x, sigmas[i])
            x = step(i, x + gain * (sigmas[i + 1] - sigmas[i]) / sigmas[i] * (x - d), d)
        return x

    mine = sigma_sampler("my_euler", my_euler, steps=7)
    params = inspect.signature(mine).parameters
    assert params["steps"].default == 7 and params["gain"].default == 1.0 and params["spacing"].default == "karras"
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(mine(gaussian(ldm_schedule), ldm_schedule, x_T),
                               get_sampler("euler")(gaussian(ldm_schedule), ldm_schedule, x_T, 7))
    with pytest.raises(ValueError, match="my_euler is deterministic"):
        mine(gaussian(ldm_schedule), ldm_schedule, x_T, eta=0.3)
    with pytest.raises(TypeError, match=r"my_euler got unexpected option\(s\) \['gian'\]"):
        mine(gaussian(ldm_schedule), ldm_schedule, x_T, gian=2.0)


@pytest.mark.parametrize("name", ["ddim", "plms", "ddpm"])
def test_timestep_samplers_name_unknown_options_too(small_schedule, name):
    with pytest.raises(TypeError, match=f"{name} got unexpected option.*'rho'"):
        get_sampler(name)(lambda x, t, c: x, small_schedule, torch.randn(1, 1, 2, 2), 3, rho=7.0)


def test_ddim_clip_denoised_is_the_shared_thresholding(ldm_schedule, gaussian):
    """DDIM's original clip_denoised and the context's thresholding="clip" are one code path."""
    model = gaussian(ldm_schedule, mu=2.5)
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    ddim = get_sampler("ddim")
    clipped = ddim(model, ldm_schedule, x_T, 8, clip_denoised=True)
    assert torch.equal(clipped, ddim(model, ldm_schedule, x_T, 8, thresholding="clip"))
    assert not torch.equal(clipped, ddim(model, ldm_schedule, x_T, 8))
    assert math.isfinite(clipped.abs().max().item())
