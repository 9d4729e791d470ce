"""Sampling-and-checking evaluation of shapes models: balanced captions, reproducible generation, both conditioners."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "diffusion"))

from diffusion_configs import ldm_config  # noqa: E402

from ldm.data.shapes import NUM_CLASSES, class_label_for, parse_caption  # noqa: E402
from ldm.eval.shapes_model import evaluate, evaluation_captions, generate, raw_conditioning  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def test_evaluation_captions_are_balanced_and_seeded():
    caps = evaluation_captions(2 * NUM_CLASSES, seed=3)
    labels = [class_label_for(parse_caption(c)) for c in caps]
    assert sorted(labels) == sorted(list(range(NUM_CLASSES)) * 2)
    assert caps == evaluation_captions(2 * NUM_CLASSES, seed=3) and caps != evaluation_captions(2 * NUM_CLASSES, 4)
    with pytest.raises(ValueError):
        evaluation_captions(0)


@pytest.mark.parametrize("cond", ["caption", "class"])
def test_generate_is_reproducible_and_evaluate_scores(cond):
    cfg = ldm_config(cond)
    if cond == "class":  # the shapes data has 120 classes (+ the null class)
        cfg["params"]["cond_stage_config"]["params"]["n_classes"] = NUM_CLASSES
    model = instantiate_from_config(cfg).eval()
    caps = evaluation_captions(3)
    raw = raw_conditioning(model, caps)
    if cond == "class":
        assert raw["class_label"].tolist() == [class_label_for(parse_caption(c)) for c in caps]
    else:
        assert raw == caps
    a = generate(model, caps, steps=2, scale=2.0, batch_size=2, seed=1)
    b = generate(model, caps, steps=2, scale=2.0, batch_size=3, seed=1)
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)  # one generator across batches: batching does not change the noise
    images, captions, checked = evaluate(model, n=4, steps=2, sampler="dpmpp_2m")
    acc = checked["accuracy"]
    assert images.shape[0] == 4 and captions == evaluation_captions(4)
    assert acc["n"] == 4 and all(0.0 <= acc[k] <= 1.0 for k in ("color", "shape", "size", "position", "all"))
    assert len(checked["detections"]) == 4 and sum(sum(r.values()) for r in checked["confusion"]["color"].values()) == 4


def test_unconditional_models_are_refused():
    model = instantiate_from_config(ldm_config("none"))
    with pytest.raises(ValueError, match="cond_stage_key"):
        raw_conditioning(model, ["a small red circle at the left"])
