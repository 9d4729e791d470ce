"""VQ-GAN loss: nll as a mean, codebook term, pixel loss choice, perplexity logging, gating."""

import math

import pytest
import torch
from torch import nn

from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator, measure_perplexity
from ldm.util import ConfigError

GEN_KEYS = {"total_loss", "quant_loss", "nll_loss", "rec_loss", "p_loss", "d_weight", "disc_factor", "g_loss"}


def _batch():
    torch.manual_seed(0)
    decoder = nn.Conv2d(4, 3, 1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    return x, decoder, decoder(torch.randn(2, 4, 32, 32))


def test_l1_values_before_disc_start():
    loss = VQLPIPSWithDiscriminator(disc_start=5, perceptual_weight=0.0, codebook_weight=0.5)
    x, decoder, recon = _batch()
    qloss = torch.tensor([0.4])
    total, log = loss(qloss, x, recon, 0, 4, last_layer=decoder.weight)
    nll = (x - recon).abs().mean()
    assert total.item() == pytest.approx((nll + 0.5 * 0.4).item(), rel=1e-6)
    assert set(log) == {f"train/{k}" for k in GEN_KEYS}
    assert log["train/quant_loss"].item() == pytest.approx(0.4)
    assert log["train/p_loss"].item() == 0.0 and log["train/g_loss"].item() == 0.0


def test_l2_pixel_loss_and_missing_codebook_loss():
    loss = VQLPIPSWithDiscriminator(disc_start=5, perceptual_weight=0.0, pixel_loss="l2")
    x, decoder, recon = _batch()
    total, log = loss(None, x, recon, 0, 0)
    assert total.item() == pytest.approx(((x - recon) ** 2).mean().item(), rel=1e-6)
    assert log["train/quant_loss"].item() == 0.0


def test_gan_term_after_disc_start_and_disc_step():
    loss = VQLPIPSWithDiscriminator(disc_start=5, perceptual_weight=0.0, disc_weight=0.75, disc_ndf=16)
    assert loss.discriminator.main[0].out_channels == 16
    x, decoder, recon = _batch()
    total, log = loss(torch.tensor(0.0), x, recon, 0, 5, last_layer=decoder.weight)
    g = log["train/g_loss"]
    assert g.item() != 0.0 and log["train/d_weight"].item() > 0.0
    nll = (x - recon).abs().mean()
    expected = nll + log["train/d_weight"] * g
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    d_loss, log_d = loss(torch.tensor(0.0), x, recon, 1, 5)
    assert set(log_d) == {"train/disc_loss", "train/logits_real", "train/logits_fake"} and d_loss.item() > 0


def test_perplexity_logged_with_indices_and_n_classes():
    loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, n_classes=4)
    x, decoder, recon = _batch()
    indices = torch.tensor([[0, 0], [1, 1]])
    _, log = loss(torch.tensor(0.0), x, recon, 0, 0, last_layer=decoder.weight, split="val",
                  predicted_indices=indices)
    assert log["val/perplexity"].item() == pytest.approx(2.0, rel=1e-5)
    assert log["val/cluster_usage"].item() == 2
    assert not log["val/perplexity"].requires_grad
    no_classes = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    _, log = no_classes(torch.tensor(0.0), x, recon, 0, 0, predicted_indices=indices)
    assert "train/perplexity" not in log


def test_measure_perplexity_values():
    uniform = torch.arange(8).repeat(3)
    perplexity, used = measure_perplexity(uniform, 8)
    assert perplexity.item() == pytest.approx(8.0, rel=1e-5) and used.item() == 8
    skewed = torch.tensor([0, 0, 0, 1])
    p = torch.tensor([0.75, 0.25])
    perplexity, used = measure_perplexity(skewed, 16)
    assert perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5) and used.item() == 2
    # an out-of-range ('extra' remap) index is not counted
    perplexity, used = measure_perplexity(torch.tensor([0, 1, 16]), 16)
    assert perplexity.item() == pytest.approx(2.0, rel=1e-5) and used.item() == 2


def test_bad_options():
    with pytest.raises(ConfigError, match="pixel_loss"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, pixel_loss="huber")
    with pytest.raises(ConfigError, match="perceptual_loss"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, perceptual_loss="dists")
    with pytest.raises(ConfigError, match="perceptual_weight"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=-1.0)


def test_perceptual_term_in_rec_and_p_loss(random_lpips):
    loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    loss.perceptual_loss, loss.perceptual_weight = random_lpips[0], 0.5  # the shared LPIPS, not a second build
    x, decoder, recon = _batch()
    _, log = loss(torch.tensor(0.0), x, recon, 0, 0, last_layer=decoder.weight)
    p = loss.perceptual_loss(x, recon).detach()
    assert log["train/p_loss"].item() == pytest.approx(p.mean().item(), rel=1e-5) and (p > 0).all()
    expected_rec = ((x - recon).abs() + 0.5 * p).mean()
    assert log["train/rec_loss"].item() == pytest.approx(expected_rec.item(), rel=1e-5)
    assert log["train/nll_loss"].item() == pytest.approx(expected_rec.item(), rel=1e-5)
    assert loss.trainable_parameters() == []
