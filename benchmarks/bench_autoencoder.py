"""Stage-1 training-step benchmark: our f8 autoencoders vs diffusers' with the identical architecture.

`--model kl`: AutoencoderKL (kl-f8) vs diffusers.AutoencoderKL; `--model vq`: VQModel (vq-f8, 16384 codes, attention
at 32) vs diffusers.VQModel, plus the quantizer's nearest-code lookup (chunked vs the naive full distance matrix).
One run measures both side by side: the same batch, the same generator loss (L1 + LPIPS + KL or codebook loss),
forward + backward + Adam step, alternating rounds so drift affects both. Prints images/s, peak memory and the ratio ours / diffusers for
fp32, channels_last and bf16 autocast. Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the
process's peak RSS during the step, each model measured in its own fresh subprocess (RSS peaks are per process).

    python benchmarks/bench_autoencoder.py                    # CPU defaults: kl, 64 px, batch 1
    python benchmarks/bench_autoencoder.py --model vq         # VQ-f8 and the codebook lookup
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

KL_F8 = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
             num_res_blocks=2, attn_resolutions=[], dropout=0.0)
VQ_F8 = dict(double_z=False, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 4],
             num_res_blocks=2, attn_resolutions=[32], dropout=0.0)
N_EMBED = 16384


def build_ours(ch: int, kind: str = "kl") -> torch.nn.Module:
    """Our generator (encoder, quant convs, regularizer, decoder) without the GAN loss; forward -> (recon, aux loss)."""
    from torch import nn

    from ldm.models.autoencoder import AutoencoderKL, VQModel

    identity = {"target": "torch.nn.Identity"}
    if kind == "kl":
        model = AutoencoderKL(ddconfig=dict(KL_F8, ch=ch), lossconfig=identity, embed_dim=4)
    else:
        model = VQModel(ddconfig=dict(VQ_F8, ch=ch), lossconfig=identity, n_embed=N_EMBED, embed_dim=4)

    class Ours(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            if kind == "kl":
                recon, post = self.model(x)
                return recon, 1e-6 * post.kl().mean()
            recon, (qloss, _) = self.model(x)
            return recon, qloss

    return Ours()


def build_diffusers(ch: int, kind: str = "kl") -> torch.nn.Module:
    """diffusers.AutoencoderKL / VQModel configured as the LDM kl-f8 / vq-f8 first stage."""
    from diffusers import AutoencoderKL, VQModel
    from torch import nn

    class Theirs(nn.Module):
        def __init__(self):
            super().__init__()
            if kind == "kl":
                self.vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                         up_block_types=("UpDecoderBlock2D",) * 4,
                                         block_out_channels=tuple(ch * m for m in KL_F8["ch_mult"]),
                                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
            else:
                self.vae = VQModel(in_channels=3, out_channels=3,
                                   down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
                                   up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
                                   block_out_channels=tuple(ch * m for m in VQ_F8["ch_mult"]), layers_per_block=2,
                                   latent_channels=4, num_vq_embeddings=N_EMBED, vq_embed_dim=4, norm_num_groups=32,
                                   sample_size=256)

        def forward(self, x):
            if kind == "kl":
                post = self.vae.encode(x).latent_dist
                return self.vae.decode(post.sample()).sample, 1e-6 * post.kl().mean()
            out = self.vae(x)
            return out.sample, out.commit_loss.mean()

    return Theirs()


def build_lpips(device: torch.device) -> torch.nn.Module:
    """The same perceptual loss for both models (random VGG trunk when the ImageNet weights are not installed)."""
    from ldm.modules.losses.lpips import LPIPS, default_vgg_path

    random_trunk = not os.path.isfile(default_vgg_path())
    if random_trunk:
        print("note: VGG16 ImageNet weights not installed; LPIPS uses a random trunk (same cost, same for both)")
    return LPIPS(random_trunk=random_trunk).to(device).eval()


class Step:
    """One generator training step (forward, L1 + LPIPS + KL/codebook term, backward, Adam) for a model and a variant."""

    def __init__(self, model, lpips, x, channels_last: bool, bf16: bool):
        self.model, self.lpips, self.x = model, lpips, x
        self.bf16 = bf16
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.9))

    def __call__(self):
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            recon, aux = self.model(self.x)
            loss = (self.x - recon).abs().mean() + self.lpips(self.x, recon).mean() + aux
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
    model = (build_ours if which == "ours" else build_diffusers)(args.ch, args.model).to(device).train()
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
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-probe", which, "--variant", variant, "--model", args.model,
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


def print_lookup(device: torch.device) -> None:
    """Nearest-code search for 16384 codes at B=4 x 64x64 latents: chunked (ours) vs the naive full matrix."""
    from ldm.modules.vqvae.benchmark import benchmark_lookup

    r = benchmark_lookup(n_e=N_EMBED, e_dim=4, batch=4, height=64, width=64, device=device)
    mb = lambda b: float("nan") if b is None else b / 2**20  # noqa: E731
    print(f"\ncodebook lookup, {r['n_vectors']} vectors x {r['n_e']} codes ({device}):")
    print(f"{'method':<22}{'time s':>9}{'peak MB':>10}{'largest block MB':>18}{'same indices':>14}")
    print(f"{'naive (full matrix)':<22}{r['naive_time_s']:>9.3f}{mb(r['naive_peak_bytes']):>10.1f}"
          f"{mb(r['naive_block_bytes']):>18.1f}{'-':>14}")
    for method in ("exact", "matmul"):
        print(f"{'chunked ' + method:<22}{r[method + '_time_s']:>9.3f}{mb(r[method + '_peak_bytes']):>10.1f}"
              f"{mb(r['chunked_block_bytes']):>18.1f}{str(r[method + '_same_indices']):>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("kl", "vq"), default="kl")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ch", type=int, default=128, help="base width (128 = the paper's f8)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
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
    print(f"model={args.model}-f8 device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={args.batch} resolution={args.resolution} ch={args.ch}")
    ours, theirs = build_ours(args.ch, args.model), build_diffusers(args.ch, args.model)
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
    if args.model == "vq":
        print_lookup(device)
    print("\nspeed ratio = ours / diffusers images/s (>= 1.0 means ours is at least as fast); "
          "mem ratio = ours / diffusers peak memory (< 1.0 means ours uses less)")


if __name__ == "__main__":
    main()
