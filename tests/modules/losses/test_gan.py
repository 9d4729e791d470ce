"""GAN losses, warm-up gate and the VQGAN adaptive weight (eq. 7)."""

import math

import pytest
import torch
from torch import nn

from ldm.modules.losses.gan import (ADAPTIVE_WEIGHT_MAX, DISC_LOSSES, AdversarialLoss, adaptive_weight, adopt_weight,
                                    hinge_d_loss, vanilla_d_loss)
from ldm.util import ConfigError

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.0])


def test_hinge_d_loss_known_values():
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    # a perfect discriminator (margins met) has zero hinge loss
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_vanilla_d_loss_known_values():
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * (sum(softplus(-r) for r in REAL.tolist()) / 3 + sum(softplus(f) for f in FAKE.tolist()) / 3)
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)
    assert vanilla_d_loss(torch.zeros(2), torch.zeros(2)).item() == pytest.approx(math.log(2.0))


def test_disc_loss_registry_and_bad_name():
    assert DISC_LOSSES == {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
    with pytest.raises(ConfigError, match="disc_loss"):
        AdversarialLoss(disc_start=0, disc_loss="wasserstein")


def test_adopt_weight_threshold():
    assert adopt_weight(0.7, 9, threshold=10) == 0.0
    assert adopt_weight(0.7, 10, threshold=10) == 0.7
    assert adopt_weight(0.7, 3, threshold=10, value=0.25) == 0.25
    assert adopt_weight(0.7, 0) == 0.7


def _tiny_decoder():
    """A linear 'decoder' out = z W^T whose weight W is the last layer, and two losses of its output."""
    torch.manual_seed(1)
    layer = nn.Linear(4, 3, bias=False)
    z = torch.randn(5, 4)
    target = torch.randn(5, 3)
    v = torch.randn(5, 3)
    out = layer(z)
    nll = ((out - target) ** 2).sum()
    g = -(out * v).mean()
    return layer, z, target, v, out, nll, g


def test_adaptive_weight_matches_hand_computation():
    layer, z, target, v, out, nll, g = _tiny_decoder()
    weight = adaptive_weight(nll, g, layer.weight, disc_weight=0.5)
    # analytic gradients at W: d/dW sum((zW^T - t)^2) = 2 (out - t)^T z ; d/dW -mean(zW^T * v) = -v^T z / numel
    grad_nll = 2 * (out.detach() - target).T @ z
    grad_g = -(v.T @ z) / v.numel()
    expected = grad_nll.norm() / (grad_g.norm() + 1e-4) * 0.5
    assert weight.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not weight.requires_grad and weight.grad_fn is None  # detached
    # graph retained: the caller can still backpropagate the total loss
    (nll + weight * g).backward()
    assert layer.weight.grad is not None


def test_adaptive_weight_is_clamped():
    layer, z, target, v, out, nll, _ = _tiny_decoder()
    g_flat = (out * 0.0).sum()  # zero gradient -> ratio ||grad nll|| / 1e-4 is huge
    weight = adaptive_weight(nll, g_flat, layer.weight, disc_weight=2.0)
    assert weight.item() == pytest.approx(ADAPTIVE_WEIGHT_MAX * 2.0)


def test_adaptive_weight_zero_without_last_layer_or_grad():
    layer, z, target, v, out, nll, g = _tiny_decoder()
    assert adaptive_weight(nll, g, None, 1.0).item() == 0.0
    with torch.no_grad():
        out = layer(z)
        nll_eval = ((out - target) ** 2).sum()
        g_eval = -(out * v).mean()
        assert adaptive_weight(nll_eval, g_eval, layer.weight, 1.0).item() == 0.0


def test_adversarial_loss_checks_condition_and_channels():
    loss = AdversarialLoss(disc_start=0, disc_in_channels=3)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="disc_conditional is false"):
        loss.logits(x, torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects 3 channels \(disc_in_channels\) but got 4"):
        loss.logits(torch.randn(2, 4, 32, 32), None)
    conditional = AdversarialLoss(disc_start=0, disc_in_channels=4, disc_conditional=True)
    with pytest.raises(ValueError, match="no `cond`"):
        conditional.logits(x, None)
    assert conditional.logits(x, torch.randn(2, 1, 32, 32)).shape == (2, 1, 2, 2)


def test_discriminator_step_gated_but_differentiable():
    loss = AdversarialLoss(disc_start=5)
    x, r = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32, requires_grad=True)
    d_loss, log = loss.discriminator_step(x, r, global_step=0, cond=None, split="train")
    assert d_loss.item() == 0.0 and d_loss.requires_grad  # multiplied by disc_factor 0, still backpropagates
    d_loss.backward()
    assert r.grad is None  # reconstructions are detached for the D step
    assert set(log) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}
    d_loss, _ = loss.discriminator_step(x, r, global_step=5, cond=None, split="train")
    assert d_loss.item() > 0.0
