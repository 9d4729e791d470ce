"""DiffusionWrapper routes conditioning as the original; the method-free model_fn (with EMA weights by name)."""
import pytest
import torch

from ldm.models.diffusion.wrapper import DiffusionWrapper, ema_parameters, make_model_fn, wrapper_kwargs
from ldm.modules.ema import LitEma

STAND_IN = {"target": "diffusion_configs.RecordingUNet", "params": {"out_channels": 4}}


def wrapper(key):
    return DiffusionWrapper(STAND_IN, key)


def inputs():
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([3, 7])
    return x, t


def test_unconditional_passes_x_and_t_only():
    w = wrapper(None)
    x, t = inputs()
    w(x, t, c_crossattn=[torch.randn(2, 5, 3)])  # ignored, as the original
    call = w.diffusion_model.calls[-1]
    assert call["x"] is x and call["t"] is t and call["context"] is None and call["y"] is None


def test_concat_joins_channels():
    w = wrapper("concat")
    x, t = inputs()
    c1, c2 = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    w(x, t, c_concat=[c1, c2])
    call = w.diffusion_model.calls[-1]
    assert torch.equal(call["x"], torch.cat([x, c1, c2], 1)) and call["context"] is None


def test_crossattn_joins_tokens():
    w = wrapper("crossattn")
    x, t = inputs()
    a, b = torch.randn(2, 3, 6), torch.randn(2, 5, 6)
    w(x, t, c_crossattn=[a, b])
    call = w.diffusion_model.calls[-1]
    assert call["x"] is x and torch.equal(call["context"], torch.cat([a, b], 1))


def test_hybrid_does_both():
    w = wrapper("hybrid")
    x, t = inputs()
    cc, ca = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 6)
    w(x, t, c_concat=[cc], c_crossattn=[ca])
    call = w.diffusion_model.calls[-1]
    assert torch.equal(call["x"], torch.cat([x, cc], 1)) and torch.equal(call["context"], ca)


def test_adm_feeds_first_crossattn_entry_as_y():
    w = wrapper("adm")
    x, t = inputs()
    y = torch.randn(2, 16)
    w(x, t, c_crossattn=[y])
    call = w.diffusion_model.calls[-1]
    assert call["y"] is y and call["context"] is None


@pytest.mark.parametrize("key", ["hybrid-adm", "crossattn-adm"])
def test_sd2_adm_variants(key):
    w = wrapper(key)
    x, t = inputs()
    cc, ca, adm = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 6), torch.randn(2, 16)
    w(x, t, c_concat=[cc], c_crossattn=[ca], c_adm=adm)
    call = w.diffusion_model.calls[-1]
    assert call["y"] is adm and torch.equal(call["context"], ca)
    assert call["x"].shape[1] == (5 if key == "hybrid-adm" else 4)


def test_missing_conditioning_and_bad_key_are_clear_errors():
    x, t = inputs()
    with pytest.raises(ValueError, match="crossattn.*needs c_crossattn"):
        wrapper("crossattn")(x, t)
    with pytest.raises(ValueError, match="unknown conditioning_key"):
        wrapper("cross")


def test_wrapper_kwargs_follows_apply_model():
    c = torch.randn(2, 3)
    assert wrapper_kwargs(None, "crossattn") == {}
    assert wrapper_kwargs(c, "concat")["c_concat"][0] is c
    assert wrapper_kwargs(c, "crossattn")["c_crossattn"][0] is c
    assert wrapper_kwargs([c], "adm")["c_crossattn"][0] is c
    d = wrapper_kwargs({"c_concat": c, "c_crossattn": [c]}, "hybrid")
    assert d["c_concat"][0] is c and d["c_crossattn"][0] is c
    with pytest.raises(ValueError, match="unknown keys"):
        wrapper_kwargs({"context": c}, "crossattn")


def test_model_fn_uses_ema_weights_without_touching_the_module():
    w = wrapper("crossattn")
    ema = LitEma(w)
    with torch.no_grad():
        w.diffusion_model.scale.fill_(3.0)  # training weights moved away from the EMA's 1.0
    x, t = inputs()
    ctx = torch.randn(2, 2, 6)
    plain = make_model_fn(w)(x, t, ctx)
    averaged = make_model_fn(w, ema_parameters(w, ema))(x, t, ctx)
    assert torch.allclose(plain, 3 * x) and torch.allclose(averaged, x)
    assert float(w.diffusion_model.scale.detach()) == 3.0  # nothing swapped in
    assert torch.equal(w.diffusion_model.calls[-1]["context"], ctx)
