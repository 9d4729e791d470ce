"""scripts/superres.py: end to end on a tiny trained super-resolution run (subprocess), and the input checks
(fixtures: tests/scripts/conftest.py)."""
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

from ldm.inference import entry  # noqa: E402
from ldm.inference.images import read_png_metadata  # noqa: E402

LR = 16  # x4 below the CPU overlay's 64 px images


def write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"lr{i}.png")
    return folder


@pytest.fixture(scope="session")
def sr_run(tmp_path_factory):
    return task_runs.successful_run("ldm_sr", tmp_path_factory)


def test_superres_end_to_end_in_a_subprocess(sr_run, run_script, tmp_path):
    out = tmp_path / "out"
    proc = run_script("superres", "-r", sr_run, "--input", write_images(tmp_path / "in", [LR, 2 * LR]), "--steps", 2,
                      "--outdir", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["grid-0000.png", "lr0.png", "lr1.png"]
    assert Image.open(out / "lr0.png").size == (4 * LR, 4 * LR)
    assert Image.open(out / "lr1.png").size == (8 * LR, 8 * LR)  # any multiple of the grid, not only the trained size
    meta = read_png_metadata(str(out / "lr1.png"))
    assert meta["size"] == [8 * LR, 8 * LR] and meta["input_size"] == [2 * LR, 2 * LR] and meta["seed"] == 43
    assert Image.open(out / "grid-0000.png").size == (2 * 4 * LR + 3 * 2, 2 * 4 * LR + 3 * 2)


def test_bad_input_fails_before_the_model_loads(sr_run, tiny_run, load_script, no_model_loading, tmp_path, capsys):
    good = write_images(tmp_path / "good", [LR]) / "lr0.png"
    odd = write_images(tmp_path / "odd", [12]) / "lr0.png"
    cases = [
        (["-r", str(sr_run), "--input", str(tmp_path / "missing.png")], "--input: no such file or folder"),
        (["-r", str(sr_run), "--input", str(tmp_path / "good" / "..")], "holds no images"),
        (["-r", str(sr_run), "--input", str(odd)], "use sides that are multiples of 16"),
        (["-r", str(tiny_run("class")), "--input", str(good)], "not a super-resolution model"),
        (["--config", f"{ROOT}/configs/ldm_sr.yaml", "--ckpt", str(tmp_path / "nope.ckpt"), "--input", str(good)],
         "--ckpt: checkpoint file not found"),
    ]
    script = load_script("superres")
    for args, message in cases:
        code = entry.run(script.main, args)
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
