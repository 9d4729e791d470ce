"""scripts/inpaint.py: end to end on a tiny trained inpainting run (subprocess), mask-guided inpainting with an
unconditional model, and the input checks that fail before any model loads (fixtures: tests/scripts/conftest.py)."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIFFUSION_TESTS = os.path.join(ROOT, "tests", "models", "diffusion")
if DIFFUSION_TESTS not in sys.path:
    sys.path.insert(0, DIFFUSION_TESTS)

import task_runs  # noqa: E402

from ldm.data.masks import BoxMasks  # noqa: E402
from ldm.inference import entry  # noqa: E402
from ldm.inference.images import read_png_metadata  # noqa: E402

SIZE = 64  # the CPU overlay's image side (= the inpainting UNet's size multiple there)


def write_pairs(folder, n=2, size=SIZE):
    """n smooth RGB images `<i>.png` with box masks `<i>_mask.png`; returns the (image, mask) arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        image = (127 + 100 * np.sin(xx[..., None] / (4 + i) + yy[..., None] / 6 + np.arange(3))).astype(np.uint8)
        mask = (BoxMasks(num_boxes=1, side_fraction=0.4)(size, i)[..., 0] * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
        Image.fromarray(mask).save(folder / f"{i}_mask.png")
        out.append((image, mask))
    return out


@pytest.fixture(scope="session")
def inpainting_run(tmp_path_factory):
    return task_runs.successful_run("ldm_inpainting", tmp_path_factory)


def test_concat_inpainting_end_to_end_in_a_subprocess(inpainting_run, run_script, tmp_path):
    pairs = write_pairs(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_script("inpaint", "-r", inpainting_run, "--indir", tmp_path / "in", "--steps", 2, "--outdir", out,
                      "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["0.png", "1.png", "grid-0000.png"]
    for i, (image, mask) in enumerate(pairs):
        result = np.asarray(Image.open(out / f"{i}.png"))
        assert result.shape == image.shape
        known = mask < 128
        assert np.array_equal(result[known], image[known])  # only the hole changes
        meta = read_png_metadata(str(out / f"{i}.png"))
        assert meta["mode"] == "concat" and meta["seed"] == 42 + i and meta["mask"].endswith(f"{i}_mask.png")
    grid = Image.open(out / "grid-0000.png")
    assert grid.size == (3 * SIZE + 4 * 2, 2 * SIZE + 3 * 2)  # masked input | mask | result, two rows


def test_mask_guided_inpainting_with_an_unconditional_model(tiny_run, load_script, tmp_path):
    (image, mask), = write_pairs(tmp_path, n=1, size=16)  # the tiny 16 px model of diffusion_configs.py
    outputs = load_script("inpaint").main(["-r", str(tiny_run("none")), "--image", str(tmp_path / "0.png"),
                                           "--mask", str(tmp_path / "0_mask.png"), "--steps", "2", "--sampler",
                                           "dpmpp_2m", "--outdir", str(tmp_path / "out"), "--no-grid",
                                           "--device", "cpu"])
    assert outputs.grid is None and len(outputs.images) == 1
    result = np.asarray(Image.open(outputs.images[0]))
    known = mask < 128
    assert np.array_equal(result[known], image[known]) and not np.array_equal(result[~known], image[~known])
    assert read_png_metadata(outputs.images[0])["mode"] == "guided"


def test_bad_input_fails_before_the_model_loads(inpainting_run, tiny_run, load_script, no_model_loading, tmp_path,
                                                capsys):
    write_pairs(tmp_path)
    image, mask = str(tmp_path / "0.png"), str(tmp_path / "0_mask.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small_mask.png")
    Image.new("L", (SIZE, SIZE), 0).save(tmp_path / "empty_mask.png")
    cases = [
        (["--config", f"{ROOT}/configs/ldm_inpainting.yaml", "--ckpt", str(tmp_path / "nope.ckpt"), "--image", image,
          "--mask", mask], "--ckpt: checkpoint file not found"),
        (["-r", str(inpainting_run), "--image", str(tmp_path / "missing.png"), "--mask", mask],
         "--image: file not found"),
        (["-r", str(inpainting_run), "--image", image, "--mask", str(tmp_path / "small_mask.png")],
         "they must match"),
        (["-r", str(inpainting_run), "--image", image, "--mask", str(tmp_path / "empty_mask.png")],
         "marks nothing to fill in"),
        (["-r", str(inpainting_run), "--image", image, "--mask", mask, "--mode", "guided"],
         "is a concat inpainting model"),
        (["-r", str(tiny_run("none")), "--image", image, "--mask", mask, "--mode", "concat"],
         "not a concat inpainting model"),
        (["-r", str(inpainting_run), "--indir", str(tmp_path / "nothing")], "--indir: no such folder"),
        (["-r", str(inpainting_run), "--image", image], "give --image <file> and --mask <file>"),
        (["-r", str(inpainting_run), "--image", image, "--mask", mask, "--prompt", "a cat"], "takes no prompt"),
    ]
    script = load_script("inpaint")
    for args, message in cases:
        code = entry.run(script.main, args)
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
    assert "--mode" in script.get_parser().format_help()
