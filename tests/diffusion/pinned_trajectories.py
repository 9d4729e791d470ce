"""Regression pins of every registered sampler: the cases, the fixed network they run, and the generator.

Each case runs one sampler through `get_sampler(name)` on a tiny (1, 2, 4, 4) problem for a few steps with a fixed,
deterministic `model_fn` (a seeded 3x3 convolution plus smooth functions of t and cond, so the pins do not depend on
the U-Net) and records x after every step (from the callback), the callback's timestep, and the returned sample.
The cases cover guidance (+ rescale), inpainting masks, img2img strength, eps / x0 / v outputs, thresholding,
spacings and stochastic samplers with a seeded generator.

Regenerate (on the code the pins should describe; the pins were first made from the commit before issue 16's
sampler refactor):

    python tests/diffusion/pinned_trajectories.py --write    # tests/diffusion/pinned_trajectories.safetensors
    python tests/diffusion/pinned_trajectories.py            # compare the current code with the stored pins
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

PIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinned_trajectories.safetensors")
SHAPE = (1, 2, 4, 4)
STEPS = 4

# name -> (sampler, options). Options go to the sampler as keyword arguments; the markers "cfg", "mask", "img2img"
# and "cond" are expanded by `inputs` into tensors.
CASES: dict[str, tuple[str, dict]] = {}


def _add(sampler: str, case: str, **opts) -> None:
    CASES[f"{sampler}/{case}"] = (sampler, opts)


for _name in ("ddim", "plms", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m",
              "dpmpp_2m_sde", "unipc"):
    _add(_name, "eps")
    _add(_name, "cfg", cfg=3.0)
    _add(_name, "v", parameterization="v", cond=True)
    _add(_name, "mask", mask=True)
    _add(_name, "img2img", img2img=0.6)
_add("ddim", "eta", eta=0.5)
_add("ddim", "eta_mask_cfg", eta=1.0, mask=True, cfg=2.0)
_add("ddim", "x0_clip", parameterization="x0", clip_denoised=True)
_add("ddim", "trailing_rescale", ddim_discretize="trailing", cfg=5.0, guidance_rescale=0.7)
_add("ddim", "float32", dtype="float32", cfg=2.0)
_add("plms", "dynamic_v", parameterization="v", thresholding="dynamic", max_value=0.8)
_add("plms", "linspace_cfg", spacing="linspace", cfg=4.0, steps=6)
_add("ddpm", "clip_temperature", clip_denoised=True, temperature=0.7)
_add("euler", "quantize", quantize=True)
_add("euler", "float32_cfg", dtype="float32", cfg=3.0)
_add("euler_a", "eta_half_snoise", eta=0.5, s_noise=0.9)
_add("heun", "exponential_x0", spacing="exponential", parameterization="x0")
_add("dpmpp_2m", "trailing_clip", spacing="trailing", thresholding="clip")
_add("dpmpp_2m", "sigmas", sigmas=[9.0, 3.0, 1.0, 0.3, 0.05])
_add("dpmpp_2s", "ancestral", eta=1.0)
_add("dpmpp_3m", "steps6_rescale", steps=6, cfg=3.0, guidance_rescale=0.5)
_add("dpmpp_2m_sde", "eta_half", eta=0.5)
_add("unipc", "order3_bh1", order=3, variant="bh1", steps=6)
_add("unipc", "order1", order=1)
_add("unipc", "dynamic_mask", thresholding="dynamic", mask=True, cfg=2.0)

STOCHASTIC_DEFAULTS = {"ddpm", "euler_a", "dpmpp_2m_sde"}  # samplers that draw noise at their default eta


def pinned_model(channels: int = SHAPE[1], num_timesteps: int = 1000):
    """A fixed deterministic network: 0.95 x + 0.1 tanh(conv3x3(x)) (1 + t/T) + 0.05 sin(3 t/T) + 0.1 cond.

    The kernel comes from its own seeded generator (no dependence on torch's global RNG or on nn init order); t may
    be fractional (sigma-space samplers); cond is a (B, C) tensor added per channel."""
    weight = torch.randn(channels, channels, 3, 3, generator=torch.Generator().manual_seed(1234),
                         dtype=torch.float64) * 0.2

    def model_fn(x, t, cond=None):
        tt = t.to(torch.float64).view(-1, 1, 1, 1) / num_timesteps
        h = F.conv2d(x.to(torch.float64), weight, padding=1)
        out = 0.95 * x.to(torch.float64) + 0.1 * torch.tanh(h) * (1 + tt) + 0.05 * torch.sin(3 * tt)
        if cond is not None:
            out = out + 0.1 * cond.to(torch.float64).view(x.shape[0], -1, 1, 1)
        return out.to(x.dtype)

    return model_fn


def schedule():
    """The LDM latent schedule (linear, T = 1000, beta in [0.0015, 0.0195])."""
    from ldm.diffusion.schedule import DiffusionSchedule

    return DiffusionSchedule.from_config("linear", 1000, linear_start=0.0015, linear_end=0.0195)


def inputs(opts: dict) -> tuple[torch.Tensor, int, dict]:
    """(x_T, steps, sampler keyword arguments) of a case, with its tensors drawn from fixed seeds."""
    opts = dict(opts)
    dtype = getattr(torch, opts.pop("dtype", "float64"))
    steps = opts.pop("steps", STEPS)
    randn = lambda seed, *shape: torch.randn(*shape, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                             dtype=torch.float64).to(dtype)
    x_T = randn(0, *SHAPE)
    kw: dict = {}
    cfg = opts.pop("cfg", None)
    if cfg is not None or opts.pop("cond", False):
        kw["cond"] = randn(1, SHAPE[0], SHAPE[1])
    if cfg is not None:
        kw.update(uncond=torch.zeros(SHAPE[0], SHAPE[1], dtype=dtype), guidance_scale=cfg)
    if opts.pop("mask", False):
        mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:], dtype=dtype)
        mask[..., : SHAPE[2] // 2, :] = 1
        kw.update(mask=mask, x0=randn(2, *SHAPE))
    strength = opts.pop("img2img", None)
    if strength is not None:
        kw.update(x_init=randn(3, *SHAPE), strength=strength)
    kw.update(opts)
    return x_T, steps, kw


def run_case(name: str) -> dict[str, torch.Tensor]:
    """{'x': every step's x (steps, *SHAPE), 't': the callback's timesteps, 'out': the returned sample} of a case."""
    from ldm.diffusion.samplers import get_sampler

    sampler, opts = CASES[name]
    x_T, steps, kw = inputs(opts)
    xs, ts = [], []

    def callback(i, t, x, x0):
        xs.append(x.clone())
        ts.append(float(t))

    out = get_sampler(sampler)(pinned_model(), schedule(), x_T, steps, callback=callback,
                               generator=torch.Generator().manual_seed(42), **kw)
    return {"x": torch.stack(xs).to(torch.float64), "t": torch.tensor(ts, dtype=torch.float64),
            "out": out.to(torch.float64)}


def run_all() -> dict[str, torch.Tensor]:
    """Every case's tensors, keyed '<case>/x', '<case>/t', '<case>/out'."""
    tensors = {}
    for name in CASES:
        for key, value in run_case(name).items():
            tensors[f"{name}/{key}"] = value.contiguous()
    return tensors


def load_pins() -> dict[str, torch.Tensor]:
    """The stored pins."""
    from safetensors.torch import load_file

    return load_file(PIN_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write the pins to {PIN_FILE}")
    args = parser.parse_args(argv)
    import ldm

    print(f"ldm from {os.path.dirname(ldm.__file__)}", file=sys.stderr)
    tensors = run_all()
    if args.write:
        from safetensors.torch import save_file

        tmp = PIN_FILE + ".tmp"
        save_file(tensors, tmp)
        os.replace(tmp, PIN_FILE)
        print(f"wrote {len(CASES)} cases to {PIN_FILE}")
        return 0
    pins = load_pins()
    worst, exact = 0.0, 0
    for key, value in tensors.items():
        diff = (value - pins[key]).abs().max().item() if value.shape == pins[key].shape else float("inf")
        worst = max(worst, diff)
        exact += bool(diff == 0)
        if diff > 1e-6:
            print(f"{key}: max |diff| {diff:.3g}")
    print(f"{exact}/{len(tensors)} tensors bit-for-bit, max |diff| {worst:.3g}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
