"""Stage-2 U-Net training-step benchmark: our UNetModel vs diffusers.UNet2DConditionModel with the same architecture.

Both models get the same batch: 4-channel latents (default 32x32), random timesteps, a 77-token context and a random
MSE target; a step is zero_grad + forward + MSE + backward (no optimizer update, so the network itself is measured).
Timing runs both models in this process, warm-up first, then alternating rounds of `--steps` steps each: steps/s is
the median over rounds, and the speed ratio is the median of the per-round ratios (each round pairs the two models
back to back, so load from other processes hits both alike). Variants: fp32, checkpoint (use_checkpoint=True vs diffusers'
enable_gradient_checkpointing), channels_last (inputs and weights of both models in channels_last), bf16 (autocast),
compile (both models compiled per block with ldm.modules.compile.compile_regions: our ResBlock/SpatialTransformer,
diffusers' ResnetBlock2D/Transformer2DModel; the first step, which compiles, is timed and reported on its own; ours
compiles first, and inductor's kernel cache lets the second model reuse identical kernels, so the compile times are
an upper bound for ours); combine with '+', e.g. channels_last+bf16. compile takes minutes at width 192, so it is not
a default variant.

Roofline: each model's step is counted once with torch's FlopCounterMode (convolutions, matmuls and attention,
forward and backward) and set against the machine's measured rate on a large square matmul in the step's dtype. A
model's "% of GEMM" is its FLOP rate over that rate; "ceiling" is the fastest any implementation of these same FLOPs
could be relative to diffusers if every FLOP ran at the matmul rate (GEMM rate / FLOPs / diffusers steps/s). A speed
ratio above the ceiling needs fewer FLOPs or a faster kernel library, not a better model code path.

The FLOP count runs one eager step of each model before the timed ones, so "first step" is a cold step only in
what compiles (variant compile).

Peak memory is the growth above the memory held just before a step (parameters + inputs + warm caches): the
gradients, activations and temporaries of one step. GPU: torch.cuda.max_memory_allocated after reset_peak_memory_stats.
CPU: torch's CPU allocator keeps no peak counter and tracemalloc does not see its allocations, so each (model, variant)
runs in a fresh subprocess that (1) fixes glibc's mmap threshold at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that every
tensor above 64 KiB is mapped on allocation and returned to the OS on free, i.e. RSS follows the live tensors instead
of allocator slack, (2) runs one warm-up step (library pages, oneDNN caches), (3) resets the kernel's peak-RSS counter
(VmHWM, via /proc/self/clear_refs) and reports VmHWM minus VmRSS over one more step. Both models are measured alike.

    python benchmarks/bench_unet.py                                  # CPU defaults: model_channels 64, batch 2
    python benchmarks/bench_unet.py --device cuda --model-channels 320 --batch 8   # the SD v1 U-Net
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Stable Diffusion v1's U-Net (model_channels is scaled by --model-channels).
SD_V1 = dict(in_channels=4, out_channels=4, channel_mult=(1, 2, 4, 4), attention_resolutions=(4, 2, 1),
             num_res_blocks=2, num_heads=8, context_dim=768)
VARIANT_FLAGS = ("checkpoint", "channels_last", "bf16", "compile")


def unet_config(args) -> dict:
    """Our UNetModel parameters for the benchmark (SD v1 layout at `--model-channels`)."""
    return dict(SD_V1, image_size=args.size, model_channels=args.model_channels, context_dim=args.context_dim,
                use_spatial_transformer=True, transformer_depth=1, legacy=False)


def build_ours(args, checkpoint: bool) -> torch.nn.Module:
    """Our ldm UNetModel."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**unet_config(args), use_checkpoint=checkpoint)


def compile_blocks(model: torch.nn.Module, ours: bool) -> int:
    """Compile both models the same way: per block (ResBlock + SpatialTransformer / their diffusers counterparts)."""
    from ldm.modules.compile import compile_regions

    if ours:
        return compile_regions(model)
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return compile_regions(model, regions=(ResnetBlock2D, Transformer2DModel))


