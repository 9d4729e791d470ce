import math

import pytest
import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2


def test_warmup_cosine_endpoints():
    s = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert s(1000) == pytest.approx(0.1)


def test_ldm_linear_schedule_config_values():
    # The LDM configs: warm-up of 10k steps from 1e-6 to 1, then constant (f_min == f_max, huge cycle).
    s = LambdaLinearScheduler(warm_up_steps=[10000], f_min=[1.0], f_max=[1.0], f_start=[1e-6],
                              cycle_lengths=[10000000000000])
    assert s(0) == pytest.approx(1e-6)
    assert s(5000) == pytest.approx(0.5, rel=1e-4)
    assert s(20000) == pytest.approx(1.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=s.schedule)
    for _ in range(5000):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0, rel=1e-3)


def test_cycles_and_validation():
    s = LambdaWarmUpCosineScheduler2(warm_up_steps=[0, 0], f_min=[0.0, 0.0], f_max=[1.0, 0.5], f_start=[0.0, 0.0],
                                     cycle_lengths=[10, 10])
    assert s(0) == pytest.approx(1.0)
    assert s(15) < 0.5
    with pytest.raises(ValueError, match="equal length"):
        LambdaWarmUpCosineScheduler2([1], [0.0], [1.0], [0.0], [10, 20])
