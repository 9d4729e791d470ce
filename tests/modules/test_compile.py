"""Tests for the regional torch.compile helper: regions, clean state_dict keys, eager fallback with a warning."""

import pytest
import torch

from ldm.modules import compile as compile_mod
from ldm.modules.attention import SpatialTransformer
from ldm.modules.compile import compile_or_warn, compile_regions, is_compiled
from ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

TINY = {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 16, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_heads": 2, "use_spatial_transformer": True,
        "context_dim": 8, "norm_num_groups": 8, "legacy": False}


def _randomised_unet(**overrides) -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(**dict(TINY, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def test_regions_are_the_blocks_and_keys_stay_clean(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(self))
    model = _randomised_unet()
    keys = list(model.state_dict())
    n = compile_regions(model)
    assert n == len(calls) > 0
    assert all(isinstance(m, (ResBlock, SpatialTransformer)) for m in calls)
    n_blocks = sum(isinstance(m, (ResBlock, SpatialTransformer)) for m in model.modules())
    assert n == n_blocks  # outermost blocks only: no block is inside another here
    assert list(model.state_dict()) == keys


def test_module_without_regions_is_compiled_whole(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(self))
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert compile_regions(net) == 1 and calls == [net]


def test_unavailable_backend_warns_and_stays_eager(monkeypatch):
    monkeypatch.setattr(compile_mod, "compile_unavailable_reason", lambda device: "no C++ compiler found")
    model = _randomised_unet()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*the U-Net runs eagerly"):
        assert compile_or_warn(model, "cpu", "the U-Net") is False
    assert not is_compiled(model)


def test_compile_raising_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(compile_mod, "compile_unavailable_reason", lambda device: None)

    def boom(self, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch.nn.Module, "compile", boom)
    with pytest.warns(RuntimeWarning, match="backend exploded"):
        assert compile_or_warn(_randomised_unet(), "cpu", "the U-Net") is False


@pytest.mark.slow  # about a minute of compiling on 2 CPU cores
def test_compiled_unet_matches_eager_and_its_checkpoint_loads_uncompiled():
    """The one real compile in the suite: a one-level U-Net (3 distinct block graphs), forward and backward."""
    if compile_mod.compile_unavailable_reason("cpu") is not None:
        pytest.skip(f"torch.compile unavailable here: {compile_mod.compile_unavailable_reason('cpu')}")
    one_level = {"channel_mult": (1,), "attention_resolutions": (1,)}
    model, eager = _randomised_unet(**one_level), _randomised_unet(**one_level)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 8)
    assert compile_or_warn(model, "cpu", "the U-Net") and is_compiled(model)
    out, ref = model(x, t, context=ctx), eager(x, t, context=ctx)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
    state = model.state_dict()
    assert not any("_orig_mod" in k for k in state)
    fresh = UNetModel(**dict(TINY, **one_level))
    fresh.load_state_dict(state)  # strict: same keys as an uncompiled model
    torch.testing.assert_close(fresh(x, t, context=ctx), eager(x, t, context=ctx), atol=1e-5, rtol=1e-5)
