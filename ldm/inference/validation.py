"""Checks of command-line input that need no model: sampler and its options, numbers, sizes, prompt files, output
folders.

Every check raises `UsageError` with a message naming the flag, so scripts fail before any weights are loaded.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from ldm.diffusion.samplers import available_samplers, get_sampler
from ldm.diffusion.samplers.timesteps import check_strength as sampler_strength
from ldm.diffusion.schedule import DiffusionSchedule
from ldm.errors import UsageError


def check_sampler(name: str) -> str:
    """`name` if the sampler registry has it; UsageError listing the available samplers otherwise."""
    if name not in available_samplers():
        raise UsageError(f"--sampler: unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    return name


def check_sampler_options(name: str, steps: int, num_timesteps: int, eta: float | None = None,
                          **opts: Any) -> None:
    """Let the sampler itself judge steps / eta / options: one step-free dry run on a 1-element dummy problem.

    This is the samplers' own validation (e.g. "euler is deterministic and takes eta = 0 only"), so no list of
    which sampler takes what is kept here.
    """
    check_sampler(name)
    check_positive(steps, "--steps")
    schedule = DiffusionSchedule.from_config("linear", num_timesteps)
    kwargs = dict(opts, **({} if eta is None else {"eta": eta}))
    try:
        get_sampler(name)(lambda x, t, c=None: torch.zeros_like(x), schedule, torch.zeros(1, 1, 1, 1), steps,
                          **kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--sampler {name} --steps {steps}" + ("" if eta is None else f" --eta {eta}")
                         + f": {err}") from None


def check_positive(value: int, flag: str) -> int:
    """`value` if it is an int >= 1."""
    if not isinstance(value, int) or value < 1:
        raise UsageError(f"{flag} must be a positive integer, got {value!r}")
    return value


def check_strength(strength: float) -> float:
    """--strength in [0, 1] (0 = the input back, 1 = pure noise)."""
    try:
        return sampler_strength(strength)
    except ValueError as err:
        raise UsageError(f"--strength: {err}") from None


def check_size(height: int, width: int, multiple: int, what: str = "--H/--W") -> tuple[int, int]:
    """(height, width) if both are positive multiples of `multiple` (the model's total downsampling)."""
    if height < 1 or width < 1 or height % multiple or width % multiple:
        fit_h, fit_w = (max(multiple, side // multiple * multiple) for side in (height, width))
        raise UsageError(f"{what}: {height}x{width} (HxW) is not a multiple of {multiple}, the model's "
                         f"downsampling factor (first stage x UNet); e.g. use {fit_h}x{fit_w}")
    return height, width


def read_prompts(prompt: str | None = None, from_file: str | None = None,
                 warn: Callable[[str], None] | None = None) -> list[str] | None:
    """The prompts of `--prompt` or `--from-file` (one per non-empty line); None when neither is given.

    Blank lines between prompts are skipped; `warn` (if given) hears of them, since prompt k is then not line k.
    """
    if prompt is not None and from_file is not None:
        raise UsageError("--prompt and --from-file are alternatives; give one")
    if from_file is None:
        return None if prompt is None else [prompt]
    if not os.path.isfile(from_file):
        raise UsageError(f"--from-file: prompt file not found: {from_file}")
    with open(from_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    prompts = [line for line in lines if line]
    if not prompts:
        raise UsageError(f"--from-file: {from_file} has no prompts (one per line)")
    last = max(i for i, line in enumerate(lines) if line)
    blank = [i + 1 for i, line in enumerate(lines[:last]) if not line]  # trailing blank lines are harmless
    if blank and warn is not None:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        warn(f"--from-file {from_file}: skipped {len(blank)} blank line(s) (line {shown}); prompt numbers count "
             "non-blank lines only")
    return prompts


# Why a folder cannot be written to, by errno (os.strerror's wording, lower-cased, for the rest).
WRITE_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system"}


def _nearest_existing(path: str) -> str:
    """`path` or its closest existing ancestor (the folder a missing output folder would be created in)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _write_problem(folder: str) -> str | None:
    """Why a file cannot be created in `folder` (None if it can), found by creating and removing a hidden file:
    os.access can answer wrongly for root, ACLs and network file systems."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as err:
        return WRITE_ERRORS.get(err.errno) or (os.strerror(err.errno).lower() if err.errno else str(err))
    os.close(fd)
    try:
        os.remove(probe)
    except OSError:
        pass
    return None


def _check_writable(folder: str, flag: str, path: str) -> None:
    """UsageError "<flag> <path>: not writable (<why>)" unless files can be created in `folder` (made if missing)."""
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path}: not writable ({existing} is a file, not a folder)")
    problem = _write_problem(existing)
    if problem:
        where = "" if existing == os.path.abspath(folder) else f"cannot create {folder} in {existing}: "
        raise UsageError(f"{flag} {path}: not writable ({where}{problem})")


def check_outdir(path: str, flag: str = "--outdir") -> str:
    """`path` if it is a folder that files can be written to, or one that can be created; UsageError naming `flag`
    otherwise. Nothing is left behind: a missing folder is judged by its nearest existing ancestor."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: not writable (it is a file, not a folder)")
    _check_writable(path, flag, path)
    return path


def check_output_file(path: str, flag: str) -> str:
    """`path` if a file can be written there (its folder is writable or can be created); UsageError otherwise."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    _check_writable(os.path.dirname(os.path.abspath(path)), flag, path)
    return path