def build_diffusers(args, checkpoint: bool) -> torch.nn.Module:
    """diffusers.UNet2DConditionModel with the same channels, blocks, heads and cross-attention width."""
    from diffusers import UNet2DConditionModel

    cfg = unet_config(args)
    attn = [2 ** level in cfg["attention_resolutions"] for level in range(len(cfg["channel_mult"]))]
    model = UNet2DConditionModel(
        sample_size=args.size, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg["model_channels"] * m for m in cfg["channel_mult"]),
        layers_per_block=cfg["num_res_blocks"], cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_heads"],  # diffusers' legacy name: this is the number of heads for SD v1
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu")
    if checkpoint:
        model.enable_gradient_checkpointing()
    return model


class Step:
    """One training step of a model: zero_grad, forward (optionally bf16 autocast), MSE to a fixed target, backward."""

    def __init__(self, which: str, args, device: torch.device, variant: str, count_flops: bool = False):
        flags = set(variant.split("+")) - {"fp32"}
        if flags - set(VARIANT_FLAGS):
            raise SystemExit(f"unknown variant {variant!r}; use fp32 or a '+' combination of {VARIANT_FLAGS}")
        torch.manual_seed(0)
        build = build_ours if which == "ours" else build_diffusers
        self.model = build(args, "checkpoint" in flags).to(device).train()
        self.ours, self.bf16 = which == "ours", "bf16" in flags
        gen = torch.Generator().manual_seed(1)
        shape = (args.batch, 4, args.size, args.size)
        self.x = torch.randn(shape, generator=gen).to(device)
        self.target = torch.randn(shape, generator=gen).to(device)
        self.t = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
        self.context = torch.randn(args.batch, args.tokens, args.context_dim, generator=gen).to(device)
        if "channels_last" in flags:
            self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.flops = step_flops(self) if count_flops else None  # eager, before any compile: the same FLOPs
        if "compile" in flags:
            compile_blocks(self.model, self.ours)

    def __call__(self) -> None:
        self.model.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.ours:
                out = self.model(self.x, self.t, context=self.context)
            else:
                out = self.model(self.x, self.t, encoder_hidden_states=self.context, return_dict=False)[0]
        F.mse_loss(out.float(), self.target).backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_attention_flop_formulas() -> dict:
    """FlopCounterMode formulas for the CPU flash-attention kernels (torch maps only the CUDA ones)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def step_flops(step: Step) -> int:
    """FLOPs of one training step: convolutions, matmuls and attention, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flop_formulas()) as counter:
        step()
    return counter.get_total_flops()


def gemm_rate(device: torch.device, dtype: torch.dtype, reps: int = 6) -> float:
    """FLOP/s of large square matmuls in `dtype`, best of `reps` at each size: the machine's practical peak for the
    step's dominant kernels (the best, not the median: other load on the machine only ever lowers it)."""
    sizes = (4096, 8192) if device.type == "cuda" else (2048, 3072)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":  # fp32 convolutions run in TF32 by default (cudnn.allow_tf32): rate that math
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        return _best_matmul_rate(device, dtype, sizes, reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _best_matmul_rate(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], reps: int) -> float:
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up: packing buffers, clocks
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def time_steps(step: Step, n: int, device: torch.device) -> float:
    """Mean seconds per step over `n` steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n


def peak_memory_mb(which: str, args, device: torch.device, variant: str) -> float:
    """Peak memory growth of one step in MB above parameters + inputs (see the module docstring)."""
    if device.type == "cuda":
        step = Step(which, args, device, variant)
        step()  # first call: cuDNN/cuBLAS workspaces and lazy state are not part of the step
        step.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del step
        torch.cuda.empty_cache()
        return peak
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-probe", which, "--variant", variant,
           "--batch", str(args.batch), "--size", str(args.size), "--model-channels", str(args.model_channels),
           "--context-dim", str(args.context_dim), "--tokens", str(args.tokens)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {key}")


def memory_probe(args) -> None:
    """Subprocess entry: build one model, warm up, reset the peak-RSS counter, run a step, print the growth as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    step = Step(args._memory_probe, args, torch.device("cpu"), args.variant)
    step()
    step.model.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    before = _proc_status_mb("VmRSS")
    step()
    print(json.dumps({"peak_mb": _proc_status_mb("VmHWM") - before}))


