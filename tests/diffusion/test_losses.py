"""Training targets, l1/l2, the original L_simple / logvar / VLB mix, min-SNR weights and offset noise."""
import numpy as np
import pytest
import torch

from ldm.diffusion.losses import (DiffusionLoss, get_loss, lvlb_weights, make_logvar, min_snr_weights,
                                  register_lvlb_weights, training_target)
from ldm.diffusion.parameterization import q_sample
from ldm.diffusion.schedule import DiffusionSchedule, register_schedule


@pytest.fixture
def sched():
    return DiffusionSchedule.from_config("linear", 100, 1e-4, 0.05)


def test_get_loss():
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 1.0]])
    assert get_loss(a, b, "l1").item() == pytest.approx(2.0)
    assert get_loss(a, b, "l2").item() == pytest.approx(5.0)
    assert get_loss(a, b, "l2", mean=False).tolist() == [[1.0, 9.0]]
    with pytest.raises(ValueError, match="unknown loss_type 'huber'"):
        get_loss(a, b, "huber")


def test_lvlb_weights_original_formulas(sched):
    b = np.asarray(sched.betas)
    ac = np.asarray(sched.alphas_cumprod)
    pv = np.asarray(sched.posterior_variance)
    with np.errstate(divide="ignore"):  # posterior variance is 0 at t = 0
        eps = b ** 2 / (2 * pv * (1 - b) * (1 - ac))
    eps[0] = eps[1]
    np.testing.assert_allclose(np.asarray(lvlb_weights(sched, "eps")), eps, rtol=1e-12)
    x0 = 0.5 * np.sqrt(ac) / (2.0 - ac)
    x0[0] = x0[1]
    np.testing.assert_allclose(np.asarray(lvlb_weights(sched, "x0")), x0, rtol=1e-12)
    assert torch.equal(lvlb_weights(sched, "v"), torch.ones(100, dtype=torch.float64))
    module = torch.nn.Module()
    register_lvlb_weights(module, sched, "eps")
    assert module.lvlb_weights.dtype == torch.float32 and "lvlb_weights" not in module.state_dict()


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_perfect_prediction_has_zero_loss_and_targets(sched, name):
    x0, noise = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 5, 5)
    t = torch.tensor([0, 10, 50, 99])
    target = training_target(name, sched, x0, noise, t)
    expected = {"eps": noise, "x0": x0}.get(name)
    if name == "v":
        a = sched.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
        b = sched.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
        expected = a * noise - b * x0
    torch.testing.assert_close(target, expected)
    loss, logs = DiffusionLoss(name)(target.clone(), target, t, sched)
    assert loss.item() == 0.0
    assert set(logs) == {"train/loss_simple", "train/loss_vlb", "train/loss"}
    assert all(not v.requires_grad for v in logs.values())


def test_default_loss_is_mse_and_vlb_mix(sched):
    out = torch.randn(3, 2, 4, 4, requires_grad=True)
    target, t = torch.randn(3, 2, 4, 4), torch.tensor([1, 40, 80])
    loss, logs = DiffusionLoss("eps")(out, target, t, sched, prefix="val")
    mse = ((out - target) ** 2).mean()
    assert loss.item() == pytest.approx(mse.item(), rel=1e-6)
    per_sample = ((out - target) ** 2).mean(dim=(1, 2, 3))
    vlb = (lvlb_weights(sched, "eps")[t].float() * per_sample).mean()
    assert logs["val/loss_vlb"].item() == pytest.approx(vlb.item(), rel=1e-6)
    loss.backward()
    assert out.grad is not None
    mixed, _ = DiffusionLoss("eps", l_simple_weight=0.5, original_elbo_weight=2.0)(out, target, t, sched)
    assert mixed.item() == pytest.approx(0.5 * mse.item() + 2.0 * vlb.item(), rel=1e-6)


def test_learned_logvar(sched):
    logvar = make_logvar(100, logvar_init=0.0, learn_logvar=True)
    assert isinstance(logvar, torch.nn.Parameter)
    with torch.no_grad():
        logvar[40] = 1.0
        logvar[80] = -0.5
    out, target, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3), torch.tensor([40, 80])
    loss, logs = DiffusionLoss("eps", loss_type="l1")(out, target, t, sched, logvar=logvar)
    simple = (out - target).abs().mean(dim=(1, 2, 3))
    lv = torch.tensor([1.0, -0.5])
    assert loss.item() == pytest.approx((simple / lv.exp() + lv).mean().item(), rel=1e-6)
    assert {"train/loss_gamma", "logvar"} <= set(logs)
    loss.backward()
    assert logvar.grad[40] != 0 and logvar.grad[0] == 0
    fixed = make_logvar(100)
    assert not isinstance(fixed, torch.nn.Parameter) and torch.equal(fixed, torch.zeros(100))


