"""scripts/evaluate.py: stage-2 metrics end to end with the test extractor (samples and reference reused on a rerun),
stage-1 reconstruction metrics (LPIPS listed as unavailable without the VGG16 weights), bad input."""
import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.util import instantiate_from_config, load_configs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_downloads(tmp_path, monkeypatch):
    """An empty torch hub cache (no VGG16 / Inception weights) and a private feature cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_stage2_metrics_then_rerun_reuses_samples_and_reference(trained_runs, tmp_path, load_script, capsys,
                                                                no_downloads):
    evaluate = load_script("evaluate")
    args = ["-r", str(trained_runs["text"]), "--n", "8", "--features", "random", "--steps", "2", "--batch", "4",
            "--no-progress"]
    first = evaluate.main([*args, "--out", str(tmp_path / "first")])
    table = capsys.readouterr().out
    assert first["kind"] == "generation" and first["n"] == 8
    assert {"fid", "kid_mean", "kid_std", "is_mean", "is_std"} <= set(first["metrics"])
    assert first["metrics"]["fid"] > 0 and all(math.isfinite(v) for v in first["metrics"].values())
    assert "no CLIP model given" in first["unavailable"]["clip_score"]
    for label in ("FID", "KID", "IS", "CLIP score"):
        assert f"  {label}" in table
    saved = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert saved["metrics"] == first["metrics"]
    assert Image.open(tmp_path / "first" / "grid.png").size[0] > 64
    assert not first["reference"]["reused"] and first["reused_samples"] == 0
    assert first["reference"]["cache"].startswith(str(tmp_path / "xdg" / "ldm" / "fid_stats"))
    samples = sorted(os.listdir(first["samples"]))
    assert samples[:8] == [f"{i:06d}.png" for i in range(8)]

    second = evaluate.main([*args, "--out", str(tmp_path / "second")])
    assert second["reused_samples"] == 8 and second["reference"]["reused"]
    assert second["metrics"] == pytest.approx(first["metrics"])


def make_stage1_run(tmp_path, repo_root):
    """A KL-f8 run folder of the CPU overlay at 32 px on the shapes data (random weights)."""
    cfg = load_configs([f"{repo_root}/configs/autoencoder_kl_f8.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    cfg.data.params.validation.params.size = 32
    cfg.data.params.validation.params.source = "shapes"
    run = tmp_path / "2026-01-01T00-00-00_ae"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["model", "data"]), run / "configs" / "2026-01-01T00-00-00-project.yaml")
    torch.save({"state_dict": instantiate_from_config(cfg.model).state_dict()}, run / "checkpoints" / "last.ckpt")
    return run


def test_stage1_gets_reconstruction_metrics_lpips_unavailable_offline(tmp_path, repo_root, load_script, capsys,
                                                                      no_downloads):
    run = make_stage1_run(tmp_path, repo_root)
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)]):
        Image.new("RGB", (48, 40), color).save(ref / f"{i}.png")
    result = load_script("evaluate").main(["-r", str(run), "--ref", str(ref), "--n", "3", "--features", "random",
                                           "--batch", "2", "--no-progress"])
    assert result["kind"] == "reconstruction" and result["n"] == 3
    assert {"psnr", "ssim", "rfid"} <= set(result["metrics"]) and "lpips" not in result["metrics"]
    assert 0 < result["metrics"]["psnr"] < 100 and -1 <= result["metrics"]["ssim"] <= 1
    assert "vgg16-397923af.pth" in result["unavailable"]["lpips"]
    assert "LPIPS" in capsys.readouterr().out
    assert os.path.isfile(result["metrics_file"]) and result["metrics_file"].startswith(str(run / "eval"))


def test_bad_input_is_one_line_error(tmp_path, repo_root, load_script, assert_refused, no_downloads):
    run = make_stage1_run(tmp_path, repo_root)
    main = load_script("evaluate").main
    assert_refused(main, [
        (["-r", str(tmp_path / "missing")], "missing"),
        (["-r", str(run), "--ref", str(tmp_path / "nowhere")], "--ref .*nowhere"),
        (["-r", str(run), "--n", "0"], "--n"),
        # offline without the Inception weights: the file, where it goes and the flag for a local copy
        (["-r", str(run), "--features", "inception"],
         r"weights-inception-2015-12-05-6726825d\.pth.*hub/checkpoints.*--inception-weights"),
    ])


def test_reconstruct_reports_psnr_ssim_through_the_metrics_module(tmp_path, repo_root, load_script, no_downloads):
    """scripts/reconstruct.py shares ldm.eval.metrics: PSNR/SSIM values, and why LPIPS is absent offline."""
    from ldm.eval.metrics import psnr, ssim
    from ldm.eval.samples import reconstruct
    from ldm.models.from_run import load_model_from_run

    run = make_stage1_run(tmp_path, repo_root)
    metrics = load_script("reconstruct").main(["-r", str(run), "--n", "2"])
    assert "vgg16-397923af.pth" in metrics["lpips_unavailable"] and "lpips" not in metrics
    model, config = load_model_from_run(str(run))
    dataset = instantiate_from_config(config.data.params.validation)
    x = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(2)]).permute(0, 3, 1, 2).float()
    rec = reconstruct(model, x).clamp(-1, 1)
    assert metrics["psnr_db"] == pytest.approx(psnr(x, rec), abs=0.01)
    assert metrics["ssim"] == pytest.approx(ssim(x, rec), abs=1e-4)
