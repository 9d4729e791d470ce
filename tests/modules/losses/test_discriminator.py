"""PatchGAN discriminator: taming state-dict layout, DCGAN init, ActNorm data-dependent init."""

import pytest
import torch
from torch import nn

from ldm.modules.losses.discriminator import ActNorm, NLayerDiscriminator, weights_init

CONVS = {0: (64, 3), 2: (128, 64), 5: (256, 128), 8: (512, 256), 11: (1, 512)}


def test_batchnorm_layout_matches_taming():
    state = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3).state_dict()
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (["main.0.weight", "main.0.bias", "main.2.weight"] + [f"main.3.{k}" for k in bn]
                + ["main.5.weight"] + [f"main.6.{k}" for k in bn]
                + ["main.8.weight"] + [f"main.9.{k}" for k in bn]
                + ["main.11.weight", "main.11.bias"])
    assert list(state) == expected
    for idx, (out_c, in_c) in CONVS.items():
        assert state[f"main.{idx}.weight"].shape == (out_c, in_c, 4, 4)


def test_actnorm_layout_matches_taming():
    model = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3, use_actnorm=True)
    state = model.state_dict()
    act = ["loc", "scale", "initialized"]
    expected = (["main.0.weight", "main.0.bias", "main.2.weight", "main.2.bias"] + [f"main.3.{k}" for k in act]
                + ["main.5.weight", "main.5.bias"] + [f"main.6.{k}" for k in act]
                + ["main.8.weight", "main.8.bias"] + [f"main.9.{k}" for k in act]
                + ["main.11.weight", "main.11.bias"])
    assert list(state) == expected
    assert state["main.3.loc"].shape == (1, 128, 1, 1) and state["main.3.initialized"].dtype == torch.uint8


def test_layer_sequence_strides_and_output():
    model = NLayerDiscriminator(n_layers=3)
    kinds = [type(m).__name__ for m in model.main]
    assert kinds == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3 + ["Conv2d"]
    assert [m.stride[0] for m in model.main if isinstance(m, nn.Conv2d)] == [2, 2, 2, 1, 1]
    assert all(m.negative_slope == 0.2 for m in model.main if isinstance(m, nn.LeakyReLU))
    assert all(m.kernel_size == (4, 4) and m.padding == (1, 1) for m in model.main if isinstance(m, nn.Conv2d))
    # 64 -> 32 -> 16 -> 8 -> 7 -> 6 patch logits
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("n_layers,last_in", [(0, 64), (1, 128), (2, 256), (4, 512), (5, 512)])
def test_widths_follow_taming_for_other_depths(n_layers, last_in):
    model = NLayerDiscriminator(ndf=64, n_layers=n_layers)
    assert model.main[-1].in_channels == last_in
    assert len(model.main) == 2 + 3 * max(n_layers, 1) + 1


def test_weights_init():
    torch.manual_seed(0)
    model = NLayerDiscriminator(ndf=64).apply(weights_init)
    conv_w = torch.cat([m.weight.flatten() for m in model.main if isinstance(m, nn.Conv2d)])
    assert conv_w.mean().abs() < 1e-3 and conv_w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = [m for m in model.main if isinstance(m, nn.BatchNorm2d)]
    bn_w = torch.cat([m.weight for m in bn])
    assert bn_w.mean().item() == pytest.approx(1.0, abs=0.01) and bn_w.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(torch.all(m.bias == 0) for m in bn)


def test_actnorm_initializes_from_first_training_batch_only():
    norm = ActNorm(4).train()
    x = torch.randn(8, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5.0
    y = norm(x)
    assert int(norm.initialized) == 1
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    loc = norm.loc.detach().clone()
    norm(torch.randn(8, 4, 5, 5))  # a second batch does not re-initialize
    assert torch.equal(norm.loc.detach(), loc)
    assert torch.allclose(norm.reverse(y), x, atol=1e-4)


def test_actnorm_no_init_in_eval_and_after_loading_initialized_weights():
    norm = ActNorm(2).eval()
    x = torch.randn(4, 2, 3, 3)
    assert torch.equal(norm(x), x)  # identity, untouched in eval
    assert int(norm.initialized) == 0

    trained = ActNorm(2).train()
    trained(x + 3.0)
    fresh = ActNorm(2).train()
    fresh.load_state_dict(trained.state_dict())
    fresh(torch.randn(4, 2, 3, 3))  # loaded as initialized: keeps the loaded statistics
    assert torch.equal(fresh.loc, trained.loc)


def test_actnorm_forward_does_not_reread_the_buffer():
    norm = ActNorm(2).train()
    norm(torch.randn(4, 2, 3, 3))
    loc = norm.loc.detach().clone()
    norm.initialized.zero_()  # a Python flag, not a host read of this buffer, decides after the first batch
    norm(torch.randn(4, 2, 3, 3) + 10.0)
    assert torch.equal(norm.loc.detach(), loc)


def test_actnorm_logdet_and_2d_input():
    norm = ActNorm(3, logdet=True).train()
    h, logdet = norm(torch.randn(6, 3))
    assert h.shape == (6, 3) and logdet.shape == (6,)
    assert torch.allclose(logdet, torch.log(norm.scale.abs()).sum().expand(6))
    with pytest.raises(RuntimeError, match="uninitialized"):
        ActNorm(3).train().reverse(torch.randn(2, 3, 2, 2))
