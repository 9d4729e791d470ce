"""Running a registered sampler on a loaded model: per-image seeded noise, a tqdm progress bar through the sampler's
`callback`, EMA choice, and img2img (`x_init` / `strength`, see `ldm.diffusion.samplers.timesteps`)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ldm.diffusion.samplers import get_sampler
from ldm.diffusion.samplers.reporting import StepCallback, announce_steps
from ldm.diffusion.samplers.timesteps import strength_steps


def image_seed(seed: int, index: int) -> int:
    """Seed of image `index` of a run with base `seed`: seed + index (so each image is reproducible alone)."""
    return int(seed) + int(index)


def image_seeds(seed: int, start: int, n: int) -> list[int]:
    """Seeds of images start..start+n-1 of a run with base `seed`."""
    return [image_seed(seed, start + i) for i in range(n)]


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T for a batch: one (C, H, W) standard normal draw per seed from a CPU generator (the same on any device)."""
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(draws).to(device)


def sampler_eta(name: str, eta: float | None) -> float | None:
    """`eta`, or the sampler's own default when None (e.g. 0 for ddim, 1 for euler_a)."""
    return inspect.signature(get_sampler(name)).parameters["eta"].default if eta is None else float(eta)


class ProgressCallback:
    """A sampler callback that advances a tqdm bar (and calls `callback` too). Its total is what the sampler announces
    before the first step (`set_total`: the length of its timestep grid, e.g. 4 for DDIM's uniform spacing at
    `steps` 3 of 1000), so the bar counts the steps the sampler actually runs."""

    def __init__(self, bar: Any, callback: StepCallback | None = None):
        self.bar = bar
        self.callback = callback

    def set_total(self, total: int) -> None:
        """The number of steps the run makes (called by the sampler through `announce_steps`)."""
        self.bar.reset(total=int(total))
        announce_steps(self.callback, total)

    def __call__(self, i: int, t: Any, x: torch.Tensor, x0: torch.Tensor) -> None:
        """After step i: the bar shows i + 1 steps done."""
        if self.bar.total is None or i + 1 > self.bar.total:  # a sampler that announces nothing
            self.bar.total = i + 1
        self.bar.update(i + 1 - self.bar.n)
        if self.callback is not None:
            self.callback(i, t, x, x0)


@contextlib.contextmanager
def progress(total: int | None = None, desc: str = "sampling", enabled: bool = True,
             callback: StepCallback | None = None) -> Iterator[StepCallback | None]:
    """A `ProgressCallback` over a tqdm bar of `total` steps until the sampler announces its own count (with `callback`
    called too), closed on exit; just `callback` when not `enabled`."""
    if not enabled:
        yield callback
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    try:
        yield ProgressCallback(bar, callback)
    finally:
        bar.close()


@torch.no_grad()
def sample(model: Any, noise: torch.Tensor, sampler: str = "ddim", steps: int = 50, cond: Any = None,
           uncond: Any = None, scale: float = 1.0, eta: float | None = None, use_ema: bool = True,
           generator: torch.Generator | None = None, show_progress: bool = True, desc: str = "sampling",
           callback: StepCallback | None = None, **opts: Any) -> torch.Tensor:
    """Diffusion-space samples from x_T = `noise` with the sampler named `sampler` (guided when scale != 1).

    `opts` go to the sampler: `x_init` + `strength` for img2img, `mask` + `x0` for inpainting, spacing options.
    eta None means the sampler's default. The model's EMA weights are used when `use_ema` (and it has them).
    """
    total = strength_steps(steps, opts.get("strength", 1.0))
    with progress(total, desc, show_progress, callback) as step:
        return model.sample(cond=cond, x_T=noise, sampler=sampler, steps=steps, eta=sampler_eta(sampler, eta),
                            unconditional_guidance_scale=scale, unconditional_conditioning=uncond,
                            use_ema=use_ema, generator=generator, callback=step, **opts)
