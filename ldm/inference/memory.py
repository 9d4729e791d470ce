"""Will one batch fit? A lower-bound estimate of a batch's memory, read from the config, checked before loading.

The estimate counts only tensors that must exist at the same time, so it stays below the real peak (1.3-3.4x the
estimate, measured on the CPU for configs/ldm_cin.yaml, ldm_uncond.yaml, ddpm_pixel.yaml, ldm_txt2img.yaml with
and without the CPU overlay, and the test models): a batch it refuses would fail anyway, and a batch that runs is
never refused. Per image, in bytes (`e` = 4, or 2 under bf16 / fp16 autocast):

- UNet (x2 with classifier-free guidance, which runs the conditional and unconditional halves as one batch): the
  skip connections alive at the middle block, (num_res_blocks + 1) maps of model_channels x mult per level at the
  level's resolution, plus 3 maps (a block's input, GroupNorm and SiLU outputs) of the first full-resolution output
  block, (mult[0] + mult[1]) x model_channels wide, x e;
- first-stage decoder: 3 such maps of the upsampled features entering its last level, ch x ch_mult[1] channels at
  full image size, x e;
- the decoded image (float32, and its clamped copy) and about 6 latents (noise, state, prediction, history).

The UNet and the decoder run one after the other, so the larger of the two counts, plus the images and latents.

Weights are not counted (they are not loaded yet). Available memory: the device's free memory for CUDA, MemAvailable
(RAM that can be freed without swapping, page cache included; min with a cgroup limit) for the CPU; unknown (no check)
elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.errors import UsageError
from ldm.inference.model_info import ModelInfo

LATENT_COPIES = 6  # noise, sampler state, model output, denoised estimate, multistep history
IMAGE_COPIES = 2  # the decoded batch and its clamped float32 copy
WORKING_MAPS = 3  # a ResnetBlock's input, its GroupNorm output and its SiLU output are alive together
# The suggested batch leaves this factor of room, as the real peak is several times the estimate.
SUGGEST_MARGIN = 4
GiB = 1024 ** 3


def _plain(node: Any) -> dict:
    """A (resolved) plain dict of a config node; {} when it is not a mapping."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else {}


def _levels(count: Any, n_levels: int) -> list[int]:
    """num_res_blocks as one int per level (configs give an int or a list)."""
    return [int(c) for c in count] if isinstance(count, (list, tuple)) else [int(count)] * n_levels


def unet_bytes(unet_params: Mapping[str, Any], height: int, width: int, elem: int) -> int:
    """A lower bound of the UNet's activations for one latent of height x width: the skip connections (all alive at
    the middle block) plus WORKING_MAPS maps of the first full-resolution output block's input (the upsampled
    features concatenated with a skip: (mult[0] + mult[1]) x model_channels wide)."""
    channels = int(unet_params.get("model_channels", 0))
    mults = [int(m) for m in unet_params.get("channel_mult", [1])]
    blocks = _levels(unet_params.get("num_res_blocks", 1), len(mults))
    total = 0
    for level, (mult, n) in enumerate(zip(mults, blocks)):
        h, w = -(-height // 2 ** level), -(-width // 2 ** level)
        total += (n + 1) * channels * mult * h * w
    total += WORKING_MAPS * (mults[0] + mults[min(1, len(mults) - 1)]) * channels * height * width
    return total * elem


def decoder_bytes(ddconfig: Mapping[str, Any], height: int, width: int, elem: int) -> int:
    """WORKING_MAPS full-resolution maps of the first-stage decoder for one image of height x width pixels: the
    upsampled features enter the last level still ch x ch_mult[1] wide (the width of the level below)."""
    mults = [int(m) for m in ddconfig.get("ch_mult", [1])]
    channels = int(ddconfig.get("ch", 0)) * mults[min(1, len(mults) - 1)]
    return WORKING_MAPS * channels * height * width * elem


def diffusion_batch_bytes(config: Mapping[str, Any], info: ModelInfo, batch: int, height: int, width: int,
                          guided: bool = False, half: bool = False) -> int:
    """Lower-bound memory of sampling and decoding `batch` images of height x width (see the module docstring)."""
    elem = 2 if half else 4
    params = _plain(_plain(config).get("model", {})).get("params", {}) or {}
    c, h, w = info.latent_shape(height, width)
    unet = unet_bytes(_plain(params.get("unet_config", {})).get("params", {}) or {}, h, w, elem)
    ddconfig = _plain(_plain(params.get("first_stage_config", {})).get("params", {})).get("ddconfig", {}) or {}
    decoder = decoder_bytes(ddconfig, height, width, elem) if info.factor > 1 else 0
    # The UNet's activations are freed before decoding starts: the larger of the two, not their sum
    per_image = (max(unet * (2 if guided else 1), decoder) + IMAGE_COPIES * 4 * info.channels * height * width
                 + LATENT_COPIES * 4 * c * h * w)
    return batch * per_image


def autoencoder_batch_bytes(config: Mapping[str, Any], batch: int, height: int, width: int) -> int:
    """Lower-bound memory of reconstructing `batch` images with a first-stage model: input, output, decoder maps."""
    ddconfig = _plain(_plain(_plain(config).get("model", {})).get("params", {})).get("ddconfig", {}) or {}
    image = 4 * int(ddconfig.get("in_channels", 3)) * height * width
    return batch * (decoder_bytes(ddconfig, height, width, 4) + IMAGE_COPIES * image)


def _read_int(path: str) -> int | None:
    """The integer in a one-line file (cgroup limits); None when missing or 'max'."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (v2, else v1); None without a limit."""
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # v1 reports "no limit" as a huge number
            return max(0, cap - used)
    return None


def cpu_available_bytes() -> int | None:
    """RAM available without swapping: MemAvailable (Linux), psutil, or free pages; min with a cgroup limit."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except ImportError:
            try:  # free pages only (page cache not counted): an underestimate, the last resort
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return None
    room = _cgroup_room()
    return available if room is None else min(available, room)


def available_bytes(device: torch.device) -> int | None:
    """Free memory where a batch will live: CUDA's free memory on the device, the CPU's available RAM; None when
    unknown (other devices), which skips the check."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return cpu_available_bytes()
    return None


def gib(n: int) -> str:
    """Bytes as '3.9 GiB' (or MiB below 1 GiB)."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024 ** 2:.0f} MiB"


def check_fits(needed: int, batch: int, device: torch.device, flag: str, advice: Callable[[int], str],
               available: int | None = None) -> None:
    """UsageError naming `flag` when `needed` bytes (a batch of `batch` images) exceed the memory available on
    `device`; `advice(suggested batch)` says what to do: a power of two with SUGGEST_MARGIN room for the real peak."""
    available = available_bytes(device) if available is None else available
    if available is None or needed <= available:
        return
    fit = available * batch // max(needed, 1)
    suggest = 2 ** int(math.log2(max(1, fit // SUGGEST_MARGIN)))
    what = advice(suggest) if fit >= 1 else "even one image of this size does not fit: use smaller images"
    raise UsageError(f"{flag}: needs at least {gib(needed)} of memory (a lower-bound estimate from the model config), "
                     f"more than the {gib(available)} available on {device}; {what}")
