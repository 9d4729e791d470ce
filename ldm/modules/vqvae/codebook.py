"""Codebook maintenance for the vector quantizer: EMA updates, usage tracking and dead-code restarts.

All functions work in place on tensors owned by the quantizer, run under no_grad, and use tensor ops only (no `.item()`,
no boolean indexing), so a training step never waits for the host. Across DDP ranks, statistics are summed with
all-reduce and restart candidates are broadcast from rank 0, so every rank keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(*tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks in place (no-op outside distributed runs)."""
    if is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def broadcast_from_rank0_(tensor: torch.Tensor) -> None:
    """Overwrite `tensor` with rank 0's copy (no-op outside distributed runs)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)


@torch.no_grad()
def assignment_sums(z_flat: torch.Tensor, indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Sum of the vectors assigned to each code, shape (n_codes, D), via index_add (no one-hot matrix)."""
    sums = torch.zeros(n_codes, z_flat.shape[1], dtype=z_flat.dtype, device=z_flat.device)
    return sums.index_add_(0, indices, z_flat)


@torch.no_grad()
def ema_codebook_update_(weight: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor,
                         counts: torch.Tensor, sums: torch.Tensor, decay: float, eps: float) -> None:
    """EMA codebook step (VQ-VAE, van den Oord et al. 2017, App. A.1): N <- d N + (1-d) n, m <- d m + (1-d) sum z,
    e = m / N~ with Laplace smoothing N~ = (N + eps) / (sum N + K eps) * sum N. Writes the codes into `weight`."""
    cluster_size.lerp_(counts.to(cluster_size.dtype), 1.0 - decay)
    embed_sum.lerp_(sums.to(embed_sum.dtype), 1.0 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    weight.copy_((embed_sum / smoothed.unsqueeze(1)).to(weight.dtype))


@torch.no_grad()
def record_usage_(history: torch.Tensor, usage_count: torch.Tensor, batches_seen: torch.Tensor,
                  counts: torch.Tensor) -> None:
    """Push one batch of per-code counts into the ring buffer `history` (W, K) and keep `usage_count` = its row sum."""
    slot = torch.remainder(batches_seen, history.shape[0]).reshape(1)
    new = counts.to(history.dtype)
    usage_count.add_(new - history.index_select(0, slot).squeeze(0))
    history.index_copy_(0, slot, new.unsqueeze(0))
    batches_seen.add_(1)


def dead_code_mask(usage_count: torch.Tensor, threshold: float, batches_seen: torch.Tensor | None = None,
                   last_restart: torch.Tensor | None = None, window: int = 0) -> torch.Tensor:
    """Codes used fewer than `threshold` times in the window; with `last_restart`, only codes whose last restart (or
    the start of training) is at least `window` batches ago, so a full window is observed before judging a code."""
    dead = usage_count < threshold
    if last_restart is not None and batches_seen is not None:
        dead = dead & ((batches_seen - last_restart) >= window)
    return dead


@torch.no_grad()
def restart_dead_codes_(weight: torch.Tensor, z_flat: torch.Tensor, dead: torch.Tensor,
                        history: torch.Tensor, usage_count: torch.Tensor, last_restart: torch.Tensor,
                        batches_seen: torch.Tensor, cluster_size: torch.Tensor | None = None,
                        embed_sum: torch.Tensor | None = None) -> None:
    """Re-initialise dead codes from random vectors of the current batch (rank 0's draw on every rank).

    Restarted codes get a fresh usage history and, with an EMA codebook, EMA statistics equal to one assignment of
    the new vector (cluster size 1, sum = vector) so that the EMA ratio reproduces it.
    """
    pick = torch.randint(0, z_flat.shape[0], (weight.shape[0],), device=z_flat.device)
    candidates = z_flat.index_select(0, pick).to(weight.dtype)
    broadcast_from_rank0_(candidates)
    column = dead.unsqueeze(1)
    weight.copy_(torch.where(column, candidates, weight))
    if cluster_size is not None and embed_sum is not None:
        cluster_size.copy_(torch.where(dead, torch.ones_like(cluster_size), cluster_size))
        embed_sum.copy_(torch.where(column, candidates.to(embed_sum.dtype), embed_sum))
    usage_count.masked_fill_(dead, 0)
    history.masked_fill_(dead.unsqueeze(0), 0)
    last_restart.copy_(torch.where(dead, batches_seen.expand_as(last_restart), last_restart))
