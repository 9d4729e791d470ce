"""Bad input to the sampling scripts fails before the model loads, in one line: an --outdir that cannot be written,
a batch that cannot fit in memory; empty prompts and negative guidance scales run with a one-line warning.

The tiny runs and helpers come from tests/scripts/conftest.py (loaded by path: both folders have a conftest.py).
"""

import errno
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ldm.errors import UsageError
from ldm.inference import entry, memory, validation
from ldm.inference.conditioning import check_scale, empty_prompt_warnings, scale_warnings
from ldm.inference.model_info import describe_model
from ldm.util import load_configs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scripts_conftest = _load("scripts_conftest", "tests/scripts/conftest.py")
tiny_run, load_script, one_thread = scripts_conftest.tiny_run, scripts_conftest.load_script, scripts_conftest.one_thread
no_model_loading, assert_refused = scripts_conftest.no_model_loading, scripts_conftest.assert_refused
reconstruct_tests = _load("reconstruct_tests", "tests/scripts/test_reconstruct.py")

pytestmark = pytest.mark.usefixtures("one_thread")
GiB = 1024 ** 3


def write_image(path, size=16, mode="RGB", value=None):
    """A 16 px image (the tiny models' size), random unless `value` is given."""
    channels = 3 if mode == "RGB" else 1
    data = np.random.default_rng(0).integers(0, 255, (size, size, channels), dtype=np.uint8)
    if value is not None:
        data[:] = value
    Image.fromarray(data.squeeze()).convert(mode).save(path)
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    """{"image": 16 px RGB, "mask": its mask (white square)} paths."""
    image = write_image(tmp_path / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "in_mask.png")
    return {"image": image, "mask": str(tmp_path / "in_mask.png")}


def script_args(name, run, inputs):
    """Arguments that make scripts/<name>.py otherwise valid on the tiny unconditional `run`."""
    extra = {"txt2img": [], "sample_diffusion": [], "img2img": ["--init-img", inputs["image"]],
             "inpaint": ["--image", inputs["image"], "--mask", inputs["mask"]],
             "superres": ["--input", inputs["image"]]}
    return ["-r", str(run), *extra[name]]


OUTDIR_SCRIPTS = ["txt2img", "img2img", "inpaint", "superres", "sample_diffusion"]


@pytest.mark.parametrize("name", OUTDIR_SCRIPTS)
def test_unwritable_outdir_is_refused_before_the_model_loads(name, tiny_run, tmp_path, inputs, load_script,
                                                             no_model_loading, assert_refused, monkeypatch):
    args = script_args(name, tiny_run("none"), inputs)
    taken = tmp_path / "a_file"
    taken.write_text("")
    cases = [(args + ["--outdir", str(taken)], rf"--outdir {taken}: not writable \(it is a file, not a folder\)"),
             (args + ["--outdir", str(taken / "sub")], rf"--outdir {taken}/sub: not writable \({taken} is a file")]
    assert_refused(load_script(name).main, cases)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(validation.tempfile, "mkstemp", denied)
    assert_refused(load_script(name).main, [
        (args + ["--outdir", str(tmp_path)], rf"^error: --outdir {tmp_path}: not writable \(permission denied\)$"),
        (args + ["--outdir", str(tmp_path / "new" / "deeper")],
         rf"--outdir {tmp_path}/new/deeper: not writable \(cannot create .* in {tmp_path}: permission denied\)")])
    assert not (tmp_path / "new").exists()


def test_sample_diffusion_checks_its_default_outdir_in_the_run(tiny_run, load_script, no_model_loading,
                                                              assert_refused):
    run = tiny_run("none")
    (run / "samples").write_text("")  # the default outdir is <run>/samples/<settings>
    message = rf"--outdir {run}/samples/last_ddim_50.*: not writable \({run}/samples is a file"
    assert_refused(load_script("sample_diffusion").main, [(["-r", str(run)], message)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UsageError, match=r"not writable \(permission denied\)"):
            validation.check_outdir(str(folder))
    finally:
        folder.chmod(0o755)


def test_outdir_check_leaves_nothing_behind(tmp_path, monkeypatch):
    assert validation.check_outdir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert validation.check_outdir(str(tmp_path)) == str(tmp_path)
    assert os.listdir(tmp_path) == []  # neither the folders nor the test file
    monkeypatch.setattr(validation.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(OSError(errno.EROFS, "")))
    with pytest.raises(UsageError, match=r"--out x/y.png: not writable \(.*read-only file system\)"):
        validation.check_output_file("x/y.png", "--out")
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        validation.check_output_file(str(tmp_path), "--json")


def test_reconstruct_checks_its_outputs_before_loading(tmp_path, repo_root, monkeypatch, capsys):
    run, _ = reconstruct_tests.make_run(tmp_path, repo_root)
    main = reconstruct_tests.load_script(repo_root).main

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ldm.models.from_run.load_inference_model", refuse)
    taken = tmp_path / "a_file"
    taken.write_text("")
    cases = [(["-r", str(run), "--out", str(tmp_path)], "is a folder; give a file name"),
             (["-r", str(run), "--out", str(taken / "grid.png")], rf"not writable \({taken} is a file"),
             (["-r", str(run), "--json", str(taken / "m.json")], rf"--json {taken}/m.json: not writable"),
             (["-r", str(tmp_path / "missing")], "-r/--resume"),
             (["-r", str(run), "--n", "0"], "--n must be a positive integer")]
    for argv, message in cases:
        assert entry.run(main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err) and err.count("\n") == 1, (argv, err)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024 ** 2)
    assert entry.run(main, ["-r", str(run), "--n", "1000"]) == 2
    assert re.match(r"error: --n 1000: needs at least .* more than the 1 MiB available on cpu; use a smaller --n",
                    capsys.readouterr().err)


