"""Parameterization objects and loss weightings: consistent across eps / x0 / v, pluggable into DiffusionLoss."""
import pytest
import torch

from ldm.diffusion.losses import DiffusionLoss
from ldm.diffusion.parameterization import (PARAMETERIZATIONS, EpsPrediction, VPrediction, get_parameterization,
                                            q_sample)
from ldm.diffusion.schedule import DiffusionSchedule
from ldm.diffusion.weighting import LossWeighting, MinSNRWeighting, UnitWeighting, snr_at


@pytest.fixture
def sched():
    return DiffusionSchedule.from_config("linear", 100, 1e-4, 0.05)


def test_registry_and_errors():
    assert PARAMETERIZATIONS == ("eps", "x0", "v")
    assert isinstance(get_parameterization("v"), VPrediction)
    eps = EpsPrediction()
    assert get_parameterization(eps) is eps
    with pytest.raises(ValueError, match="unknown parameterization 'score'"):
        get_parameterization("score")
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        MinSNRWeighting(0.0)


@pytest.mark.parametrize("soft", [False, True])
def test_a_weighting_means_the_same_in_every_parameterization(sched, soft):
    """The weighted error of a prediction is the same number whichever of eps / x0 / v the network predicts."""
    torch.manual_seed(0)
    x0, eps = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randn(6, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 10, 30, 50, 80, 99])
    x_t = q_sample(sched, x0, t, eps)
    a = sched.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    b = sched.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = eps + 0.1 * torch.randn_like(eps)  # one imperfect prediction, expressed in each parameterization
    _, x0_hat = EpsPrediction().to_eps_x0(x_t, eps_hat, a, b)
    weighting = MinSNRWeighting(5.0, soft=soft)
    scored = []
    for name in PARAMETERIZATIONS:
        p = get_parameterization(name)
        out, target = p.target(x0_hat, eps_hat, a, b), p.target(x0, eps, a, b)
        error = ((out - target) ** 2).mean(dim=(1, 2, 3))
        scored.append(weighting(t, sched, p, torch.float64) * error)
    torch.testing.assert_close(scored[1], scored[0])
    torch.testing.assert_close(scored[2], scored[0])


def test_soft_min_snr_is_a_smooth_minimum(sched):
    t = torch.arange(100)
    snr = snr_at(sched, t, torch.float64)
    hard = MinSNRWeighting(5.0)(t, sched, get_parameterization("x0"), torch.float64)
    soft = MinSNRWeighting(5.0, soft=True)(t, sched, get_parameterization("x0"), torch.float64)
    torch.testing.assert_close(hard, snr.clamp(max=5.0))
    torch.testing.assert_close(soft, snr * 5.0 / (snr + 5.0))
    assert bool((soft <= hard + 1e-12).all())  # below the hard minimum, and close to it far from gamma
    ratio = soft / hard  # SNR runs from 1e4 (t = 0) down to 0.2 here
    assert float(ratio[0]) > 0.999 and float(ratio[-1]) > 0.95 and float(ratio[snr.sub(5.0).abs().argmin()]) < 0.55


def test_a_custom_weighting_plugs_into_the_loss(sched):
    class Double(LossWeighting):
        def __call__(self, t, schedule, parameterization, dtype=torch.float32):
            return torch.full(t.shape, 2.0, dtype=dtype)

    out, target, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([3, 40, 90])
    plain, _ = DiffusionLoss("eps", weighting=UnitWeighting())(out, target, t, sched)
    doubled, logs = DiffusionLoss("eps", weighting=Double())(out, target, t, sched)
    torch.testing.assert_close(doubled, 2 * plain)
    assert torch.equal(logs["train/loss_simple"], plain.detach())  # the log keeps the unweighted L_simple
    with pytest.raises(ValueError, match="either a weighting or min_snr_gamma"):
        DiffusionLoss("eps", min_snr_gamma=5.0, weighting=Double())
