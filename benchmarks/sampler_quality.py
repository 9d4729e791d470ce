"""Sampler quality vs number of steps: on data whose exact denoiser is known, or on a trained shapes model.

Analytic case (default): x0 ~ N(mu, s^2) per entry. For every registered sampler and step count it measures, from one
shared x_T (drawn from the exact marginal at t = T - 1, so that a perfect sampler reproduces the data distribution):

- ref:   RMS distance to a 1000-step DDIM sample from the same x_T (deterministic samplers only);
- exact: RMS distance to the exact probability-flow ODE map, known in closed form for Gaussian data (deterministic
         samplers only; the 1000-step DDIM reference itself is first order and sits ~2e-3 away from it);
- dist:  2-Wasserstein distance between N(mean, std^2) of the samples and N(mu, s^2) (every sampler);
- nfe:   model evaluations per sample.

Trained-model case (--logdir, a text- or class-conditional shapes LatentDiffusion run): the balanced captions of
`ldm.eval.shapes_model.evaluation_captions` are sampled by every sampler from one fixed x_T with classifier-free
guidance (--scale), and it measures

- ref:   RMS distance in latent space to a --ref-steps DDIM sample from the same x_T and guidance (deterministic
         only; a cheap reference, e.g. 200 steps, shares DDIM's first-order error and so flatters DDIM: keep 1000
         for the claim below);
- color, shape, size, position, all, found: the shapes checker's accuracy (`ldm.eval.shapes.accuracy`) of the
         decoded samples (the reference's own accuracy is printed as the ceiling);
- nfe:   network calls per sample (a guided call evaluates cond and uncond in one batch).

Both cases print one table per metric, the "dpmpp_2m@20 vs ddim@100" comparison (the DPM-Solver++ paper's claim), and
save a plot (matplotlib, Agg) to --out and every number to --json (default: --out with .json). DDIM and PLMS run on
"linspace" timesteps (first step at T - 1, last at 0, as the reference), plus the original "uniform" spacing for DDIM;
the sigma-space samplers use their default Karras grid. Throughput vs diffusers: benchmarks/sampler_throughput.py.

    python benchmarks/sampler_quality.py --out /tmp/sampler_quality.png
    python benchmarks/sampler_quality.py --s 1.0 --steps 5 10 20 50 100
    python benchmarks/sampler_quality.py --logdir logs/<run> --out logs/<run>/sampler_quality.png      # full: GPU
    python benchmarks/sampler_quality.py --logdir logs/<run> --threads 1 --n 16 --ref-steps 200 \
        --steps 5 10 20 100 --samplers ddim dpmpp_2m euler_a unipc --out /tmp/sq.png
        # ~5 minutes on 2 busy CPU cores for the CPU-sized model (configs/overlays/cpu.yaml, 8x8x4 latents)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.diffusion.parameterization import t_to_sigma  # noqa: E402
from ldm.diffusion.samplers import available_samplers, get_sampler  # noqa: E402
from ldm.diffusion.schedule import DiffusionSchedule  # noqa: E402
from ldm.eval.shapes import accuracy  # noqa: E402
from ldm.eval.shapes_model import CHANCE, evaluation_captions, raw_conditioning  # noqa: E402

STOCHASTIC = ("ddpm", "euler_a", "dpmpp_2m_sde")
# (row label, registered name, options); every registered sampler gets a row, timestep samplers on linspace
VARIANTS = {"ddim": [("ddim", {"ddim_discretize": "linspace"}), ("ddim/uniform", {"ddim_discretize": "uniform"})],
            "plms": [("plms", {"spacing": "linspace"})]}
REFERENCE = ("ddim", {"ddim_discretize": "linspace"})  # the many-step reference: DDIM from T - 1 down to 0
ACCURACY = ("color", "shape", "size", "position", "all", "found")
CLAIM = ("dpmpp_2m", 20, "ddim", 100)  # DPM-Solver++(2M) at 20 steps at least as good as DDIM at 100


def sampler_rows(names: list[str]) -> list[tuple[str, str, dict]]:
    """(row label, registered name, options) for every requested sampler, with the `VARIANTS` expansions."""
    rows = []
    for name in names:
        rows += [(label, name, opts) for label, opts in VARIANTS.get(name, [(name, {})])]
    return rows


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference of two tensors (float64)."""
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