def test_min_snr_weights_values(sched):
    snr = torch.tensor([0.5, 5.0, 20.0, 0.0])
    assert min_snr_weights(snr, 5.0, "x0").tolist() == pytest.approx([0.5, 5.0, 5.0, 0.0])
    assert min_snr_weights(snr, 5.0, "eps").tolist() == pytest.approx([1.0, 1.0, 0.25, 1.0])
    assert min_snr_weights(snr, 5.0, "v").tolist() == pytest.approx([0.5 / 1.5, 5 / 6, 5 / 21, 0.0])
    # inside the loss: per-sample weighting at each t
    out, target, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3), torch.tensor([2, 90])
    loss, _ = DiffusionLoss("eps", min_snr_gamma=5.0)(out, target, t, sched)
    s = sched.snr[t]
    w = torch.minimum(s, torch.full_like(s, 5.0)) / s
    per_sample = ((out - target) ** 2).mean(dim=(1, 2, 3))
    assert loss.item() == pytest.approx((w.float() * per_sample).mean().item(), rel=1e-5)
    assert w[0] < 1 and w[1] == pytest.approx(1.0)


def test_zero_terminal_snr_with_vlb_weight_zero_stays_finite():
    sched = DiffusionSchedule.from_config("linear", 50, 1e-3, 0.1, zero_terminal_snr=True)
    out, target, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3), torch.tensor([10, 49])
    loss, _ = DiffusionLoss("v", min_snr_gamma=5.0)(out, target, t, sched)
    assert torch.isfinite(loss)
    loss, _ = DiffusionLoss("eps", min_snr_gamma=5.0)(out, target, t, sched)
    assert torch.isfinite(loss)


def test_offset_noise_shape_and_statistics():
    x = torch.zeros(64, 4, 16, 16)
    plain = DiffusionLoss(offset_noise_strength=0.0).noise(x)
    assert plain.shape == x.shape
    noisy = DiffusionLoss(offset_noise_strength=1.0).noise(x)
    assert noisy.shape == x.shape
    # the per-(sample, channel) spatial mean carries the offset: variance ~ strength^2 + 1/(H W)
    channel_means = noisy.mean(dim=(2, 3))
    assert channel_means.var().item() == pytest.approx(1.0 + 1 / 256, rel=0.2)
    assert plain.mean(dim=(2, 3)).var().item() < 0.01


def test_p_losses_with_module_buffers(sched):
    module = torch.nn.Module()
    register_schedule(module, sched)
    x0, t = torch.randn(2, 1, 4, 4), torch.tensor([3, 60])
    noise = torch.randn_like(x0)
    oracle = lambda x_t, tt, c: noise  # noqa: E731 - a perfect eps model
    loss, logs = DiffusionLoss("eps").p_losses(oracle, module, x0, t, noise=noise)
    assert loss.item() == 0.0
    seen = {}
    DiffusionLoss("x0").p_losses(lambda x_t, tt, c: seen.setdefault("x_t", x_t), module, x0, t, noise=noise)
    torch.testing.assert_close(seen["x_t"], q_sample(sched, x0, t, noise))


def test_loss_has_no_host_syncs(sched):
    """On the meta device any .item()/bool()/tolist() would raise, so this proves the step stays asynchronous."""
    module = torch.nn.Module()
    register_schedule(module, sched)
    register_lvlb_weights(module, sched, "v")
    module = module.to("meta")
    logvar = torch.nn.Parameter(make_logvar(100).to("meta"))
    x0, t = torch.randn(4, 3, 8, 8, device="meta"), torch.randint(0, 100, (4,), device="meta")
    loss_fn = DiffusionLoss("v", min_snr_gamma=5.0, original_elbo_weight=0.1, offset_noise_strength=0.1)
    for schedule in (module, sched):  # device buffers, or the float64 CPU schedule gathered onto the device
        loss, logs = loss_fn.p_losses(lambda x, tt, c: 2 * x, schedule, x0, t, logvar=logvar)
        assert loss.device.type == "meta" and loss.shape == ()
        assert all(v.device.type == "meta" for v in logs.values())
