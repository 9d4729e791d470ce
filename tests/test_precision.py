"""The bf16 guard (ldm.precision): warned on a CPU that emulates bf16, fp16 instead on a GPU without bf16, silent
otherwise; the trainer and the sampling scripts both go through it."""
import logging

import pytest
import torch

import ldm.precision as P
from ldm.inference.devices import autocast_dtype
from ldm.trainer.build import trainer_kwargs


class Model:
    automatic_optimization = True


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_is_warned_only_without_native_support(monkeypatch, caplog, native):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="ldm.precision"):
        cfg, _, _ = trainer_kwargs({"accelerator": "cpu", "precision": "bf16-mixed"}, Model())
    assert cfg["precision"] == "bf16-mixed"  # the user's choice stands
    warned = [r.getMessage() for r in caplog.records]
    if native:
        assert warned == []
    else:
        assert warned == ["lightning.trainer.precision=bf16-mixed: this CPU has no native bf16 (AVX512-BF16 or AMX), "
                          "so bf16 is emulated: on such a CPU an SD-shaped U-Net training step ran 28x slower in "
                          "bf16-mixed than in fp32; set lightning.trainer.precision=32"]


def test_fp32_and_fp16_are_not_checked(monkeypatch, caplog):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ldm.precision"):
        assert trainer_kwargs({"accelerator": "cpu", "precision": 32}, Model())[0]["precision"] == 32
        assert trainer_kwargs({"accelerator": "cpu"}, Model())[0].get("precision") is None
    assert caplog.records == []


def test_gpu_without_bf16_trains_in_fp16(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ldm.precision"):
        assert P.checked_trainer_precision("bf16-mixed", "gpu") == "16-mixed"
    assert "this GPU has no bf16; training in 16-mixed instead" in caplog.text
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: True)
    assert P.checked_trainer_precision("bf16-mixed", "auto") == "bf16-mixed"


def test_scripts_warn_before_autocasting_to_emulated_bf16(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ldm.precision"):
        assert autocast_dtype("autocast", cpu) == torch.bfloat16
        assert autocast_dtype("fp32", cpu) is None
    assert len(caplog.records) == 1 and "--precision: this CPU has no native bf16" in caplog.text
    assert "use --precision fp32 here" in caplog.text


def test_native_check_reads_torch():
    assert isinstance(P.cpu_has_native_bf16(), bool)
    assert P.cuda_has_bf16() is (torch.cuda.is_available() and P.cuda_has_bf16())
