import pytest
import torch

from ldm.errors import UsageError
from ldm.inference.devices import autocast, autocast_dtype, check_device
from ldm.inference.validation import (check_positive, check_sampler, check_sampler_options, check_size,
                                      check_strength, read_prompts)


def test_sampler_and_its_options_are_judged_by_the_registry():
    assert check_sampler("dpmpp_2m") == "dpmpp_2m"
    with pytest.raises(UsageError, match="unknown sampler 'nope'; available: ddim, ddpm"):
        check_sampler("nope")
    check_sampler_options("euler_a", 20, 1000)  # eta None: the sampler's own default
    check_sampler_options("ddim", 20, 1000, eta=0.5)
    with pytest.raises(UsageError, match="--sampler euler .* euler is deterministic"):
        check_sampler_options("euler", 20, 1000, eta=0.5)
    with pytest.raises(UsageError, match="steps must be an int in"):
        check_sampler_options("ddim", 2000, 1000)
    with pytest.raises(UsageError, match="--steps must be a positive integer"):
        check_sampler_options("ddim", 0, 1000)


def test_numbers_sizes_and_strength():
    assert check_positive(3, "--n_iter") == 3
    with pytest.raises(UsageError, match="--n_iter must be a positive integer, got -1"):
        check_positive(-1, "--n_iter")
    assert check_size(64, 128, 64) == (64, 128)
    with pytest.raises(UsageError, match="--H/--W: 100x64 .* not a multiple of 64.* 64x64"):
        check_size(100, 64, 64)
    assert check_strength(0) == 0.0 and check_strength(1) == 1.0
    for bad in (-0.1, 1.01):
        with pytest.raises(UsageError, match="--strength: strength must lie in"):
            check_strength(bad)


def test_read_prompts(tmp_path):
    assert read_prompts() is None and read_prompts("a cat") == ["a cat"]
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(from_file=str(path)) == ["a red circle", "a blue square"]
    with pytest.raises(UsageError, match="prompt file not found"):
        read_prompts(from_file=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="has no prompts"):
        read_prompts(from_file=str(tmp_path / "empty.txt"))
    with pytest.raises(UsageError, match="alternatives"):
        read_prompts("x", str(path))


def test_devices_and_precision():
    cpu = check_device("cpu")
    assert autocast_dtype(None, cpu) is None and autocast_dtype("full", cpu) is None
    assert autocast_dtype("autocast", cpu) == torch.bfloat16 == autocast_dtype("bf16", cpu)
    with pytest.raises(UsageError, match="fp16: float16 autocast is for GPUs"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(UsageError, match="is not a device"):
        check_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            check_device("cuda")
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
