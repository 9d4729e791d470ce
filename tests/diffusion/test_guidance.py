"""Classifier-free guidance batching and rescale, and training-time conditioning dropout."""
import pytest
import torch

from ldm.diffusion.guidance import (ClassifierFreeGuidance, concat_conditioning, drop_conditioning, guided_model_fn,
                                    rescale_guidance)


class CountingModel:
    """out = x * 2 + (sum of every conditioning tensor, per sample); counts calls and batch sizes."""

    def __init__(self):
        self.calls = []

    def _cond_term(self, c, b):
        if isinstance(c, torch.Tensor):
            return c.reshape(b, -1).sum(1)
        if isinstance(c, dict):
            return sum(self._cond_term(v, b) for v in c.values())
        return sum(self._cond_term(v, b) for v in c)

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        return x * 2 + self._cond_term(cond, x.shape[0]).view(-1, 1, 1, 1)


def test_scale_one_is_the_conditional_model_with_one_call():
    model = CountingModel()
    x, t, c = torch.randn(3, 2, 4, 4), torch.tensor([1, 2, 3]), torch.randn(3, 5)
    guided = guided_model_fn(model, uncond=torch.zeros(3, 5), scale=1.0)
    out = guided(x, t, c)
    torch.testing.assert_close(out, model(x, t, c))
    assert model.calls == [3, 3]  # one call from guidance, one from the reference
    wrapped = ClassifierFreeGuidance(model, uncond=None, scale=1.0)
    model.calls.clear()
    wrapped(x, t, c)
    assert model.calls == [3]


@pytest.mark.parametrize("kind", ["tensor", "list", "dict"])
def test_guidance_batches_cond_and_uncond(kind):
    b = 2
    c_t, u_t = torch.randn(b, 7, 3), torch.randn(b, 7, 3)
    c_cat, u_cat = torch.randn(b, 1, 4, 4), torch.zeros(b, 1, 4, 4)
    cond, uncond = {"tensor": (c_t, u_t), "list": ([c_t], [u_t]),
                    "dict": ({"c_concat": [c_cat], "c_crossattn": [c_t]},
                             {"c_concat": [u_cat], "c_crossattn": [u_t]})}[kind]
    model = CountingModel()
    x, t = torch.randn(b, 1, 4, 4), torch.tensor([5, 9])
    out = ClassifierFreeGuidance(model, uncond, scale=7.5)(x, t, cond)
    assert model.calls == [2 * b]  # one batched call
    out_c, out_u = model(x, t, cond), model(x, t, uncond)
    torch.testing.assert_close(out, out_u + 7.5 * (out_c - out_u))


def test_concat_conditioning_layout_and_errors():
    c, u = torch.ones(2, 3), torch.zeros(1, 3)
    both = concat_conditioning(u, c)
    assert both.shape == (4, 3) and both[:2].sum() == 0 and both[2:].sum() == 6
    with pytest.raises(ValueError, match="keys"):
        concat_conditioning({"a": u}, {"b": c})
    with pytest.raises(ValueError, match="does not match"):
        concat_conditioning(torch.zeros(2, 4), c)
    with pytest.raises(TypeError, match="encode it to tensors"):
        concat_conditioning(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="needs an unconditional"):
        ClassifierFreeGuidance(CountingModel(), None, scale=3.0)


def test_guidance_rescale():
    cond_out = torch.randn(2, 3, 8, 8)
    guided = 3.0 * cond_out + 0.5
    full = rescale_guidance(guided, cond_out, 1.0)
    dims = (1, 2, 3)
    torch.testing.assert_close(full.std(dim=dims), cond_out.std(dim=dims))
    torch.testing.assert_close(rescale_guidance(guided, cond_out, 0.0), guided)
    half = rescale_guidance(guided, cond_out, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)


def test_drop_conditioning_rate_and_structure():
    b = 20_000
    cond = {"c_crossattn": [torch.ones(b, 2, 3)], "c_concat": [torch.ones(b, 1, 2, 2)]}
    null = {"c_crossattn": [torch.zeros(1, 2, 3)], "c_concat": [None]}
    g = torch.Generator().manual_seed(0)
    out, keep = drop_conditioning(cond, null, 0.3, generator=g, return_mask=True)
    dropped = out["c_crossattn"][0].sum(dim=(1, 2)) == 0
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.01)
    # one decision per sample across all leaves, consistent with the returned mask
    assert torch.equal(dropped, out["c_concat"][0].sum(dim=(1, 2, 3)) == 0)
    assert torch.equal(dropped, ~keep)
    # reproducible with the same generator seed
    again = drop_conditioning(cond, null, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["c_crossattn"][0], out["c_crossattn"][0])


def test_drop_conditioning_captions_and_labels():
    captions = [f"caption {i}" for i in range(1000)]
    out = drop_conditioning(captions, "", 0.5, generator=torch.Generator().manual_seed(1))
    n_empty = sum(c == "" for c in out)
    assert 400 < n_empty < 600 and all(c in ("", f"caption {i}") for i, c in enumerate(out))
    labels = torch.arange(1000)
    out = drop_conditioning(labels, 1000, 0.25, generator=torch.Generator().manual_seed(2))
    assert (out == 1000).float().mean().item() == pytest.approx(0.25, abs=0.05)
    assert drop_conditioning(labels, 1000, 0.0) is labels
    assert (drop_conditioning(labels, 1000, 1.0) == 1000).all()
    with pytest.raises(ValueError, match="ucg_rate"):
        drop_conditioning(labels, 0, 1.5)
    with pytest.raises(ValueError, match="null conditioning shape"):
        drop_conditioning(torch.ones(4, 7, 3), torch.zeros(5, 3), 0.5)
    # an unbatched null (e.g. the empty-prompt embedding) broadcasts
    out = drop_conditioning(torch.ones(4, 7, 3), torch.zeros(7, 3), 1.0)
    assert out.shape == (4, 7, 3) and out.sum() == 0


def test_drop_conditioning_has_no_host_sync_for_tensors():
    cond = {"c_crossattn": [torch.ones(4, 2, 3, device="meta")]}
    out = drop_conditioning(cond, None, 0.5)
    assert out["c_crossattn"][0].device.type == "meta" and out["c_crossattn"][0].shape == (4, 2, 3)