def count_parameters(args) -> tuple[int, int]:
    """Parameter counts of both models (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return (sum(p.numel() for p in build_ours(args, False).parameters()),
                sum(p.numel() for p in build_diffusers(args, False).parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=1, help="steps per model before the timed rounds (the first is "
                        "timed on its own: for variant compile it is the compile time)")
    parser.add_argument("--model-channels", type=int, default=64, help="320 = the Stable Diffusion v1 U-Net")
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--context-dim", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--variants", default="fp32,checkpoint,channels_last,bf16")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--_memory-probe", dest="_memory_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_probe:
        memory_probe(args)
        return
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--rounds, --steps and --warmup must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
          f"latents=4x{args.size}x{args.size} context={args.tokens}x{args.context_dim} "
          f"model_channels={args.model_channels}")
    n_ours, n_theirs = count_parameters(args)
    print(f"parameters: ours {n_ours:,}  diffusers {n_theirs:,}  ({'identical' if n_ours == n_theirs else 'DIFFER'})")
    if n_ours != n_theirs:
        raise SystemExit("the two configurations are not the same architecture; fix build_diffusers")

    rows, rates = [], {}
    for variant in args.variants.split(","):
        if "compile" in variant.split("+"):
            from ldm.modules.compile import compile_unavailable_reason

            # Compiles a two-op function: the one-time start-up of the compiler is not charged to the first model.
            reason = compile_unavailable_reason(device)
            if reason:
                raise SystemExit(f"variant {variant!r}: torch.compile is unavailable here ({reason})")
        steps = {w: Step(w, args, device, variant, count_flops=True) for w in ("ours", "diffusers")}
        first = {w: time_steps(step, 1, device) for w, step in steps.items()}  # compiles, for variant compile
        for _ in range(args.warmup - 1):
            for step in steps.values():
                step()
        times = {w: [] for w in steps}
        for _ in range(args.rounds):
            for w, step in steps.items():
                times[w].append(time_steps(step, args.steps, device))
        flops = {w: step.flops for w, step in steps.items()}
        del steps
        sps = {w: 1.0 / statistics.median(t) for w, t in times.items()}
        sps["ratio"] = statistics.median(d / o for o, d in zip(times["ours"], times["diffusers"]))
        skip_memory = args.no_memory or "compile" in variant.split("+")  # a probe would compile all over again
        mem = ({w: float("nan") for w in times} if skip_memory
               else {w: peak_memory_mb(w, args, device, variant) for w in times})
        dtype = torch.bfloat16 if "bf16" in variant.split("+") else torch.float32
        if dtype not in rates:
            rates[dtype] = gemm_rate(device, dtype)
        roof = {w: sps[w] * flops[w] / rates[dtype] for w in flops}  # fraction of the GEMM rate
        roof["ceiling"] = rates[dtype] / flops["ours"] / sps["diffusers"]
        rows.append((variant, sps, mem, roof))
        rounds = " ".join(f"{d / o:.2f}" for o, d in zip(times["ours"], times["diffusers"]))
        print(f"  {variant}: ours {sps['ours']:.3f} steps/s, diffusers {sps['diffusers']:.3f} steps/s, "
              f"per-round ratios {rounds}; first step (compiles for 'compile') ours {first['ours']:.1f} s, "
              f"diffusers {first['diffusers']:.1f} s; {flops['ours'] / 1e9:.1f} GFLOP per step (diffusers "
              f"{flops['diffusers'] / 1e9:.1f}), {str(dtype).split('.')[-1]} GEMM rate "
              f"{rates[dtype] / 1e9:.0f} GFLOP/s", flush=True)

    print(f"\n{'variant':<22}{'ours steps/s':>13}{'diffusers steps/s':>19}{'speed ratio':>13}"
          f"{'ours MB':>10}{'diffusers MB':>14}{'mem ratio':>11}{'ours % GEMM':>13}{'diffusers % GEMM':>18}"
          f"{'ceiling':>9}")
    for variant, sps, mem, roof in rows:
        print(f"{variant:<22}{sps['ours']:>13.3f}{sps['diffusers']:>19.3f}{sps['ratio']:>13.3f}"
              f"{mem['ours']:>10.0f}{mem['diffusers']:>14.0f}{mem['ours'] / mem['diffusers']:>11.3f}"
              f"{100 * roof['ours']:>13.0f}{100 * roof['diffusers']:>18.0f}{roof['ceiling']:>9.2f}")
    print("\nspeed ratio = median over rounds of ours / diffusers steps/s (> 1 means ours is faster); "
          "mem ratio = ours / diffusers peak step memory (< 1 means ours uses less); % GEMM = the model's FLOP rate "
          "as a share of a large matmul's; ceiling = the highest speed ratio these FLOPs allow (all at the GEMM rate)")


if __name__ == "__main__":
    main()
