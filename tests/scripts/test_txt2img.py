"""scripts/txt2img.py: end to end in a subprocess on a main.py run, in-process for the other cases."""
import os

import pytest
from PIL import Image

from ldm.data import shapes
from ldm.inference.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


def test_text_model_end_to_end(trained_runs, tmp_path, run_script):
    out = tmp_path / "out"
    prompt = "a large red circle at the left"
    proc = run_script("txt2img", "-r", trained_runs["text"], "--prompt", prompt, "--steps", 3, "--n_samples", 2,
                      "--scale", 4, "--outdir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 2 image(s)" in proc.stdout
    assert sorted(os.listdir(out / "samples")) == ["00000.png", "00001.png"]
    assert Image.open(out / "samples" / "00000.png").size == (64, 64)  # the trained size by default
    assert Image.open(out / "grid-0000.png").size == (2 * 66 + 2, 66 + 2)
    meta = read_png_metadata(out / "samples" / "00001.png")
    assert (meta["prompt"], meta["seed"], meta["sampler"], meta["steps"], meta["scale"]) == (prompt, 43, "dpmpp_2m", 3,
                                                                                             4.0)
    assert meta["ema"] is True and meta["precision"] == "fp32" and meta["model"].endswith("last.ckpt")


def test_class_model_prompts_from_a_file(trained_runs, tmp_path, load_script):
    caption = "a small blue square at the top"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{caption}\n17\n")
    ckpt = trained_runs["class"] / "checkpoints" / "last.ckpt"
    out = load_script("txt2img").main(["-r", str(ckpt), "--from-file", str(prompts), "--sampler", "euler_a",
                                       "--steps", "2", "--n_samples", "1", "--n_iter", "2", "--no-ema",
                                       "--no-grid", "--outdir", str(tmp_path / "out")])
    metas = [read_png_metadata(p) for p in out.images]
    label = shapes.class_label_for(shapes.parse_caption(caption))
    assert [m["class_label"] for m in metas] == [label, label, 17, 17]
    assert [m["seed"] for m in metas] == [42, 43, 44, 45]
    assert metas[0]["ema"] is False and metas[0]["scale"] == 3.0
    assert out.grid is None


def test_unconditional_model(tiny_run, tmp_path, load_script):
    run = tiny_run("none")
    out = load_script("txt2img").main(["-r", str(run), "--sampler", "ddim", "--steps", "2", "--n_samples", "3",
                                       "--H", "32", "--W", "16", "--precision", "bf16", "--outdir",
                                       str(tmp_path / "out")])
    assert len(out.images) == 3 and Image.open(out.images[0]).size == (16, 32)
    meta = read_png_metadata(out.images[0])
    assert "prompt" not in meta and meta["precision"] == "bfloat16" and meta["scale"] == 1.0


def test_bad_input_is_refused_before_the_model_loads(trained_runs, tmp_path, load_script, no_model_loading,
                                                     assert_refused):
    text, cls = str(trained_runs["text"]), str(trained_runs["class"])
    main = load_script("txt2img").main
    cases = [
        (["-r", str(tmp_path / "missing"), "--prompt", "x"], "-r/--resume: cannot find"),
        (["-r", text, "--prompt", "x", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["-r", text, "--prompt", "x", "--sampler", "plms", "--eta", "0.5"], "plms is deterministic"),
        (["-r", text], "needs --prompt"),
        (["-r", text, "--from-file", str(tmp_path / "none.txt")], "prompt file not found"),
        (["-r", text, "--prompt", "x", "--H", "100"], "--H/--W: 100x64 .* not a multiple of 64"),
        (["-r", text, "--prompt", "x", "--n_samples", "0"], "--n_samples must be a positive integer"),
        (["-r", cls, "--prompt", "a purple circle"], "neither a class index nor a shapes caption"),
        (["-r", cls, "--prompt", "500"], "class 500 is out of range"),
        (["--config", "x.yaml"], "--config needs --ckpt"),
        (["-r", text, "--prompt", "x", "--ckpt", str(tmp_path / "gone.ckpt")], "checkpoint file not found"),
        (["-r", text, "--prompt", "x", "--device", "toaster"], "--device"),
    ]
    assert_refused(main, cases)


def test_help(load_script, capsys):
    try:
        load_script("txt2img").main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    text = capsys.readouterr().out
    assert "--sampler" in text and "euler_a" in text and "classifier-free guidance" in text and "-r RUN" in text
