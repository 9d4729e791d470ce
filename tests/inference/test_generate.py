import os

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.errors import UsageError
from ldm.inference.eval_samples import EvalSettings, check_classes, claim_folder, labels_for, sample_folder
from ldm.inference.generate import Settings, generate
from ldm.inference.images import read_png_metadata

CPU = torch.device("cpu")


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_generate_writes_seeded_images_with_metadata_and_a_grid(class_model, tmp_path):
    model, info = class_model
    settings = Settings(sampler="ddim", steps=4, scale=3.0, seed=10, n_samples=2, n_iter=1, height=16, width=16)
    out = generate(model, info, ["3", "7"], [3, 7], settings, str(tmp_path), CPU, show_progress=False)
    assert [os.path.basename(p) for p in out.images] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert Image.open(out.grid).size == (2 * 18 + 2, 2 * 18 + 2)  # a row per batch, n_samples columns
    meta = read_png_metadata(out.images[3])
    assert (meta["prompt"], meta["class_label"], meta["seed"]) == ("7", 7, 13)
    assert (meta["sampler"], meta["steps"]) == ("ddim", 4)
    assert meta["eta"] == 0.0 and meta["scale"] == 3.0 and "strength" not in meta
    assert read_png_metadata(out.grid)["prompts"] == ["3", "7"]

    # numbering continues; one image comes back from its own seed with n_samples 1 (a deterministic sampler)
    alone = Settings(**{**settings.__dict__, "seed": 13, "n_samples": 1})
    again = generate(model, info, ["7"], [7], alone, str(tmp_path), CPU, show_progress=False)
    assert os.path.basename(again.images[0]) == "00004.png" and again.grid.endswith("grid-0001.png")
    assert np.abs(pixels(again.images[0]) - pixels(out.images[3])).max() <= 1


def test_unconditional_generation(uncond_model, tmp_path):
    model, info = uncond_model
    settings = Settings(sampler="euler_a", steps=3, n_samples=2, height=16, width=16)
    out = generate(model, info, None, None, settings, str(tmp_path), CPU, show_progress=False, grid=False)
    assert len(out.images) == 2 and out.grid is None
    assert "prompt" not in read_png_metadata(out.images[0]) and "eta" not in read_png_metadata(out.images[0])


def test_eval_samples_resume_without_redoing_images(class_model, tmp_path):
    model, info = class_model
    settings = EvalSettings(sampler="ddim", steps=3, height=16, width=16, n=3, batch_size=2, classes=[4, 6])
    summary = sample_folder(model, info, settings, str(tmp_path), CPU, show_progress=False)
    assert (summary["existing"], summary["written"]) == (0, 3)
    first = pixels(tmp_path / "000001.png")
    os.remove(tmp_path / "000001.png")  # an interrupted run: image 1 never got written
    summary = sample_folder(model, info, EvalSettings(**{**settings.__dict__, "n": 4, "batch_size": 3}),
                            str(tmp_path), CPU, show_progress=False)
    assert (summary["existing"], summary["written"], summary["total"]) == (2, 2, 4)
    assert np.abs(pixels(tmp_path / "000001.png") - first).max() <= 1  # the same image again
    data = np.load(summary["npz"])
    assert data["arr_0"].shape == (4, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [4, 6, 4, 6]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".npz")) == ["samples_4x16x16x3.npz"]
    assert read_png_metadata(tmp_path / "000003.png")["class_label"] == 6

    with pytest.raises(UsageError, match=r"other settings \(seed: 42 -> 1\)"):
        claim_folder(str(tmp_path), EvalSettings(**{**settings.__dict__, "seed": 1}))


def test_classes_fit_the_model(class_model, uncond_model):
    _, info = class_model
    assert labels_for(info, None, range(12)) == list(range(10)) + [0, 1]
    assert labels_for(uncond_model[1], None, range(3)) is None
    with pytest.raises(UsageError, match=r"\[10\] out of range; this model has classes 0..9"):
        check_classes(info, [1, 10])
    with pytest.raises(UsageError, match="not class-conditional"):
        check_classes(uncond_model[1], [1])


def test_seeded_samples_refuses_guidance_without_conditioning():
    from ldm.inference.generate import seeded_samples

    with pytest.raises(ValueError, match="guidance scale 3.0 needs conditioning values"):
        seeded_samples(None, (4, 8, 8), None, [0], "ddim", 2, 3.0)