@pytest.fixture
def one_gib(monkeypatch):
    """Pretend the device has 1 GiB free."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: GiB)


def test_batches_that_cannot_fit_are_refused_before_the_model_loads(tiny_run, inputs, load_script, one_gib,
                                                                    no_model_loading, assert_refused):
    run = tiny_run("none")
    fit = r"more than the 1.0 GiB available on cpu; "
    assert_refused(load_script("txt2img").main, [
        (["-r", str(run), "--n_samples", "100000"], r"--n_samples 100000: needs at least [\d.]+ GiB of memory \(a "
         r"lower-bound estimate from the model config\), " + fit + r"use a smaller --n_samples with more --n_iter, "
         r"e.g. --n_samples (\d+) --n_iter (\d+)$")])
    assert_refused(load_script("img2img").main, [
        (["-r", str(run), "--init-img", inputs["image"], "--n_samples", "100000", "--n_iter", "3"],
         "--n_samples 100000: .*" + fit + "use a smaller --n_samples")])
    assert_refused(load_script("sample_diffusion").main, [
        (["-r", str(run), "-n", "100000", "--batch_size", "100000"],
         "--batch_size 100000: .*" + fit + r"use a smaller --batch_size, e.g. --batch_size \d+ \(-n stays the "
         r"total\)")])


def test_the_suggested_batch_fits(tiny_run, load_script, one_gib, no_model_loading, capsys):
    run = str(tiny_run("none"))
    main = load_script("txt2img").main
    assert entry.run(main, ["-r", run, "--n_samples", "100000"]) == 2
    fit, iters = map(int, re.search(r"--n_samples (\d+) --n_iter (\d+)$", capsys.readouterr().err.strip()).groups())
    assert fit * iters >= 100000 and fit & (fit - 1) == 0  # a power of two, covering all images
    with pytest.raises(AssertionError, match="the model was loaded"):  # every check passed
        main(["-r", run, "--n_samples", str(fit), "--n_iter", str(iters)])


def test_one_huge_image_and_eval_shapes(tiny_run, inputs, load_script, monkeypatch, no_model_loading, capsys):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    run = tiny_run("class")
    assert entry.run(load_script("inpaint").main, ["-r", str(run), "--image", inputs["image"], "--mask",
                                                 inputs["mask"], "--prompt", "3"]) == 2
    assert re.match(rf"error: --image {inputs['image']}: needs at least .* even one image of this size does not fit",
                    capsys.readouterr().err)
    monkeypatch.setattr("ldm.models.from_run.load_inference_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        load_script("eval_shapes").main(["-r", str(run), "--batch_size", "64", "--device", "cpu"])
    assert exit_.value.code == 2 and "error: --batch_size 64: needs at least" in capsys.readouterr().err


def test_an_impossible_batch_is_refused_with_the_real_free_memory(tiny_run, load_script, no_model_loading,
                                                                  assert_refused):
    # 10^9 images of 16 px need over 100 TiB even by the lower-bound estimate
    assert_refused(load_script("txt2img").main, [(["-r", str(tiny_run("none")), "--n_samples", str(10 ** 9)],
                                                  r"--n_samples 1000000000: needs at least \d+\.\d GiB")])


@pytest.mark.parametrize("config", ["ldm_txt2img", "ldm_cin", "ldm_uncond"])
def test_normal_batches_of_the_real_configs_stay_small(config):
    cfg = load_configs([os.path.join(ROOT, "configs", f"{config}.yaml")])
    info = describe_model(cfg)
    guided = info.conditioning is not None
    for batch in (4, 16, 64):
        needed = memory.diffusion_batch_bytes(cfg, info, batch, 256, 256, guided)
        assert needed < batch * 256 * 2 ** 20, (batch, needed)  # under 256 MiB an image: 64 fit on a 24 GB GPU
    assert memory.diffusion_batch_bytes(cfg, info, 4, 256, 256, guided, half=True) < needed


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak RSS through /proc")
def test_the_estimate_stays_below_the_measured_peak(tmp_path):
    """The estimate must be a lower bound, or it would refuse batches that fit: sample a batch and compare."""
    code = f"""
