"""Sampler quality vs number of steps, on data whose exact denoiser is known: x0 ~ N(mu, s^2) per entry.

For every registered sampler and step count it measures, from one shared x_T (drawn from the exact marginal at
t = T - 1, so that a perfect sampler reproduces the data distribution exactly):

- ref:   RMS distance to a 1000-step DDIM sample from the same x_T (deterministic samplers only);
- exact: RMS distance to the exact probability-flow ODE map, known in closed form for Gaussian data (deterministic
         samplers only; the 1000-step DDIM reference itself is first order and sits ~2e-3 away from it);
- dist:  2-Wasserstein distance between N(mean, std^2) of the samples and N(mu, s^2) (every sampler);
- nfe:   model evaluations per sample.

Prints one table per metric and saves a log-log plot (matplotlib, Agg) to --out. DDIM and PLMS run on "linspace"
timesteps (first step at T - 1, last at 0, as the reference), plus the original "uniform" spacing for DDIM; the
sigma-space samplers use their default Karras grid.

    python benchmarks/sampler_quality.py --out /tmp/sampler_quality.png
    python benchmarks/sampler_quality.py --s 1.0 --steps 5 10 20 50 100
    python benchmarks/sampler_quality.py --logdir logs/<run>   # trained shapes model: not available yet
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.diffusion.parameterization import t_to_sigma  # noqa: E402
from ldm.diffusion.samplers import available_samplers, get_sampler  # noqa: E402
from ldm.diffusion.schedule import DiffusionSchedule  # noqa: E402

STOCHASTIC = ("ddpm", "euler_a", "dpmpp_2m_sde")
# (row label, registered name, options); every registered sampler gets a row, timestep samplers on linspace
VARIANTS = {"ddim": [("ddim", {"ddim_discretize": "linspace"}), ("ddim/uniform", {"ddim_discretize": "uniform"})],
            "plms": [("plms", {"spacing": "linspace"})]}


def gaussian_model(schedule: DiffusionSchedule, mu: float, s: float):
    """Exact eps model for data N(mu, s^2) at integer or fractional DDPM t (log sigma interpolated)."""
    log_sigmas = schedule.sigmas.log()

    def model_fn(x, t, cond=None):
        sigma = t_to_sigma(t.detach().cpu().to(torch.float64), log_sigmas)
        abar = (1 / (1 + sigma ** 2)).to(x).view(-1, *([1] * (x.dim() - 1)))
        return (x - abar.sqrt() * mu) * (1 - abar).sqrt() / (abar * s ** 2 + 1 - abar)

    return model_fn


def exact_ode_map(x_T: torch.Tensor, sigma_max: float, sigma_min: float, mu: float, s: float) -> torch.Tensor:
    """x_T (the VP sample at sigma_max) carried by the exact ODE to sigma_min, then denoised there (the last step)."""
    x_ve = x_T * math.sqrt(1 + sigma_max ** 2)
    x = mu + math.sqrt((s ** 2 + sigma_min ** 2) / (s ** 2 + sigma_max ** 2)) * (x_ve - mu)
    return mu + s ** 2 / (s ** 2 + sigma_min ** 2) * (x - mu)


def trained_model_case(logdir: str):
    """HOOK for the trained shapes model: will return (model_fn, schedule, parameterization, checker) from a run.

    Plan: load the LatentDiffusion checkpoint of `logdir` (ldm.checkpoint.load_checkpoint), wrap its UNet as
    `model_fn(x, t, cond)`, sample latents with every sampler, decode them, and score them with the shapes checker
    (ldm.eval.shapes.accuracy) instead of the Gaussian moments; the 1000-step DDIM reference stays the same.
    """
    raise NotImplementedError(
        f"--logdir {logdir!r}: evaluating samplers on a trained shapes model is not implemented yet (no trained "
        "model exists). Fill in benchmarks/sampler_quality.py:trained_model_case once a LatentDiffusion shapes run "
        "is available; until then run without --logdir for the analytic Gaussian case.")


def run_gaussian(args) -> dict:
    """All metrics for every (row, steps) on the Gaussian case; returns {row: {metric: [per steps]}}."""
    sched = DiffusionSchedule.from_config("linear", args.timesteps, args.linear_start, args.linear_end)
    mu, s = args.mu, args.s
    calls = [0]
    base = gaussian_model(sched, mu, s)

    def model_fn(x, t, cond=None):
        calls[0] += 1
        return base(x, t, cond)

    # one sample of n entries (per-sample lookups stay cheap); exact-moment z, then the exact marginal at T - 1
    z = torch.randn(1, args.n, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    abar = sched.alphas_cumprod[-1]
    x_T = abar.sqrt() * mu + (abar * s ** 2 + 1 - abar).sqrt() * z
    reference = get_sampler("ddim")(model_fn, sched, x_T, args.ref_steps)
    exact = exact_ode_map(x_T, sched.sigmas[-1].item(), sched.sigmas[0].item(), mu, s)
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()  # noqa: E731
    print(f"schedule: {sched}; data N({mu}, {s}^2); n = {args.n}; ddim {args.ref_steps}-step reference vs exact "
          f"ODE map: RMS {rms(reference, exact):.2e}; exact map's own dist error (the last step's floor): "
          f"{math.hypot(exact.mean().item() - mu, exact.std().item() - s):.2e}")

    rows = []
    for name in args.samplers:
        rows += [(label, name, opts) for label, opts in VARIANTS.get(name, [(name, {})])]
    results = {}
    for label, name, opts in rows:
        r = results[label] = {"ref": [], "exact": [], "dist": [], "nfe": [], "mean": [], "std": []}
        for steps in args.steps:
            calls[0] = 0
            out = get_sampler(name)(model_fn, sched, x_T, steps, generator=torch.Generator().manual_seed(1), **opts)
            deterministic = name not in STOCHASTIC
            r["ref"].append(rms(out, reference) if deterministic else float("nan"))
            r["exact"].append(rms(out, exact) if deterministic else float("nan"))
            r["dist"].append(math.hypot(out.mean().item() - mu, out.std().item() - s))
            r["nfe"].append(calls[0])
            r["mean"].append(out.mean().item())
            r["std"].append(out.std().item())
    return results


def print_table(results: dict, metric: str, steps: list[int], title: str) -> None:
    """One row per sampler, one column per step count."""
    print(f"\n{title}")
    print(f"{'sampler':14s}" + "".join(f"{s:>10d}" for s in steps))
    for label, r in results.items():
        cells = "".join(f"{'-':>10s}" if math.isnan(v) else (f"{v:>10d}" if metric == "nfe" else f"{v:>10.2e}")
                        for v in r[metric])
        print(f"{label:14s}{cells}")


def plot(results: dict, steps: list[int], path: str) -> None:
    """Log-log error vs steps for the three metrics, saved to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.get_cmap("tab20")
    style = {label: (colors(k % 20), "osD^v<>"[k % 7]) for k, label in enumerate(results)}  # same in every panel
    for ax, (metric, title) in zip(axes, [("ref", "RMS vs 1000-step DDIM (same x_T)"),
                                          ("exact", "RMS vs exact ODE map (same x_T)"),
                                          ("dist", "W2(N(mean, std), N(mu, s))")]):
        for label, r in results.items():
            if not all(math.isnan(v) for v in r[metric]):
                color, marker = style[label]
                ax.loglog(steps, r[metric], marker=marker, color=color, label=label,
                          linestyle="--" if "/" in label or label in STOCHASTIC else "-")
        ax.set_xlabel("steps")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot saved to {path}")


