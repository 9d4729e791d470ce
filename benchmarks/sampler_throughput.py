"""Sampling throughput with classifier-free guidance: our samplers vs diffusers schedulers driving the same UNet.

For a trained shapes LatentDiffusion run (--logdir), every sampler with a diffusers counterpart (`PAIRS`) samples one
batch of --batch balanced captions at --steps steps (default 20) with guidance --scale (cond + uncond in one network
batch) from the same x_T. Ours goes through `model.sample`; the diffusers scheduler runs the usual loop
(`set_timesteps`, `scale_model_input`, `step`) around the same network: the model's `model_fn` (EMA weights) inside
our `guided_model_fn`, so only the sampler differs. The schedulers get the model's own betas (`trained_betas`, so
every beta_schedule matches; LDM's "linear" is diffusers' "scaled_linear" from linear_start to linear_end),
num_train_timesteps = T and prediction_type = the model's parameterization; timestep-spacing options are chosen to
match ours where diffusers has them (see `PAIRS`).

Timing: one untimed warm-up call of each (its outputs give the cross-check and the network calls per run), then
--rounds rounds, each timing every pair back to back in alternating order, so load from other processes hits both
alike. images/s is batch / the median time; ratio is the median of the per-round speed ratios (> 1: ours faster).

Cross-check: max |ours - diffusers| of the final latents for the deterministic pairs (x_T read alike, see
`diffusers_sample`). Same method on the same grid should agree to float32 round-off (~1e-6 of the latents' size):
DDIM (diffusers' leading spacing with steps_offset 1 = our "leading"), PLMS (PNDM with skip_prk_steps), and with
Karras sigmas DPM-Solver++(2M), Euler, Heun and UniPC. dpmpp_3m differs by design (the full Taylor weight, see
`dpm_solver`) and dpmpp_2s on its grid (diffusers' single-step solver spends one model call per "step").

    python benchmarks/sampler_throughput.py --logdir logs/<run> --json logs/<run>/sampler_throughput.json  # GPU
    python benchmarks/sampler_throughput.py --logdir logs/<run> --threads 1 --batch 4 --rounds 3   # CPU: ~4 minutes
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import statistics
import sys
import time
from functools import partial
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.sampler_quality import (STOCHASTIC, add_model_arguments, counting_calls, load_run_model,  # noqa: E402
                                        model_inputs, sample_latents, save_json)
from ldm.diffusion.guidance import guided_model_fn  # noqa: E402
from ldm.eval.shapes_model import evaluation_captions  # noqa: E402

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
KARRAS = {"use_karras_sigmas": True}  # our sigma-space samplers' default grid
# our sampler: (diffusers scheduler class, its options, our sampler options)
PAIRS: dict[str, tuple[str, dict, dict]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                               "timestep_spacing": "leading"}, {"ddim_discretize": "leading"}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1,
                               "timestep_spacing": "leading"}, {"spacing": "leading"}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False, "steps_offset": 0, "timestep_spacing": "leading"}, {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **KARRAS}, {}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3, **KARRAS}, {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                     **KARRAS}, {}),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                  "lower_order_final": True, **KARRAS}, {}),
    "euler": ("EulerDiscreteScheduler", dict(KARRAS), {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, {}),  # no Karras option there: linspace timesteps
    "heun": ("HeunDiscreteScheduler", dict(KARRAS), {}),
    "unipc": ("UniPCMultistepScheduler", dict(KARRAS), {}),
}


def diffusers_scheduler(name: str, model: Any):
    """The diffusers counterpart of our sampler `name`, on the model's betas and parameterization."""
    import diffusers

    cls, opts, _ = PAIRS[name]
    return getattr(diffusers, cls)(num_train_timesteps=model.num_timesteps,
                                   trained_betas=model.betas.detach().cpu().float().numpy(),
                                   prediction_type=PREDICTION_TYPES[model.parameterization], **opts)


