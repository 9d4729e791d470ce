"""Stage-1 training-step benchmark: our AutoencoderKL (f8) vs diffusers.AutoencoderKL with the identical architecture.

One run measures both side by side: the same batch, the same generator loss (L1 + LPIPS + KL), forward + backward +
Adam step, alternating rounds so drift affects both. Prints images/s, peak memory and the ratio ours / diffusers for
fp32, channels_last and bf16 autocast. Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the
process's peak RSS during the step, each model measured in its own fresh subprocess (RSS peaks are per process).

    python benchmarks/bench_autoencoder.py                    # CPU defaults: 128 px, batch 2
    python benchmarks/bench_autoencoder.py --device cuda --resolution 256 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

F8 = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
          num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def build_ours(ch: int) -> torch.nn.Module:
    """Our encoder/decoder + quant convs (the generator of AutoencoderKL), without the GAN loss module."""
    from torch import nn

    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    cfg = dict(F8, ch=ch)

    class OursKL(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(**cfg), Decoder(**cfg)
            self.quant_conv, self.post_quant_conv = nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            post = DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))
            return self.decoder(self.post_quant_conv(post.sample())), post.kl()

    return OursKL()


def build_diffusers(ch: int) -> torch.nn.Module:
    """diffusers.AutoencoderKL configured as the LDM kl-f8 first stage."""
    from diffusers import AutoencoderKL
    from torch import nn

    class DiffusersKL(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4,
                                     block_out_channels=tuple(ch * m for m in F8["ch_mult"]), layers_per_block=2,
                                     latent_channels=4, norm_num_groups=32, sample_size=256)

        def forward(self, x):
            post = self.vae.encode(x).latent_dist
            return self.vae.decode(post.sample()).sample, post.kl()

    return DiffusersKL()


def build_lpips(device: torch.device) -> torch.nn.Module:
    """The same perceptual loss for both models (random VGG trunk when the ImageNet weights are not installed)."""
    from ldm.modules.losses.lpips import LPIPS, default_vgg_path

    random_trunk = not os.path.isfile(default_vgg_path())
    if random_trunk:
        print("note: VGG16 ImageNet weights not installed; LPIPS uses a random trunk (same cost, same for both)")
    return LPIPS(random_trunk=random_trunk).to(device).eval()


class Step:
    """One generator training step (forward, L1 + LPIPS + 1e-6 KL, backward, Adam) for a model and a variant."""

    def __init__(self, model, lpips, x, channels_last: bool, bf16: bool):
        self.model, self.lpips, self.x = model, lpips, x
        self.bf16 = bf16
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.9))

    def __call__(self):
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            recon, kl = self.model(self.x)
            rec = (self.x - recon).abs().mean() + self.lpips(self.x, recon).mean()
            loss = rec + 1e-6 * kl.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Step, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n


def make_step(which: str, args, device, variant: str) -> Step:
    torch.manual_seed(0)
    model = (build_ours if which == "ours" else build_diffusers)(args.ch).to(device).train()
    x = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    return Step(model, build_lpips(device), x, channels_last=variant == "channels_last", bf16=variant == "bf16")


def peak_memory_mb(which: str, args, device, variant: str) -> float:
    """Peak memory of the training step in MB (GPU: allocator peak; CPU: peak-RSS growth in a fresh process)."""
    if device.type == "cuda":
        step = make_step(which, args, device, variant)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-probe", which, "--variant", variant,
           "--resolution", str(args.resolution), "--batch", str(args.batch), "--ch", str(args.ch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def memory_probe(args) -> None:
    step = make_step(args._memory_probe, args, torch.device("cpu"), args.variant)
    rss_now = _current_rss_mb()
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"peak_mb": peak - rss_now}))


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ch", type=int, default=128, help="base width (128 = the paper's f8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--variants", default="fp32,channels_last,bf16")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--_memory-probe", dest="_memory_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_probe:
        memory_probe(args)
        return

    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={args.batch} resolution={args.resolution} ch={args.ch}")
    ours, theirs = build_ours(args.ch), build_diffusers(args.ch)
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    print(f"parameters: ours {n_ours:,}  diffusers {n_theirs:,}  ({'identical' if n_ours == n_theirs else 'DIFFER'})")
    del ours, theirs

    rows = []
    for variant in args.variants.split(","):
        steps = {w: make_step(w, args, device, variant) for w in ("ours", "diffusers")}
        for step in steps.values():  # warm-up (allocator, cudnn autotune, first-call overheads)
            step()
        times = {w: [] for w in steps}
        for _ in range(args.rounds):
            for w, step in steps.items():
                times[w].append(time_steps(step, args.steps, device))
        del steps
        ips = {w: args.batch / statistics.median(t) for w, t in times.items()}
        mem = ({w: float("nan") for w in times} if args.no_memory
               else {w: peak_memory_mb(w, args, device, variant) for w in times})
        rows.append((variant, ips, mem))

    print(f"\n{'variant':<14}{'ours img/s':>12}{'diffusers img/s':>17}{'speed ratio':>13}"
          f"{'ours MB':>10}{'diffusers MB':>14}{'mem ratio':>11}")
    for variant, ips, mem in rows:
        print(f"{variant:<14}{ips['ours']:>12.2f}{ips['diffusers']:>17.2f}{ips['ours'] / ips['diffusers']:>13.3f}"
              f"{mem['ours']:>10.0f}{mem['diffusers']:>14.0f}{mem['ours'] / mem['diffusers']:>11.3f}")
    print("\nspeed ratio = ours / diffusers images/s (>= 1.0 means ours is at least as fast); "
          "mem ratio = ours / diffusers peak memory (< 1.0 means ours uses less)")


if __name__ == "__main__":
    main()
