"""Whether bf16 is fast on this machine, and what to do when it is not (one place for the trainer and the scripts).

A CPU without native bf16 instructions (AVX512-BF16 or AMX) emulates bf16 arithmetic: on an AVX2-only AMD EPYC,
`precision=bf16-mixed` made an SD-shaped U-Net training step 28x slower than fp32 (0.015 vs 0.43 steps/s, for
diffusers' U-Net too), with no message. GPUs without bf16 (before Ampere) get fp16 mixed precision instead.
"""

from __future__ import annotations

import logging
import platform

import torch

log = logging.getLogger(__name__)

BF16_PRECISIONS = ("bf16", "bf16-mixed", "bf16-true")
SLOW_BF16_CPU = ("this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated: on such a CPU an "
                 "SD-shaped U-Net training step ran 28x slower in bf16-mixed than in fp32")


def cpu_has_native_bf16() -> bool:
    """True when torch reports AVX512-BF16 or AMX on this CPU (where bf16 matmuls and convs are fast); on a CPU that
    is not x86 (ARM: torch has no such check) it is not known, taken as True so nothing is warned about."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, check, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the check
            continue
    return False


def cuda_has_bf16() -> bool:
    """True when the current CUDA device computes in bf16 natively (Ampere and later), not by emulation."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - older torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _runs_on(accelerator: object) -> str:
    """"cuda", "cpu" or "other" (e.g. MPS, TPU) for a Trainer with this `accelerator` (None / "auto": what Lightning
    picks: CUDA, else MPS, else the CPU)."""
    name = str(accelerator or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "other" if _mps_available() else "cpu"
    return "cuda" if name in ("gpu", "cuda") else "cpu" if name == "cpu" else "other"


def checked_trainer_precision(precision: object, accelerator: object) -> object:
    """`lightning.trainer.precision` as it should run here: unchanged, except bf16 on a GPU without bf16 becomes
    "16-mixed" (warned); bf16 on a CPU without native bf16 stays (the user asked for it) but is warned about."""
    device = _runs_on(accelerator)
    if str(precision) not in BF16_PRECISIONS or device == "other":
        return precision
    if device == "cuda":
        if torch.cuda.is_available() and not cuda_has_bf16():
            log.warning("lightning.trainer.precision=%s: this GPU has no bf16; training in 16-mixed instead",
                        precision)
            return "16-mixed"
        return precision
    if not cpu_has_native_bf16():
        log.warning("lightning.trainer.precision=%s: %s; set lightning.trainer.precision=32", precision, SLOW_BF16_CPU)
    return precision


def warn_if_slow_bf16(dtype: torch.dtype | None, device: torch.device) -> None:
    """Warn when inference (`--precision`) autocasts to bf16 on a CPU that only emulates it."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("--precision: %s; use --precision fp32 here", SLOW_BF16_CPU)
