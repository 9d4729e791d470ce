"""scripts/img2img.py: end to end in a subprocess on a main.py run; strength 0 and input errors in-process."""
import os

import numpy as np
import pytest
from PIL import Image

from ldm.data import shapes
from ldm.inference.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def init_image(tmp_path):
    """A 64 px shapes image saved as PNG."""
    path = tmp_path / "init.png"
    Image.fromarray(shapes.render_shape(shapes.attributes_for_class(7), 64, np.random.default_rng(0))).save(path)
    return path


def test_class_model_end_to_end(trained_runs, tmp_path, init_image, run_script):
    out = tmp_path / "out"
    proc = run_script("img2img", "-r", trained_runs["class"], "--init-img", init_image, "--prompt",
                      "a small blue square at the top", "--strength", 0.5, "--sampler", "dpmpp_2m", "--steps", 4,
                      "--n_samples", 2, "--outdir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out / "samples")) == ["00000.png", "00001.png"] and (out / "grid-0000.png").is_file()
    meta = read_png_metadata(out / "samples" / "00000.png")
    assert (meta["strength"], meta["init_image"], meta["sampler"]) == (0.5, str(init_image), "dpmpp_2m")
    assert meta["class_label"] == shapes.class_label_for(shapes.parse_caption("a small blue square at the top"))
    assert Image.open(out / "samples" / "00001.png").size == (64, 64)


def test_strength_0_gives_the_input_back(trained_runs, tmp_path, init_image, load_script):
    import torch

    from ldm.inference.codec import decode_latents, encode_images
    from ldm.inference.images import image_to_tensor, open_image, to_uint8
    from ldm.inference.loading import load_model, resolve_source

    run = trained_runs["text"]
    out = load_script("img2img").main(["-r", str(run), "--init-img", str(init_image), "--prompt", "x", "--strength",
                                       "0", "--n_samples", "1", "--no-grid", "--outdir", str(tmp_path / "out")])
    model = load_model(resolve_source(str(run)))
    with torch.no_grad():
        expected = to_uint8(decode_latents(model, encode_images(model, image_to_tensor(open_image(str(init_image))))))
    got = np.asarray(Image.open(out.images[0]), dtype=np.int16)
    assert np.abs(got - expected[0]).max() <= 1  # the reconstruction of the input


def test_bad_input_is_refused_before_the_model_loads(trained_runs, tmp_path, init_image, load_script,
                                                     no_model_loading, assert_refused):
    run = str(trained_runs["text"])
    rgba = np.zeros((64, 64, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    Image.open(init_image).crop((0, 0, 60, 64)).save(tmp_path / "narrow.png")
    main = load_script("img2img").main
    base = ["-r", run, "--prompt", "x"]
    cases = [
        (base + ["--init-img", str(tmp_path / "missing.png")], "--init-img: file not found"),
        (base + ["--init-img", str(tmp_path / "clear.png")], "transparent pixels"),
        (base + ["--init-img", str(tmp_path / "narrow.png")], r"--init-img .*narrow.png: 64x60 .* multiple of 64"),
        (base + ["--init-img", str(init_image), "--strength", "1.5"], "--strength: strength must lie in"),
        (base + ["--init-img", str(init_image), "--sampler", "k_lms"], "unknown sampler 'k_lms'"),
        (["-r", run, "--init-img", str(init_image)], "needs --prompt"),
    ]
    assert_refused(main, cases)