# --------------------------------------------------------------------------------------------- analytic Gaussian case
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
    reference = get_sampler(REFERENCE[0])(model_fn, sched, x_T, args.ref_steps, **REFERENCE[1])
    exact = exact_ode_map(x_T, sched.sigmas[-1].item(), sched.sigmas[0].item(), mu, s)
    print(f"schedule: {sched}; data N({mu}, {s}^2); n = {args.n}; ddim {args.ref_steps}-step reference vs exact "
          f"ODE map: RMS {rms(reference, exact):.2e}; exact map's own dist error (the last step's floor): "
          f"{math.hypot(exact.mean().item() - mu, exact.std().item() - s):.2e}")

    results = {}
    for label, name, opts in sampler_rows(args.samplers):
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


# ------------------------------------------------------------------------------------------------ trained-model case
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options both sampler benchmarks take for a trained model."""
    p.add_argument("--logdir", default=None, help="a trained shapes LatentDiffusion run (text or class conditional)")
    p.add_argument("--checkpoint", default=None, help="with --logdir: this checkpoint instead of the run's last")
    p.add_argument("--device", default=None, help="with --logdir (default: cuda when available)")
    p.add_argument("--scale", type=float, default=3.0, help="model: classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument("--seed", type=int, default=0)


def load_run_model(args) -> Any:
    """The --logdir run's model in eval mode on --device (default: cuda when available)."""
    from ldm.models.from_run import load_model_from_run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model_from_run(args.logdir, checkpoint=args.checkpoint, device=device)[0]


@contextlib.contextmanager
def counting_calls(model: Any) -> Iterator[list[int]]:
    """Within the block, `calls[0]` counts the network's forward passes (of `model.model`; settable)."""
    calls = [0]
    hook = model.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        hook.remove()


def model_inputs(model: Any, captions: list[str], seed: int = 0,
                 batch_size: int = 16) -> list[tuple[torch.Tensor, Any, Any]]:
    """Fixed (x_T, cond, uncond) batches: x_T from one seeded CPU generator, the conditioning encoded once."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(captions), *model.sample_shape()), generator=generator).to(model.device)
    batches = []
    with torch.no_grad():
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            cond = model.get_learned_conditioning(raw_conditioning(model, chunk))
            batches.append((x_T[start:start + len(chunk)], cond, model.unconditional_conditioning(len(chunk))))
    return batches


def sample_latents(model: Any, batches: list, sampler: str, steps: int, scale: float, seed: int = 1,
                   **opts: Any) -> torch.Tensor:
    """Latents of every batch from its own x_T through `model.sample` (EMA weights); one seeded generator for all."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(cond=cond, x_T=x_T, sampler=sampler, steps=steps, unconditional_conditioning=uncond,
                                   unconditional_guidance_scale=scale, generator=generator, **opts)
                      for x_T, cond, uncond in batches])


