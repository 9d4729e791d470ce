"""The CompVis helpers of ldm.modules.diffusionmodules.util that the original samplers and scripts import, checked
against the original formulas (written out below as numpy)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldm.diffusion.schedule import make_beta_schedule
from ldm.modules.diffusionmodules import util


def original_uniform(steps, T):
    """range(0, T, T // steps) + 1."""
    return np.asarray(list(range(0, T, T // steps))) + 1


def original_quad(steps, T):
    """floor(linspace(0, sqrt(0.8 T), steps) ** 2) + 1."""
    return ((np.linspace(0, np.sqrt(T * 0.8), steps)) ** 2).astype(int) + 1


@pytest.mark.parametrize("steps,T", [(50, 1000), (200, 1000), (7, 1000), (3, 20), (10, 100)])
def test_make_ddim_timesteps_matches_the_original(steps, T):
    np.testing.assert_array_equal(util.make_ddim_timesteps("uniform", steps, T, verbose=False),
                                  original_uniform(steps, T))
    np.testing.assert_array_equal(util.make_ddim_timesteps("quad", steps, T, verbose=False), original_quad(steps, T))


def test_make_ddim_timesteps_rejects_unknown_method():
    with pytest.raises(NotImplementedError, match="cubic"):
        util.make_ddim_timesteps("cubic", 10, 1000, verbose=False)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_make_ddim_sampling_parameters_matches_the_original(eta, steps):
    alphacums = torch.cumprod(1 - make_beta_schedule("linear", 1000, 0.00085, 0.012), 0)
    ts = original_uniform(steps, 1000)
    sigmas, alphas, alphas_prev = util.make_ddim_sampling_parameters(alphacums, ts, eta, verbose=False)
    a = alphacums.numpy()
    want_alphas = a[ts]
    want_prev = np.asarray([a[0]] + a[ts[:-1]].tolist())
    want_sigmas = eta * np.sqrt((1 - want_prev) / (1 - want_alphas) * (1 - want_alphas / want_prev))
    np.testing.assert_allclose(alphas.numpy(), want_alphas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(alphas_prev.numpy(), want_prev, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigmas.numpy(), want_sigmas, rtol=0, atol=1e-12)


def test_make_ddim_sampling_parameters_checks_indices():
    with pytest.raises(ValueError, match="indices into alphacums"):
        util.make_ddim_sampling_parameters(torch.rand(10), np.array([1, 10]), 0.0, verbose=False)


def test_noise_like():
    assert util.noise_like((3, 2, 4), "cpu").shape == (3, 2, 4)
    repeated = util.noise_like((3, 2, 4), "cpu", repeat=True)
    assert repeated.shape == (3, 2, 4) and torch.equal(repeated[0], repeated[2])


def test_original_names_exist_and_stay_lazy():
    for name in ("make_beta_schedule", "extract_into_tensor", "make_ddim_timesteps", "make_ddim_sampling_parameters",
                 "noise_like", "checkpoint", "timestep_embedding", "zero_module", "scale_module", "mean_flat",
                 "normalization", "conv_nd", "linear", "avg_pool_nd", "GroupNorm32", "SiLU"):
        assert callable(getattr(util, name)), name
    code = ("import sys, ldm.modules.diffusionmodules.util as u; "
            "assert 'ldm.diffusion' not in sys.modules, 'util imports the diffusion maths at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)
