"""Timestep selection and shared input checks of the samplers."""
import pytest
import torch

from ldm.diffusion.samplers.denoising import check_inputs, restore_known
from ldm.diffusion.samplers.timesteps import check_timesteps, make_timesteps, select_timesteps, step_alphas
from ldm.diffusion.schedule import DiffusionSchedule


def test_uniform_has_original_offset():
    ts = make_timesteps("uniform", 50, 1000)
    assert ts == list(range(1, 1000, 20))
    assert len(make_timesteps("uniform", 300, 1000)) == 334  # T // steps stride, as the original
    assert make_timesteps("uniform", 50, 50) == list(range(50))  # offset would leave the range
    assert make_timesteps("uniform", 10, 100, offset=0) == list(range(0, 100, 10))


def test_quad_and_trailing():
    quad = make_timesteps("quad", 50, 1000)
    assert len(quad) == 50 and quad[0] == 1 and quad[-1] == 801  # floor(sqrt(800)^2) + 1
    trailing = make_timesteps("trailing", 50, 1000)
    assert len(trailing) == 50 and trailing[-1] == 999 and trailing[0] == 19
    assert make_timesteps("trailing", 3, 1000) == [332, 666, 999]


def test_bad_steps_and_spacing():
    with pytest.raises(ValueError, match="unknown timestep spacing 'cubic'"):
        make_timesteps("cubic", 10, 100)
    with pytest.raises(ValueError, match="steps must be an int"):
        make_timesteps("uniform", 101, 100)
    with pytest.raises(ValueError, match="ascending"):
        check_timesteps([5, 3], 10)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        check_timesteps([5, 10], 10)


def test_step_alphas_prev_rule():
    sched = DiffusionSchedule.from_config("linear", 100, 1e-4, 0.05)
    abar, prev = step_alphas(sched, [1, 21, 41])
    assert prev[0] == sched.alphas_cumprod[0] and prev[1] == sched.alphas_cumprod[1] and prev[2] == abar[1]
    _, prev0 = step_alphas(sched, [0, 50])
    assert prev0[0].item() == 1.0


def test_check_inputs():
    x = torch.randn(2, 3, 4, 4)
    assert check_inputs(x, None, None) == (None, None)
    with pytest.raises(ValueError, match="x0"):
        check_inputs(x, torch.ones(2, 1, 4, 4), None)
    with pytest.raises(ValueError, match="mask shape"):
        check_inputs(x, torch.ones(2, 1, 5, 4), torch.zeros_like(x))
    with pytest.raises(TypeError, match="floating-point"):
        check_inputs(torch.zeros(2, dtype=torch.long), None, None)


def test_select_timesteps_and_restore_known():
    assert select_timesteps(1000, None, offset=0) == list(range(1000))  # steps None: all T (ddpm)
    assert select_timesteps(1000, 50) == make_timesteps("uniform", 50, 1000)
    assert select_timesteps(1000, 50, "trailing", timesteps=[3, 7]) == [3, 7]  # explicit indices win
    with pytest.raises(ValueError, match="ascending"):
        select_timesteps(1000, None, timesteps=[7, 3])
    x, x0 = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert restore_known(x, None, None) is x
    assert torch.equal(restore_known(x, mask, x0), mask)
