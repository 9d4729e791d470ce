"""Measure time and peak temporary memory of the chunked nearest-code search against the original full-matrix one."""

from __future__ import annotations

import time

import torch

from ldm.modules.vqvae.lookup import auto_chunk_size, default_budget_bytes, nearest_code


def naive_nearest_code(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The original VectorQuantizer2 search: the full (N x n_e) matrix ||z||^2 + ||e||^2 - 2 z.e, then argmin."""
    d = torch.sum(z ** 2, dim=1, keepdim=True) + torch.sum(codes ** 2, dim=1) - 2 * torch.einsum("bd,dn->bn", z,
                                                                                              codes.t())
    return torch.argmin(d, dim=1)


def _cpu_peak_bytes(fn) -> int | None:
    """Peak of live CPU allocations made while `fn()` runs, from the profiler's memory events (None if unavailable)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # private profiler API: report nothing rather than fail the benchmark
        return None
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def _peak_bytes(fn, device: torch.device) -> int | None:
    """Peak extra memory of `fn()` on `device` (CUDA allocator stats, or profiler accounting on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_bytes(fn)


def _best_time(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed runs after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def benchmark_lookup(n_e: int = 16384, e_dim: int = 4, batch: int = 4, height: int = 64, width: int = 64,
                     chunk_size: int | None = None, budget_bytes: int | None = None,
                     repeats: int = 3, device: str | torch.device = "cpu", seed: int = 0,
                     methods: tuple[str, ...] = ("exact", "matmul")) -> dict:
    """Time and peak memory of chunked vs naive lookup for B x H x W latents against an n_e-entry codebook.

    Returns seconds (`*_time_s`, best of `repeats`), measured peak extra bytes (`*_peak_bytes`; None where the
    profiler cannot tell), the size of the largest distance block (`*_block_bytes` = rows * n_e * 4) and whether
    each chunked method chose the same indices as the naive search, for each of `methods`.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch * height * width, e_dim, generator=gen).to(device)
    codes = torch.randn(n_e, e_dim, generator=gen).to(device)
    budget = budget_bytes if budget_bytes is not None else default_budget_bytes(device)
    rows = chunk_size if chunk_size is not None else auto_chunk_size(n_e, torch.float32, budget)
    rows = min(rows, z.shape[0])

    def naive():
        with torch.no_grad():
            return naive_nearest_code(z, codes)

    reference = naive()
    result = {
        "n_vectors": z.shape[0], "n_e": n_e, "e_dim": e_dim, "chunk_rows": rows, "device": str(device),
        "naive_block_bytes": z.shape[0] * n_e * 4, "chunked_block_bytes": rows * n_e * 4,
        "naive_peak_bytes": _peak_bytes(naive, device), "naive_time_s": _best_time(naive, device, repeats),
    }
    for method in methods:
        def chunked(method=method):
            return nearest_code(z, codes, chunk_size=rows, method=method)

        result[f"{method}_peak_bytes"] = _peak_bytes(chunked, device)
        result[f"{method}_time_s"] = _best_time(chunked, device, repeats)
        result[f"{method}_same_indices"] = bool(torch.equal(chunked(), reference))
    return result

if __name__ == "__main__":
    for key, value in benchmark_lookup().items():
        print(f"{key}: {value}")
