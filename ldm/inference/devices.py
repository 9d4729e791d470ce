"""Device and precision for inference: the default device, checks, and autocast on the right device type."""

from __future__ import annotations

import contextlib

import torch

from ldm.errors import UsageError
from ldm.inference.entry import PRECISIONS
from ldm.precision import warn_if_slow_bf16

HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> str:
    """"cuda" when available, else "mps" when available, else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str | None) -> torch.device:
    """The torch.device for `--device` (default_device() when None); UsageError if it is unknown or unavailable."""
    try:
        dev = torch.device(device or default_device())
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device: {device!r} is not a device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and default_device() != "mps":
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--precision` on `device` (None = fp32). None as precision: autocast on CUDA, else fp32."""
    if precision is None:
        precision = "autocast" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision in ("fp32", "full"):
        return None
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16: float16 autocast is for GPUs; use bf16 (or autocast) on the CPU")
    dtype = HALF_TYPES[precision] if precision != "autocast" else torch.bfloat16 if device.type == "cpu" \
        else torch.float16
    warn_if_slow_bf16(dtype, device)
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast on the device's type in `dtype`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
