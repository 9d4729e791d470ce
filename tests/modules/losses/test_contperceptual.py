"""KL-autoencoder loss: values against a stub posterior, disc_start gating, adaptive weight, logs, logvar policy."""

import pytest
import torch
from torch import nn

from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator
from ldm.modules.losses.gan import adaptive_weight

GEN_KEYS = {"total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "d_weight", "disc_factor", "g_loss"}
DISC_KEYS = {"disc_loss", "logits_real", "logits_fake"}


class StubPosterior:
    """Stands in for DiagonalGaussianDistribution: only `.kl()` (per-sample) is used by the loss."""

    def __init__(self, kl):
        self._kl = kl

    def kl(self):
        return self._kl


def _batch(seed=0):
    """Inputs, a 1x1-conv 'decoder' (its weight is the last layer) and its reconstructions, 32x32."""
    torch.manual_seed(seed)
    decoder = nn.Conv2d(4, 3, 1)
    z = torch.randn(2, 4, 32, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    return x, decoder, decoder(z)


def _counting(loss):
    calls = []
    loss.discriminator.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_generator_loss_before_disc_start_is_nll_plus_kl_and_skips_d():
    loss = LPIPSWithDiscriminator(disc_start=10, perceptual_weight=0.0, kl_weight=0.1, logvar_init=0.5)
    calls = _counting(loss)
    x, decoder, recon = _batch()
    kl = torch.tensor([1.0, 3.0])
    total, log = loss(x, recon, StubPosterior(kl), 0, global_step=9, last_layer=decoder.weight)
    rec = (x - recon).abs()
    nll = (rec / torch.exp(torch.tensor(0.5)) + 0.5).sum() / 2
    assert total.item() == pytest.approx((nll + 0.1 * 2.0).item(), rel=1e-6)
    assert log["train/nll_loss"].item() == pytest.approx(nll.item(), rel=1e-6)
    assert log["train/kl_loss"].item() == pytest.approx(2.0)
    assert log["train/rec_loss"].item() == pytest.approx(rec.mean().item(), rel=1e-6)
    assert log["train/g_loss"].item() == 0.0 and log["train/d_weight"].item() == 0.0
    assert log["train/disc_factor"].item() == 0.0
    assert calls == []  # the discriminator was not run
    total.backward()
    assert decoder.weight.grad is not None


def test_pixel_loss_l2_squares_the_error_and_bad_names_are_config_errors():
    from ldm.util import ConfigError

    loss = LPIPSWithDiscriminator(disc_start=10, perceptual_weight=0.0, kl_weight=0.0, pixel_loss="l2",
                                  pixelloss_weight=2.0)
    x, decoder, recon = _batch()
    total, log = loss(x, recon, StubPosterior(torch.zeros(2)), 0, global_step=0, last_layer=decoder.weight)
    squared = 2.0 * (x - recon) ** 2
    assert log["train/rec_loss"].item() == pytest.approx(squared.mean().item(), rel=1e-6)
    assert total.item() == pytest.approx((squared.sum() / 2).item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"pixel_loss must be one of \['l1', 'l2'\], got 'l3'"):
        LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, pixel_loss="l3")


def test_generator_loss_after_disc_start_adds_adaptive_gan_term():
    loss = LPIPSWithDiscriminator(disc_start=10, perceptual_weight=0.0, kl_weight=1e-6, disc_weight=0.5,
                                  disc_factor=0.8)
    calls = _counting(loss)
    x, decoder, recon = _batch()
    kl = torch.tensor([2.0, 2.0])
    total, log = loss(x, recon, StubPosterior(kl), 0, global_step=10, last_layer=decoder.weight)
    assert len(calls) == 1
    nll = (x - recon).abs().sum() / 2
    g = -loss.discriminator(recon).mean()
    expected_w = adaptive_weight(nll, g, decoder.weight, 0.5)
    assert log["train/g_loss"].item() == pytest.approx(g.item(), rel=1e-5)
    assert log["train/d_weight"].item() == pytest.approx(expected_w.item(), rel=1e-5)
    assert log["train/d_weight"].item() > 0 and log["train/disc_factor"].item() == pytest.approx(0.8)
    expected = nll + 1e-6 * 2.0 + expected_w * 0.8 * g
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_scale_the_nll_but_not_the_logged_nll():
    loss = LPIPSWithDiscriminator(disc_start=100, perceptual_weight=0.0)
    x, decoder, recon = _batch()
    weights = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    total, log = loss(x, recon, StubPosterior(torch.zeros(2)), 0, 0, weights=weights)
    assert total.item() == pytest.approx(((x - recon).abs()[0].sum() / 2).item(), rel=1e-6)
    assert log["train/nll_loss"].item() == pytest.approx(((x - recon).abs().sum() / 2).item(), rel=1e-6)


def test_discriminator_loss_and_log_keys():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, disc_loss="vanilla")
    x, decoder, recon = _batch()
    _, log_g = loss(x, recon, StubPosterior(torch.zeros(2)), 0, 0, last_layer=decoder.weight, split="val")
    d_loss, log_d = loss(x, recon, StubPosterior(torch.zeros(2)), 1, 0, split="val")
    assert set(log_g) == {f"val/{k}" for k in GEN_KEYS}
    assert set(log_d) == {f"val/{k}" for k in DISC_KEYS}
    for value in {**log_g, **log_d}.values():
        assert isinstance(value, torch.Tensor) and not value.requires_grad and value.numel() == 1
    d_loss.backward()
    assert decoder.weight.grad is None  # the D step never reaches the generator
    assert all(p.grad is not None for p in loss.discriminator.parameters())