import sys, torch
sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests", "models", "diffusion")!r}]
import diffusion_configs
from omegaconf import OmegaConf
from ldm.util import instantiate_from_config
from ldm.inference.generate import Settings, batch_samples
from ldm.inference.memory import diffusion_batch_bytes
from ldm.inference.model_info import describe_model
torch.set_num_threads(1)
config = OmegaConf.create({{"model": diffusion_configs.ldm_config("class")}})
info, model = describe_model(config), instantiate_from_config(config.model).eval()
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM, the peak
with torch.no_grad():
    batch_samples(model, info, [1] * 256, list(range(256)), Settings(sampler="ddim", steps=1, scale=3.0,
                  height=16, width=16), torch.device("cpu"), show_progress=False)
print(status("VmHWM:") - base, diffusion_batch_bytes(config, info, 256, 16, 16, guided=True))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if "clear_refs" in proc.stderr and proc.returncode:
        pytest.skip("cannot reset the peak RSS here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured, estimate = map(int, proc.stdout.split())
    assert 0 < estimate <= measured, (estimate, measured)


def run_with_warnings(main, argv, capsys):
    """Run a script's main in-process; (return value, its `warning:` lines on stderr, which also has progress bars)."""
    result = main(argv)
    return result, [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_empty_prompts_and_negative_scales_warn_and_run(tiny_run, tmp_path, load_script, capsys):
    run, main = str(tiny_run("caption")), load_script("txt2img").main
    base = ["-r", run, "--steps", "1", "--sampler", "ddim", "--n_samples", "1", "--no-grid"]
    out, warned = run_with_warnings(main, base + ["--prompt", "", "--outdir", str(tmp_path / "a")], capsys)
    assert len(out.images) == 1 and warned == ["warning: --prompt is empty: it samples the unconditional model"]
    out, warned = run_with_warnings(main, base + ["--prompt", "x", "--scale", "-2", "--outdir", str(tmp_path / "b")],
                                    capsys)
    assert len(out.images) == 1
    assert warned == ["warning: --scale -2 is negative: guidance pushes away from the prompt"]
    for scale in ("0", "0.5", "1"):  # towards the unconditional model: legitimate, no warning
        _, warned = run_with_warnings(main, base + ["--prompt", "x", "--scale", scale, "--outdir",
                                                    str(tmp_path / "c")], capsys)
        assert warned == []
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  \na blue square\n\n")
    out, warned = run_with_warnings(main, base + ["--from-file", str(prompts), "--outdir", str(tmp_path / "d")],
                                    capsys)
    assert len(out.images) == 2  # blank lines are skipped, as before; the trailing one silently
    assert warned == [f"warning: --from-file {prompts}: skipped 2 blank line(s) (line 2, 3); prompt numbers count "
                      "non-blank lines only"]


def test_other_scripts_warn_before_loading(tiny_run, inputs, load_script, no_model_loading, capsys):
    run = str(tiny_run("class"))
    with pytest.raises(AssertionError, match="the model was loaded"):
        load_script("sample_diffusion").main(["-r", run, "--scale", "-1", "--outdir", str(os.path.dirname(
            inputs["image"]))])
    assert capsys.readouterr().err == "warning: --scale -1 is negative: guidance pushes away from the prompt\n"
    with pytest.raises(AssertionError, match="the model was loaded"):
        load_script("inpaint").main(["-r", run, "--image", inputs["image"], "--mask", inputs["mask"], "--prompt",
                                     "3", "--scale", "-0.5"])
    assert "warning: --scale -0.5 is negative" in capsys.readouterr().err


def test_prompt_and_scale_helpers(tiny_run):
    from ldm.inference.loading import resolve_source

    text = describe_model(resolve_source(str(tiny_run("caption"))).config)
    assert empty_prompt_warnings(text, ["a", " ", "b", ""]) == [f"prompt {k} is empty: it samples the unconditional "
                                                                "model" for k in (2, 4)]
    assert empty_prompt_warnings(text, ["a"]) == [] and empty_prompt_warnings(text, None) == []
    assert scale_warnings(-0.1) and not scale_warnings(0.0) and not scale_warnings(0.7)
    for bad in ("nan", "inf"):
        with pytest.raises(UsageError, match=f"--scale {bad}: must be a finite number"):
            check_scale(text, float(bad))
