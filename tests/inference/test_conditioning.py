import pytest
import torch

from ldm.data import shapes
from ldm.errors import UsageError
from ldm.inference.conditioning import check_prompts, check_scale, class_label, guidance_pair
from ldm.inference.sampling import initial_noise, sample


def test_class_prompts():
    assert class_label("17", 120) == 17
    caption = "a small red circle at the left"
    assert class_label(caption, 120) == shapes.class_label_for(shapes.parse_caption(caption))
    with pytest.raises(UsageError, match="out of range: this model has classes 0..9"):
        class_label("10", 10)
    with pytest.raises(UsageError, match="takes class indices 0..999"):
        class_label("a goldfish", 1000)
    with pytest.raises(UsageError, match="neither a class index nor a shapes caption"):
        class_label("a purple circle", 120)


def test_prompts_and_scale_fit_the_model(class_model, uncond_model):
    _, cls = class_model
    _, uncond = uncond_model
    assert check_prompts(cls, ["3", "7"]) == [3, 7]
    with pytest.raises(UsageError, match="needs --prompt"):
        check_prompts(cls, None)
    assert check_prompts(uncond, None) is None
    with pytest.raises(UsageError, match="unconditional: it takes no --prompt"):
        check_prompts(uncond, ["a cat"])
    assert check_scale(cls, None) == 3.0 and check_scale(uncond, None) == 1.0
    with pytest.raises(UsageError, match="guidance needs a text or class-conditional model"):
        check_scale(uncond, 2.0)


def test_class_guidance_at_scale_1_is_the_conditional_model(class_model):
    model, info = class_model
    labels = [3, 7]
    noise = initial_noise(info.latent_shape(16, 16), [0, 1])
    cond, uncond = guidance_pair(model, labels, 1.0)
    assert uncond is None
    direct = model.sample(cond=model.get_learned_conditioning(torch.tensor(labels)), x_T=noise, sampler="ddim",
                          steps=5)
    assert torch.equal(sample(model, noise, "ddim", 5, cond, uncond, 1.0, show_progress=False), direct)
    null = model.unconditional_conditioning(2)
    assert torch.equal(sample(model, noise, "ddim", 5, cond, null, 1.0, show_progress=False), direct)

    cond, uncond = guidance_pair(model, labels, 3.0)  # the null class (index 10) for guidance
    embedder = model.cond_stage_model
    assert torch.equal(uncond, embedder.embedding.weight[[embedder.null_label] * 2][:, None])
    guided = sample(model, noise, "ddim", 5, cond, uncond, 3.0, show_progress=False)
    assert not torch.allclose(guided, direct)