def test_validation_without_grad_gives_zero_weight():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0).eval()
    x, decoder, recon = _batch()
    with torch.no_grad():
        total, log = loss(x, recon.detach(), StubPosterior(torch.zeros(2)), 0, 5, last_layer=decoder.weight,
                          split="val")
    assert log["val/d_weight"].item() == 0.0 and torch.isfinite(total)


def test_logvar_fixed_by_default_and_learnable_on_request():
    fixed = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, logvar_init=0.3)
    assert "logvar" in fixed.state_dict() and fixed.logvar.shape == ()
    assert isinstance(fixed.logvar, nn.Parameter) and not fixed.logvar.requires_grad
    assert fixed.trainable_parameters() == [] and not fixed.learn_logvar

    learned = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, learn_logvar=True)
    assert learned.trainable_parameters() == [learned.logvar] and learned.learn_logvar
    x, decoder, recon = _batch()
    total, _ = learned(x, recon, StubPosterior(torch.zeros(2)), 0, 0)
    total.backward()
    assert learned.logvar.grad is not None
    # the model may also switch it on later (AutoencoderKL(learn_logvar=True) does)
    fixed.logvar.requires_grad_(True)
    assert fixed.trainable_parameters() == [fixed.logvar]


def test_conditional_discriminator_concatenates_cond():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, disc_conditional=True, disc_in_channels=4)
    x, decoder, recon = _batch()
    cond = torch.randn(2, 1, 32, 32)
    _, log = loss(x, recon, StubPosterior(torch.zeros(2)), 0, 0, last_layer=decoder.weight, cond=cond)
    assert log["train/g_loss"].item() != 0.0
    with pytest.raises(ValueError, match="no `cond`"):
        loss(x, recon, StubPosterior(torch.zeros(2)), 1, 0)


def test_bad_optimizer_idx():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    x, _, recon = _batch()
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss(x, recon, StubPosterior(torch.zeros(2)), 2, 0)


def test_actnorm_discriminator_variant():
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, use_actnorm=True)
    assert "discriminator.main.3.initialized" in loss.state_dict()


def test_random_trunk_perceptual_term_is_frozen():
    loss = LPIPSWithDiscriminator(disc_start=100, perceptual_random_trunk=True, perceptual_weight=1.0)
    loss.train()
    assert not loss.perceptual_loss.training
    x, decoder, recon = _batch()
    total, log = loss(x, recon, StubPosterior(torch.zeros(2)), 0, 0, last_layer=decoder.weight)
    p = loss.perceptual_loss(x, recon).detach()
    expected_rec = ((x - recon).abs() + p).mean()
    assert log["train/rec_loss"].item() == pytest.approx(expected_rec.item(), rel=1e-5)
    assert (p > 0).all()
    total.backward()
    assert all(q.grad is None for q in loss.perceptual_loss.parameters())
    assert decoder.weight.grad is not None
    assert "perceptual_loss.lin0.model.1.weight" in loss.state_dict()


def test_no_host_reads_in_train_step(monkeypatch):
    """After ActNorm's one-off init, neither loss reads a tensor value back to Python (no host sync on GPUs)."""
    from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

    kl_loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, use_actnorm=True)
    vq_loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, n_classes=8)
    x, decoder, recon = _batch()
    kl_loss(x, recon, StubPosterior(torch.zeros(2)), 1, 0)  # warm-up: ActNorm reads `initialized` once

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor value inside the loss")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step in (0, 3):
        total, _ = kl_loss(x, recon, StubPosterior(torch.ones(2)), 0, step, last_layer=decoder.weight)
        d_loss, _ = kl_loss(x, recon, StubPosterior(torch.ones(2)), 1, step)
        vq_total, _ = vq_loss(torch.zeros(()), x, recon, 0, step, last_layer=decoder.weight,
                              predicted_indices=torch.tensor([1, 2, 2]))
        vq_d, _ = vq_loss(torch.zeros(()), x, recon, 1, step)
    monkeypatch.undo()
    assert total.requires_grad and d_loss.requires_grad and vq_total.requires_grad and vq_d.requires_grad
