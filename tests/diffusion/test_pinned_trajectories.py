"""Every registered sampler's trajectories stay those pinned before the sampler refactor (issue 16): x after every
step, the callback's timesteps and the returned sample, within 1e-6 (bit-for-bit on the machine that made them).
The cases and the fixed network are in `pinned_trajectories.py`, which also regenerates the pins."""
import importlib.util
import os

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "pinned_trajectories", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinned_trajectories.py"))
pins_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pins_module)

ATOL = 1e-6


@pytest.fixture(scope="module")
def pins():
    return pins_module.load_pins()


def test_pins_cover_every_registered_sampler(pins):
    from ldm.diffusion.samplers import available_samplers

    pinned = {case.split("/")[0] for case in pins_module.CASES}
    assert pinned == set(available_samplers())
    assert set(pins) == {f"{case}/{key}" for case in pins_module.CASES for key in ("x", "t", "out")}


@pytest.mark.parametrize("case", list(pins_module.CASES))
def test_trajectory_matches_the_pin(pins, case):
    got = pins_module.run_case(case)
    for key, value in got.items():
        want = pins[f"{case}/{key}"]
        assert value.shape == want.shape, f"{case}/{key}: {len(value)} steps reported, {len(want)} pinned"
        torch.testing.assert_close(value, want, atol=ATOL, rtol=0, msg=lambda m, key=key: f"{case}/{key}: {m}")


def test_stochastic_cases_depend_on_the_generator(pins):
    """The pins of noisy samplers really pin the noise: another seed moves the sample."""
    sampler, opts = pins_module.CASES["euler_a/eps"]
    from ldm.diffusion.samplers import get_sampler

    x_T, steps, kw = pins_module.inputs(opts)
    other = get_sampler(sampler)(pins_module.pinned_model(), pins_module.schedule(), x_T, steps,
                                 generator=torch.Generator().manual_seed(7), **kw)
    assert (other - pins["euler_a/eps/out"]).abs().max().item() > 1e-3
