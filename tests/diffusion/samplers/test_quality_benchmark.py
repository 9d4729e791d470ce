"""Smoke test of benchmarks/sampler_quality.py: tiny run, tables and plot written, the trained-model hook refuses."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "sampler_quality.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampler_quality_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_run_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "quality.png"
    results = load_benchmark().main(["--out", str(out), "--steps", "4", "16", "--n", "200", "--ref-steps", "200",
                                     "--samplers", "ddim", "dpmpp_2m", "euler_a"])
    assert out.stat().st_size > 0
    assert set(results) == {"ddim", "ddim/uniform", "dpmpp_2m", "euler_a"}
    assert results["dpmpp_2m"]["exact"][1] < results["dpmpp_2m"]["exact"][0]
    assert results["euler_a"]["nfe"] == [4, 16]
    assert "RMS error vs 200-step DDIM reference" in capsys.readouterr().out


def test_logdir_hook_is_not_implemented_yet(tmp_path):
    with pytest.raises(NotImplementedError, match="trained shapes model"):
        load_benchmark().main(["--logdir", str(tmp_path), "--out", str(tmp_path / "x.png")])