def checker_accuracy(model: Any, z: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Shapes-checker accuracy of the decoded latents z against their captions."""
    with torch.no_grad():
        images = model.decode_to_image(z).float().clamp(-1, 1).cpu()
    return accuracy(images, captions)


def run_model(model: Any, args) -> tuple[dict, dict]:
    """ref RMS, checker accuracy and nfe for every (row, steps) on a trained model; returns (results, reference)."""
    model.eval()
    captions = evaluation_captions(args.n, args.seed)
    batches = model_inputs(model, captions, args.seed, args.batch_size)
    with counting_calls(model) as calls:
        t0 = time.perf_counter()
        reference = sample_latents(model, batches, REFERENCE[0], args.ref_steps, args.scale, **REFERENCE[1])
        ref_acc = checker_accuracy(model, reference, captions)
        print(f"{type(model).__name__} ({model.parameterization}, T = {model.num_timesteps}, latents "
              f"{tuple(model.sample_shape())}); n = {args.n} captions, guidance scale {args.scale}; "
              f"{args.ref_steps}-step DDIM reference in {time.perf_counter() - t0:.1f} s, its checker accuracy: "
              + ", ".join(f"{k} {ref_acc[k]:.3f}" for k in ACCURACY))
        results = {}
        for label, name, opts in sampler_rows(args.samplers):
            r = results[label] = {k: [] for k in ("ref", *ACCURACY, "nfe", "seconds")}
            for steps in args.steps:
                if steps > model.num_timesteps:
                    for values in r.values():
                        values.append(float("nan"))
                    continue
                calls[0] = 0
                t0 = time.perf_counter()
                z = sample_latents(model, batches, name, steps, args.scale, seed=args.seed + 1, **opts)
                r["seconds"].append(time.perf_counter() - t0)
                r["nfe"].append(calls[0] / len(batches))
                r["ref"].append(rms(z, reference) if name not in STOCHASTIC else float("nan"))
                acc = checker_accuracy(model, z, captions)
                for k in ACCURACY:
                    r[k].append(acc[k])
    return results, {"ref_steps": args.ref_steps, **{k: ref_acc[k] for k in ACCURACY}}


# ------------------------------------------------------------------------------------------------------------ report
def print_table(results: dict, metric: str, steps: list[int], title: str, fmt: str = ".2e") -> None:
    """One row per sampler, one column per step count; '-' where the metric does not apply."""
    print(f"\n{title}")
    print(f"{'sampler':14s}" + "".join(f"{s:>10d}" for s in steps))
    for label, r in results.items():
        cells = "".join(f"{'-':>10s}" if math.isnan(v) else f"{v:>10{fmt}}" for v in r[metric])
        print(f"{label:14s}{cells}")


def compare_claim(results: dict, steps: list[int], metrics: dict[str, bool]) -> dict[str, dict]:
    """Print "dpmpp_2m@20 vs ddim@100" for each metric (True: higher is better); returns the numbers and verdicts."""
    a, sa, b, sb = CLAIM
    head = f"\n{a}@{sa} vs {b}@{sb}"
    if a not in results or b not in results or sa not in steps or sb not in steps:
        print(f"{head}: not measured (needs --samplers {a} {b} and --steps {sa} {sb})")
        return {}
    print(f"{head} ({b} on linspace timesteps):")
    out = {}
    for metric, higher in metrics.items():
        x, y = results[a][metric][steps.index(sa)], results[b][metric][steps.index(sb)]
        good = x >= y if higher else x <= y
        out[metric] = {f"{a}@{sa}": x, f"{b}@{sb}": y, "at_least_as_good": bool(good)}
        print(f"  {metric:9s}: {x:.3e} vs {y:.3e} ({'higher' if higher else 'lower'} is better) -> at least as "
              f"good: {'yes' if good else 'no'}")
    return out


def plot(results: dict, steps: list[int], path: str, panels: list[tuple[str, str, bool]]) -> None:
    """Metric vs steps, one panel per (metric, title, log y), same colour and marker per sampler, saved to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.7 * cols, 5 * rows), squeeze=False)
    colors = plt.get_cmap("tab20")
    style = {label: (colors(k % 20), "osD^v<>"[k % 7]) for k, label in enumerate(results)}  # same in every panel
    for ax, (metric, title, log_y) in zip(axes.flat, panels):
        for label, r in results.items():
            values = [v if v > 0 or not log_y else float("nan") for v in r[metric]]  # log axes: no zeros
            if not all(math.isnan(v) for v in values):
                color, marker = style[label]
                ax.plot(steps, values, marker=marker, color=color, label=label,
                        linestyle="--" if "/" in label or label in STOCHASTIC else "-")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:  # accuracies, with the chance level where it is known
            ax.set_ylim(-0.02, 1.02)
            if metric in CHANCE:
                ax.axhline(CHANCE[metric], color="gray", linestyle=":", label="chance")
        ax.set_xlabel("steps")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[len(panels) - 1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot saved to {path}")


def save_json(path: str, report: dict) -> None:
    """Write the report with NaN (metric not applicable) as null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(report), f, indent=1)
    print(f"numbers saved to {path}")


def report_gaussian(args) -> dict:
    """Run the Gaussian case, print its tables and the claim, plot; returns the report."""
    results = run_gaussian(args)
    print_table(results, "ref", args.steps, f"RMS error vs {args.ref_steps}-step DDIM reference (same x_T)")
    print_table(results, "exact", args.steps, "RMS error vs exact ODE map (same x_T)")
    print_table(results, "dist", args.steps, "distribution error W2(N(mean, std^2), N(mu, s^2))")
    print_table(results, "nfe", args.steps, "model evaluations per sample", "d")
    claim = compare_claim(results, args.steps, {"ref": False, "exact": False, "dist": False})
    plot(results, args.steps, args.out, [("ref", f"RMS vs {args.ref_steps}-step DDIM (same x_T)", True),
                                         ("exact", "RMS vs exact ODE map (same x_T)", True),
                                         ("dist", "W2(N(mean, std), N(mu, s))", True)])
    return {"case": "gaussian", "mu": args.mu, "s": args.s, "n": args.n, "claim": claim}, results


def report_model(model: Any, args) -> tuple[dict, dict]:
    """Run the trained-model case, print its tables and the claim, plot; returns the report."""
    results, reference = run_model(model, args)
    print_table(results, "ref", args.steps, f"RMS error in latent space vs {args.ref_steps}-step DDIM reference "
                                            "(same x_T, same guidance)")
    for metric in ACCURACY:
        print_table(results, metric, args.steps, f"checker accuracy: {metric} (reference: {reference[metric]:.3f})",
                    ".3f")
    print_table(results, "nfe", args.steps, "network calls per sample (cond + uncond in one batch)", ".0f")
    print_table(results, "seconds", args.steps, f"seconds for all {args.n} samples", ".2f")
    claim = compare_claim(results, args.steps, {"ref": False, "all": True})
    if args.ref_steps <= CLAIM[3]:
        print(f"  (note: the {args.ref_steps}-step reference is no finer than {CLAIM[2]}@{CLAIM[3]}, so its ref error "
              "says little; use --ref-steps 1000)")
    plot(results, args.steps, args.out,
         [("ref", f"latent RMS vs {args.ref_steps}-step DDIM (same x_T)", True)]
         + [(m, f"checker accuracy: {m}", False) for m in ("all", "color", "shape", "size", "position")])
    return {"case": "model", "logdir": args.logdir, "scale": args.scale, "n": args.n, "reference": reference,
            "claim": claim}, results


def main(argv=None, model: Any = None) -> dict:
    """Parse arguments, run the Gaussian case or (--logdir, or a given `model`) the trained-model case; report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sampler_quality.png", help="plot path (png)")
    p.add_argument("--json", default=None, help="numbers (default: --out with .json)")
    add_model_arguments(p)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    p.add_argument("--n", type=int, default=None, help="Gaussian: entries of x_T (20000); model: captions (120)")
    p.add_argument("--batch-size", type=int, default=40, help="model: captions per sampling batch")
    p.add_argument("--mu", type=float, default=0.5)
    p.add_argument("--s", type=float, default=0.5)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--linear-start", type=float, default=0.0015, help="CompVis LDM latent schedule default")
    p.add_argument("--linear-end", type=float, default=0.0195)
    p.add_argument("--ref-steps", type=int, default=1000, help="DDIM reference steps (model: at most T)")
    args = p.parse_args(argv)
    args.samplers = args.samplers or available_samplers()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.logdir is not None and model is None:
        model = load_run_model(args)
    if model is None:
        args.n = args.n or 20_000
        report, results = report_gaussian(args)
    else:
        args.n = args.n or 120
        args.ref_steps = min(args.ref_steps, model.num_timesteps)
        report, results = report_model(model, args)
    report.update(steps=args.steps, ref_steps=args.ref_steps, samplers=args.samplers, seed=args.seed, results=results)
    save_json(args.json or os.path.splitext(args.out)[0] + ".json", report)
    return report


if __name__ == "__main__":
    main()
