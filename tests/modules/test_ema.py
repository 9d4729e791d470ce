"""LitEma: CompVis-compatible buffer names, update rule, copy/store/restore, and the EMA scope."""
import pytest
import torch
import torch.nn as nn

from ldm.modules.ema import LitEma, ema_scope, shadow_name


def small_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # frozen parameters get no shadow
    return model


def perturb(model, scale=1.0):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_buffer_names_match_the_original():
    model = small_model()
    ema = LitEma(model)
    assert ema.m_name2s_name == {"0.weight": "0weight", "0.bias": "0bias", "1.weight": "1weight",
                                 "1.bias": "1bias", "2.weight": "2weight"}
    assert list(ema.state_dict()) == ["decay", "num_updates", "0weight", "0bias", "1weight", "1bias", "2weight"]
    assert ema.decay.dtype == torch.float32 and ema.num_updates.dtype == torch.int32
    assert int(ema.num_updates) == 0 and shadow_name("model.diffusion_model.out.2.weight") == \
        "modeldiffusion_modelout2weight"

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = small_model()
            self.model_ema = LitEma(self.model)

    assert "model_ema.0weight" in Holder().state_dict()  # the key layout of CompVis checkpoints


@pytest.mark.parametrize("counting", [True, False])
def test_update_formula(counting):
    model = small_model()
    ema = LitEma(model, decay=0.9, use_num_upates=counting)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for step in range(1, 6):
        perturb(model)
        ema(model)
        decay = min(0.9, (1 + step) / (10 + step)) if counting else 0.9
        for name, p in model.named_parameters():
            if p.requires_grad:
                expected[name] -= (1 - decay) * (expected[name] - p.detach())
    shadows = dict(ema.named_buffers())
    for name, value in expected.items():
        assert torch.allclose(shadows[ema.m_name2s_name[name]], value, atol=1e-6)
    assert int(ema.num_updates) == (5 if counting else -1)


def test_both_kwarg_spellings_and_bad_decay():
    model = small_model()
    assert int(LitEma(model, use_num_updates=False).num_updates) == -1
    assert int(LitEma(model, use_num_upates=False).num_updates) == -1
    with pytest.raises(ValueError, match="between 0 and 1"):
        LitEma(model, decay=1.5)


def test_copy_to_store_restore_round_trip():
    model = small_model()
    ema = LitEma(model, decay=0.5)
    perturb(model)
    ema(model)
    trained = [p.detach().clone() for p in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model)
    shadows = dict(ema.named_buffers())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, shadows[ema.m_name2s_name[name]])
    assert not torch.equal(model[0].weight, trained[0])
    assert torch.equal(model[2].bias, trained[-1])  # frozen parameter untouched
    ema.restore(model.parameters())
    for p, t in zip(model.parameters(), trained):
        assert torch.equal(p, t)
    with pytest.raises(RuntimeError, match="store"):
        ema.restore(model.parameters())  # copies are dropped after a restore


def test_ema_scope_restores_weights_even_on_exception():
    model = small_model()
    ema = LitEma(model)
    perturb(model)
    trained = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(KeyError):
        with ema_scope(model, ema) as m:
            assert m is model and torch.equal(model[0].weight, ema.get_buffer("0weight"))
            raise KeyError("boom")
    for p, t in zip(model.parameters(), trained):
        assert torch.equal(p, t)
    with ema_scope(model, None):  # no EMA: a no-op
        assert torch.equal(model[0].weight, trained[0])


def test_checkpoint_round_trip_and_counting_flag():
    model = small_model()
    ema = LitEma(model, decay=0.9)
    perturb(model)
    ema(model)
    other = LitEma(small_model(), decay=0.9)
    other.load_state_dict(ema.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), other.buffers()))
    not_counting = LitEma(small_model(), use_num_upates=False)
    counting = LitEma(small_model())
    counting.load_state_dict(not_counting.state_dict())  # the loaded num_updates = -1 decides, as in the original
    counting(model)
    assert int(counting.num_updates) == -1


def test_errors_name_the_parameter():
    class Clash(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Module()
            self.a.b = nn.Parameter(torch.zeros(1))
            self.ab = nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="'ab'"):
        LitEma(Clash())
    ema = LitEma(small_model())
    model = small_model()
    model[2].bias.requires_grad_(True)
    with pytest.raises(KeyError, match="2.bias"):
        ema(model)
