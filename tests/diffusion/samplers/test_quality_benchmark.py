"""Smoke tests of benchmarks/sampler_quality.py (Gaussian and trained-model cases) and sampler_throughput.py."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "models" / "diffusion"))

from diffusion_configs import ldm_config  # noqa: E402

from ldm.util import instantiate_from_config  # noqa: E402


def load_benchmark(name="sampler_quality"):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny caption-conditional LatentDiffusion (T = 100) whose UNet output layer is not zero, so samplers differ.

    One thread while it is used: this tiny UNet runs several times faster so when other processes share the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = instantiate_from_config(ldm_config("caption", use_ema=False)).eval()
    torch.nn.init.normal_(model.model.diffusion_model.out[-1].weight, std=0.02)
    yield model
    torch.set_num_threads(threads)


def test_small_run_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "quality.png"
    report = load_benchmark().main(["--out", str(out), "--steps", "4", "16", "--n", "200", "--ref-steps", "200",
                                    "--samplers", "ddim", "dpmpp_2m", "euler_a"])
    results = report["results"]
    assert out.stat().st_size > 0 and json.loads((tmp_path / "quality.json").read_text())["case"] == "gaussian"
    assert set(results) == {"ddim", "ddim/uniform", "dpmpp_2m", "euler_a"}
    assert results["dpmpp_2m"]["exact"][1] < results["dpmpp_2m"]["exact"][0]
    assert results["euler_a"]["nfe"] == [4, 16]
    printed = capsys.readouterr().out
    assert "RMS error vs 200-step DDIM reference" in printed
    assert "dpmpp_2m@20 vs ddim@100: not measured" in printed


def test_trained_model_case_reports_rms_and_checker_accuracy(tmp_path, capsys, tiny_model):
    out, js = tmp_path / "model.png", tmp_path / "numbers.json"
    report = load_benchmark().main(["--out", str(out), "--json", str(js), "--samplers", "ddim", "dpmpp_2m", "euler_a",
                                    "--steps", "2", "4", "--n", "2", "--ref-steps", "6", "--batch-size", "1"],
                                   model=tiny_model)
    assert out.stat().st_size > 0
    saved = json.loads(js.read_text())
    assert saved["case"] == "model" and saved["steps"] == [2, 4] and saved["ref_steps"] == 6
    results = saved["results"]
    assert set(results) == {"ddim", "ddim/uniform", "dpmpp_2m", "euler_a"}
    for label, r in results.items():
        assert r["nfe"] == [2, 4]  # network calls per sample (guided: one batched call)
        for metric in ("color", "shape", "size", "position", "all", "found"):
            assert all(0.0 <= v <= 1.0 for v in r[metric])
        if label == "euler_a":
            assert r["ref"] == [None, None]  # stochastic: no distance to the deterministic reference
        else:
            assert all(math.isfinite(v) and v > 0 for v in r["ref"])
    assert all(0.0 <= saved["reference"][k] <= 1.0 for k in ("color", "shape", "position", "all"))
    printed = capsys.readouterr().out
    assert "RMS error in latent space vs 6-step DDIM reference" in printed
    assert "checker accuracy: all" in printed and "dpmpp_2m@20 vs ddim@100: not measured" in printed


def test_claim_comparison_prints_both_metrics(capsys):
    results = {"dpmpp_2m": {"ref": [0.01, 0.001], "all": [0.5, 0.9]}, "ddim": {"ref": [0.2, 0.02], "all": [0.4, 0.95]}}
    claim = load_benchmark().compare_claim(results, [20, 100], {"ref": False, "all": True})
    assert claim["ref"]["at_least_as_good"] and not claim["all"]["at_least_as_good"]
    assert claim["all"]["dpmpp_2m@20"] == 0.5 and claim["all"]["ddim@100"] == 0.95
    printed = capsys.readouterr().out
    assert "dpmpp_2m@20 vs ddim@100" in printed and "good: yes" in printed and "good: no" in printed


def test_throughput_against_diffusers_and_the_ddim_cross_check(tmp_path, capsys, tiny_model):
    pytest.importorskip("diffusers")
    js = tmp_path / "throughput.json"
    report = load_benchmark("sampler_throughput").main(
        ["--samplers", "ddim", "euler", "euler_a", "--steps", "3", "--batch", "1", "--rounds", "1", "--json", str(js)],
        model=tiny_model)
    results = report["results"]
    assert set(results) == {"ddim", "euler", "euler_a"}
    for r in results.values():
        assert r["nfe_ours"] == r["nfe_diffusers"] == 3
        assert r["images_per_s_ours"] > 0 and r["images_per_s_diffusers"] > 0 and r["speed_ratio"] > 0
    # same method, grid and start as ours: float32 round-off apart
    assert results["ddim"]["max_abs_diff"] < 1e-4 and results["euler"]["max_abs_diff"] < 1e-4
    assert math.isnan(results["euler_a"]["max_abs_diff"])
    assert json.loads(js.read_text())["results"]["euler_a"]["max_abs_diff"] is None
    assert "DDIM cross-check" in capsys.readouterr().out