def main(argv=None) -> dict:
    """Parse arguments, run the case, print the tables and the DPM-Solver++ 2M vs DDIM verdict, save the plot."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sampler_quality.png", help="plot path (png)")
    p.add_argument("--logdir", default=None, help="trained shapes model run (hook; not implemented yet)")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    p.add_argument("--mu", type=float, default=0.5)
    p.add_argument("--s", type=float, default=0.5)
    p.add_argument("--n", type=int, default=20_000, help="samples (entries of one x_T)")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--linear-start", type=float, default=0.0015, help="CompVis LDM latent schedule default")
    p.add_argument("--linear-end", type=float, default=0.0195)
    p.add_argument("--ref-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.logdir is not None:
        trained_model_case(args.logdir)
    args.samplers = args.samplers or available_samplers()
    results = run_gaussian(args)
    print_table(results, "ref", args.steps, f"RMS error vs {args.ref_steps}-step DDIM reference (same x_T)")
    print_table(results, "exact", args.steps, "RMS error vs exact ODE map (same x_T)")
    print_table(results, "dist", args.steps, "distribution error W2(N(mean, std^2), N(mu, s^2))")
    print_table(results, "nfe", args.steps, "model evaluations per sample")
    if "dpmpp_2m" in results and "ddim" in results and 20 in args.steps and 100 in args.steps:
        a, b = results["dpmpp_2m"], results["ddim"]
        i20, i100 = args.steps.index(20), args.steps.index(100)
        print("\nDPM-Solver++(2M) @ 20 steps vs DDIM (linspace) @ 100 steps:")
        for metric in ("ref", "exact", "dist"):
            verdict = "yes" if a[metric][i20] <= b[metric][i100] else "no"
            print(f"  {metric:5s}: {a[metric][i20]:.2e} vs {b[metric][i100]:.2e} -> at least as good: {verdict}")
    plot(results, args.steps, args.out)
    return results


if __name__ == "__main__":
    main()
