"""LPIPS wrapper: offline error for missing VGG weights, random-trunk opt-in, frozen module, file loading."""

import os
from types import SimpleNamespace

import pytest
import torch

from ldm.modules.losses import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator
from ldm.modules.losses.lpips import (LPIPS, VGG16_FILENAME, MissingPerceptualWeightsError, build_perceptual_loss,
                                      default_vgg_path)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_missing_weights_error_names_file_path_and_switch(empty_torch_home):
    expected_path = os.path.join(str(empty_torch_home), "hub", "checkpoints", VGG16_FILENAME)
    assert default_vgg_path() == expected_path
    with pytest.raises(MissingPerceptualWeightsError) as info:
        LPIPS()
    message = str(info.value)
    assert VGG16_FILENAME in message
    assert expected_path in message
    assert "perceptual_random_trunk: true" in message
    assert isinstance(info.value, FileNotFoundError)


def test_losses_raise_when_weights_missing(empty_torch_home):
    with pytest.raises(MissingPerceptualWeightsError, match="perceptual_random_trunk: true"):
        LPIPSWithDiscriminator(disc_start=0)
    with pytest.raises(MissingPerceptualWeightsError, match=VGG16_FILENAME):
        VQLPIPSWithDiscriminator(disc_start=0)


def test_explicit_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "nowhere" / VGG16_FILENAME)
    with pytest.raises(MissingPerceptualWeightsError, match="perceptual_vgg_path"):
        LPIPSWithDiscriminator(disc_start=0, perceptual_vgg_path=missing)


def test_zero_weight_builds_no_lpips(empty_torch_home):
    assert build_perceptual_loss(0.0) is None
    assert LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0).perceptual_loss is None
    assert VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0).perceptual_loss is None


def test_random_trunk_builds_offline_and_warns(random_lpips):
    model, messages = random_lpips
    assert model.random_trunk
    assert any("NOT a calibrated metric" in m for m in messages)
    # calibrated heads come from the lpips package (non-negative 1x1 conv weights)
    assert all(torch.all(head.model[1].weight >= 0) for head in model.lins)


def test_state_dict_names_match_taming_lpips(random_lpips):
    model, _ = random_lpips
    keys = list(model.state_dict())
    assert keys[:4] == ["scaling_layer.shift", "scaling_layer.scale", "net.slice1.0.weight", "net.slice1.0.bias"]
    assert keys[-5:] == [f"lin{i}.model.1.weight" for i in range(5)]
    assert not any(k.startswith("lins.") for k in keys)


def test_distances_per_sample_and_match_lpips_package(random_lpips):
    import lpips

    model, _ = random_lpips
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = torch.rand(3, 3, 32, 32) * 2 - 1
    d = model(x, y)
    assert d.shape == (3, 1, 1, 1)
    assert torch.all(d > 0) and torch.allclose(model(x, x), torch.zeros(3, 1, 1, 1), atol=1e-6)
    # the package's own forward, run on our modules, is the reference
    view = SimpleNamespace(version="0.1", scaling_layer=model.scaling_layer, net=model.net, L=5, lpips=True,
                           spatial=False, lins=model.lins)
    assert torch.allclose(d, lpips.LPIPS.forward(view, x, y), atol=1e-6)


def test_frozen_and_stays_in_eval(random_lpips):
    model, _ = random_lpips
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x, torch.rand(2, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_rejects_bad_shapes(random_lpips):
    model, _ = random_lpips
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))


def test_trunk_loads_from_torchvision_layout(random_lpips, empty_torch_home):
    model, _ = random_lpips
    torch.manual_seed(3)
    fake = {}
    for name, tensor in model.net.state_dict().items():
        index_and_kind = name.split(".", 1)[1]  # slice3.10.weight -> 10.weight
        fake["features." + index_and_kind] = torch.randn_like(tensor)
    fake["classifier.0.weight"] = torch.zeros(1)  # extra keys of the real file are ignored
    path = default_vgg_path()
    os.makedirs(os.path.dirname(path))
    torch.save(fake, path)
    loaded = LPIPS()  # found in $TORCH_HOME/hub/checkpoints without any switch
    assert not loaded.random_trunk
    assert torch.equal(getattr(loaded.net.slice3, "10").weight, fake["features.10.weight"])
    assert torch.equal(getattr(loaded.net.slice5, "28").bias, fake["features.28.bias"])

    del fake["features.28.bias"]
    torch.save(fake, path)
    with pytest.raises(MissingPerceptualWeightsError, match=r"features\.28\.bias"):
        LPIPS(vgg_path=path)
