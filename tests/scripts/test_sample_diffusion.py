"""scripts/sample_diffusion.py: class-conditional batches end to end in a subprocess, resume, .npz, errors."""
import json
import os

import numpy as np
import pytest

from ldm.inference.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


def test_class_batches_end_to_end_then_resume(trained_runs, tmp_path, run_script, load_script):
    out = tmp_path / "samples"
    args = ["-r", trained_runs["class"], "--batch_size", 2, "--steps", 2, "--classes", 5, 9, "--scale", 2,
            "--outdir", out]
    proc = run_script("sample_diffusion", "-n", 3, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["existing"], summary["written"]) == (0, 3)
    data = np.load(summary["npz"])
    assert data["arr_0"].shape == (3, 64, 64, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [5, 9, 5]
    meta = read_png_metadata(out / "000001.png")
    assert (meta["class_label"], meta["seed"], meta["scale"], meta["index"]) == (9, 43, 2.0, 1)

    os.remove(out / "000002.png")  # interrupted before image 2 was written
    summary = load_script("sample_diffusion").main(["-n", "4", *map(str, args)])
    assert (summary["existing"], summary["written"], summary["total"]) == (2, 2, 4)
    assert np.load(summary["npz"])["arr_1"].tolist() == [5, 9, 5, 9]
    assert not (out / "samples_3x64x64x3.npz").exists()


def test_default_outdir_lies_in_the_run(tiny_run, load_script):
    run = tiny_run("none")
    summary = load_script("sample_diffusion").main(["-r", str(run), "-n", "2", "--steps", "2", "--sampler", "euler"])
    assert summary["npz"] == str(run / "samples" / "last_euler_2_scale1_seed42" / "samples_2x16x16x3.npz")
    assert "arr_1" not in np.load(summary["npz"])  # no labels for an unconditional model


def test_bad_input_is_refused_before_the_model_loads(trained_runs, tmp_path, load_script, no_model_loading,
                                                     assert_refused):
    cls, text = str(trained_runs["class"]), str(trained_runs["text"])
    out = tmp_path / "taken"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"seed": 1}))
    main = load_script("sample_diffusion").main
    cases = [
        (["-r", cls, "-n", "0"], "-n/--n_samples must be a positive integer"),
        (["-r", cls, "--classes", "120"], r"--classes: \[120\] out of range"),
        (["-r", text], "sample_diffusion makes unconditional or class-conditional batches"),
        (["-r", cls, "--sampler", "heun", "--eta", "1"], "heun is deterministic"),
        (["-r", cls, "--outdir", str(out)], "holds samples made with other settings"),
    ]
    assert_refused(main, cases)