@torch.no_grad()
def diffusers_sample(scheduler: Any, model_fn: Any, x_T: torch.Tensor, steps: int, cond: Any,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard diffusers denoising loop around `model_fn(x, t, cond)`, starting from x_T read as ours read it.

    Our samplers read x_T as the VP sample at the first level, i.e. the VE state x_T sqrt(1 + sigma_max^2)
    (`ldm.diffusion.samplers.sigma_space`); diffusers' sigma-space schedulers with linspace / trailing spacing start
    from x_T sigma_max (x_T as pure noise), which differs by sqrt(1 + 1 / sigma_max^2): 0.2% at sigma_max = 14.6,
    far more for schedules that end at low noise. So those start from the VE state, the rest from x_T as usual.
    """
    scheduler.set_timesteps(steps, device=x_T.device)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    init = float(scheduler.init_noise_sigma)
    x = x_T if init == 1.0 else x_T * math.sqrt(1 + float(scheduler.sigmas.max()) ** 2)
    for t in scheduler.timesteps:
        out = model_fn(scheduler.scale_model_input(x, t), t.expand(x.shape[0]), cond)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


def timed(fn) -> float:
    """Seconds that fn() takes, synchronising CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(model: Any, args) -> dict:
    """Warm-up (cross-check, network calls), then alternating timed rounds; returns {sampler: numbers}."""
    model.eval()
    batches = model_inputs(model, evaluation_captions(args.batch, args.seed), args.seed, args.batch)
    x_T, cond, uncond = batches[0]
    guided = guided_model_fn(model.model_fn(use_ema=True), uncond, args.scale)
    runners, results = {}, {}
    with counting_calls(model) as calls:
        for name in args.samplers:
            ours = partial(sample_latents, model, batches, name, args.steps, args.scale, seed=args.seed + 1,
                           **PAIRS[name][2])
            theirs = partial(diffusers_sample, diffusers_scheduler(name, model), guided, x_T, args.steps, cond,
                             torch.Generator().manual_seed(args.seed + 1))
            calls[0] = 0
            z_ours = ours()
            nfe_ours, calls[0] = calls[0], 0
            z_theirs = theirs()
            diff = float("nan") if name in STOCHASTIC else (z_ours - z_theirs).abs().max().item()
            runners[name] = (ours, theirs)
            results[name] = {"diffusers": PAIRS[name][0], "nfe_ours": nfe_ours, "nfe_diffusers": calls[0],
                             "max_abs_diff": diff, "seconds_ours": [], "seconds_diffusers": [], "ratio": []}
    for k in range(args.rounds):
        for name, (ours, theirs) in runners.items():
            r = results[name]
            order = [("ours", ours), ("diffusers", theirs)][:: 1 if k % 2 == 0 else -1]
            seconds = {who: timed(fn) for who, fn in order}
            r["seconds_ours"].append(seconds["ours"])
            r["seconds_diffusers"].append(seconds["diffusers"])
            r["ratio"].append(seconds["diffusers"] / seconds["ours"])
    for r in results.values():
        r["images_per_s_ours"] = args.batch / statistics.median(r["seconds_ours"])
        r["images_per_s_diffusers"] = args.batch / statistics.median(r["seconds_diffusers"])
        r["speed_ratio"] = statistics.median(r["ratio"])
    return results


def print_results(results: dict, args) -> None:
    """One row per pair: network calls, images/s each, the speed ratio and the cross-check difference."""
    print(f"\nthroughput at {args.steps} steps, guidance scale {args.scale} (cond + uncond in one batch), batch "
          f"{args.batch}, median of {args.rounds} rounds; ratio > 1: ours faster")
    print(f"{'sampler':14s}{'diffusers scheduler':33s}{'calls ours/diff':>16s}{'ours img/s':>12s}"
          f"{'diff img/s':>12s}{'ratio':>8s}{'max|ours-diff|':>16s}")
    for name, r in results.items():
        diff = "-" if math.isnan(r["max_abs_diff"]) else f"{r['max_abs_diff']:.2e}"
        print(f"{name:14s}{r['diffusers']:33s}{r['nfe_ours']:>8d}/{r['nfe_diffusers']:<7d}"
              f"{r['images_per_s_ours']:>12.2f}{r['images_per_s_diffusers']:>12.2f}{r['speed_ratio']:>8.2f}"
              f"{diff:>16s}")
    if "ddim" in results:
        print("\nDDIM cross-check (same x_T, same grid): max |ours - diffusers| = "
              f"{results['ddim']['max_abs_diff']:.2e}")


def main(argv=None, model: Any = None) -> dict:
    """Parse arguments, load the run (or take `model`), time every pair, print and save the numbers."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--samplers", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="images per sampling call")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="save the numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if model is None:
        if args.logdir is None:
            p.error("--logdir is required")
        model = load_run_model(args)
    results = run(model, args)
    print_results(results, args)
    report = {"logdir": args.logdir, "steps": args.steps, "scale": args.scale, "batch": args.batch,
              "rounds": args.rounds, "device": str(model.device), "results": results}
    if args.json:
        save_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
