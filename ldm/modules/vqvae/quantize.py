"""Vector quantizer with the interface and state_dict of taming's VectorQuantizer2 (used by CompVis VQModel).

Extras over the original, off by default: EMA codebook, dead-code restarts, cosine (l2-normalised) lookup. Always on:
a chunked nearest-code search (`lookup.py`; no (N x n_e) matrix) and codebook health statistics (`codebook_stats`).

State-dict keys: `embedding.weight` (n_e, e_dim) and, with `remap`, `used`, as the original; `ema_cluster_size` /
`ema_embed_sum` only with `use_ema`; the usage buffers (`usage_history`, `usage_count`, `batches_seen`,
`last_restart`) only with `restart_dead_codes` (otherwise they are kept but not saved). A checkpoint lacking a
feature's buffers loads (they keep their fresh values; EMA statistics start from the loaded codebook); buffers of a
feature that is off are ignored when loading.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.vqvae import codebook as cb
from ldm.modules.vqvae import remap as rm
from ldm.modules.vqvae.lookup import code_counts, nearest_code, perplexity_from_counts, resolve_method

EMA_BUFFERS = ("ema_cluster_size", "ema_embed_sum")
USAGE_BUFFERS = ("usage_history", "usage_count", "batches_seen", "last_restart")


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer (VQ-VAE, van den Oord et al. 2017) with a straight-through estimator.

    Loss (`legacy` switch kept from the original VectorQuantizer2, default True):
      legacy=True : ||sg(z_q) - z||^2 + beta * ||z_q - sg(z)||^2   (beta on the codebook term; the original's default)
      legacy=False: beta * ||sg(z_q) - z||^2 + ||z_q - sg(z)||^2   (beta on the commitment term, as in the paper)
    where ||sg(z_q) - z||^2 is the commitment term and ||z_q - sg(z)||^2 moves the codes. With `use_ema` the codebook
    term is dropped (codes move by EMA) and only the commitment term remains, with the weight the switch gives it.

    New options: `use_ema` (codes = EMA sums / Laplace-smoothed EMA counts, decay `ema_decay`, smoothing `ema_eps`);
    `restart_dead_codes` (codes used fewer than `dead_code_threshold` times over the last `usage_window` training
    batches are re-drawn from the batch's encoder outputs); `l2_normalize` (cosine lookup on unit vectors);
    `chunk_size` rows per distance block, or None to size blocks from `lookup_budget_bytes` (None: by device);
    `lookup_method` "auto" / "exact" / "matmul" (see `lookup.py`). Codebook maintenance runs only in training mode.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap: str | None = None,
                 unknown_index: str | int = "random", sane_index_shape: bool = False, legacy: bool = True,
                 use_ema: bool = False, ema_decay: float = 0.99, ema_eps: float = 1e-5,
                 restart_dead_codes: bool = False, dead_code_threshold: float = 1.0, usage_window: int = 100,
                 l2_normalize: bool = False, chunk_size: int | None = None,
                 lookup_budget_bytes: int | None = None, lookup_method: str = "auto"):
        super().__init__()
        if int(n_e) <= 0 or int(e_dim) <= 0:
            raise ValueError(f"VectorQuantizer needs n_e > 0 and e_dim > 0 (n_embed / embed_dim), got {n_e}, {e_dim}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"VectorQuantizer ema_decay must be in [0, 1), got {ema_decay}")
        if int(usage_window) < 1:
            raise ValueError(f"VectorQuantizer usage_window must be >= 1 batch, got {usage_window}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"VectorQuantizer chunk_size must be a positive number of rows, got {chunk_size}")
        self.n_e, self.e_dim, self.beta, self.legacy = int(n_e), int(e_dim), float(beta), bool(legacy)
        self.use_ema, self.ema_decay, self.ema_eps = bool(use_ema), float(ema_decay), float(ema_eps)
        self.restart_dead_codes, self.dead_code_threshold = bool(restart_dead_codes), float(dead_code_threshold)
        self.usage_window, self.l2_normalize = int(usage_window), bool(l2_normalize)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.lookup_budget_bytes = None if lookup_budget_bytes is None else int(lookup_budget_bytes)
        self.lookup_method = resolve_method(lookup_method, self.e_dim)
        self.sane_index_shape = bool(sane_index_shape)

        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)  # original initialisation

        self.remap = remap
        if remap is not None:
            used = rm.load_used_indices(remap)
            self.register_buffer("used", used)
            self.register_buffer("_used_table", rm.build_inverse_table(used, self.n_e), persistent=False)
            self.unknown_index, self.re_embed = rm.resolve_unknown_index(unknown_index, used.numel())
        else:
            self.unknown_index, self.re_embed = unknown_index, self.n_e

        if self.use_ema:
            # The codes are a function of the EMA statistics, not trained by gradients. Starting from cluster size 1
            # and sum = code keeps the ratio equal to the initial codes (a zero start would blow unused codes up).
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.ones(self.n_e))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())

        keep = self.restart_dead_codes  # usage decides restarts, so it must survive a resume
        self.register_buffer("usage_history", torch.zeros(self.usage_window, self.n_e, dtype=torch.int32),
                             persistent=keep)
        self.register_buffer("usage_count", torch.zeros(self.n_e, dtype=torch.int32), persistent=keep)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long), persistent=keep)
        self.register_buffer("last_restart", torch.zeros(self.n_e, dtype=torch.long), persistent=keep)
        self.register_buffer("last_perplexity", torch.zeros(()), persistent=False)

    def extra_repr(self) -> str:
        """Short summary for print(module)."""
        flags = [f"n_e={self.n_e}", f"e_dim={self.e_dim}", f"beta={self.beta}", f"legacy={self.legacy}"]
        if self.use_ema:
            flags.append(f"ema_decay={self.ema_decay}")
        if self.restart_dead_codes:
            flags.append(f"restart(threshold={self.dead_code_threshold}, window={self.usage_window})")
        if self.l2_normalize:
            flags.append("l2_normalize=True")
        if self.remap is not None:
            flags.append(f"remap={self.remap!r}, re_embed={self.re_embed}")
        return ", ".join(flags)

    @torch.no_grad()
    def init_codebook_(self, codes: torch.Tensor) -> None:
        """Set the codes (n_e, e_dim), e.g. from k-means; with `use_ema` the EMA statistics restart from them."""
        if tuple(codes.shape) != (self.n_e, self.e_dim):
            raise ValueError(f"init_codebook_ expects codes of shape ({self.n_e}, {self.e_dim}), "
                             f"got {tuple(codes.shape)}")
        self.embedding.weight.copy_(codes)
        if self.use_ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(codes)

    # ------------------------------------------------------------------ lookup
    def codebook(self) -> torch.Tensor:
        """The codes used for lookup and quantization: the embedding, l2-normalised rows when `l2_normalize`."""
        weight = self.embedding.weight
        # clone first so that in-place codebook updates after forward do not invalidate normalize's saved input
        return F.normalize(weight.clone(), dim=1) if self.l2_normalize else weight

    def lookup(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices (N,) for vectors (N, e_dim), chunked so the (N x n_e) matrix is never built."""
        if self.l2_normalize:
            z_flat = F.normalize(z_flat, dim=1)
        return self._search(z_flat, self.codebook())

    def _search(self, z_flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Chunked nearest-code indices with this quantizer's chunking and method."""
        return nearest_code(z_flat.detach(), codes.detach(), self.chunk_size, self.lookup_budget_bytes,
                            self.lookup_method)

    # ----------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        """Quantize NCHW `z`; returns (z_q, loss, (perplexity, None, indices)) as VectorQuantizer2 (which returned
        None for the perplexity; here it is the batch's codebook perplexity). Indices are (N,), (N, 1) with `remap`,
        or (B, H, W) with `sane_index_shape`, as in the original."""
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("VectorQuantizer is a hard quantizer: temp, rescale_logits and return_logits are unused")
        if z.dim() != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"VectorQuantizer expects z of shape (B, {self.e_dim}, H, W), got {tuple(z.shape)}")
        z = z.permute(0, 2, 3, 1)
        if self.l2_normalize:
            z = F.normalize(z, dim=-1)
        z_flat = z.reshape(-1, self.e_dim)
        codes = self.codebook()
        indices = self._search(z_flat, codes)
        z_q = F.embedding(indices, codes).view(z.shape).to(z.dtype)

        commitment = torch.mean((z_q.detach() - z) ** 2)
        if self.use_ema:
            loss = commitment if self.legacy else self.beta * commitment
        elif self.legacy:
            loss = commitment + self.beta * torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = self.beta * commitment + torch.mean((z_q - z.detach()) ** 2)

        with torch.no_grad():
            counts = code_counts(indices, self.n_e)
            perplexity = perplexity_from_counts(counts)
            self.last_perplexity.copy_(perplexity)
            if self.training:
                self._maintain_codebook(z_flat.detach(), indices, counts)

        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.permute(0, 3, 1, 2).contiguous()

        if self.remap is not None:  # original: batch axis for remapping, then flattened to (N, 1)
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (perplexity, None, indices)

    @torch.no_grad()
    def _maintain_codebook(self, z_flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Training-only bookkeeping: usage history, EMA codes and dead-code restarts (summed over DDP ranks)."""
        # Ranks must agree only when counts change the codebook; a collective also requires every rank to call it.
        synced = self.use_ema or self.restart_dead_codes
        if synced:
            counts = counts.clone()
            cb.all_reduce_sum_(counts)
        cb.record_usage_(self.usage_history, self.usage_count, self.batches_seen, counts)
        weight = self.embedding.weight
        if self.use_ema:
            z_stats = z_flat.to(self.ema_embed_sum.dtype)
            sums = cb.assignment_sums(z_stats, indices, self.n_e)
            cb.all_reduce_sum_(sums)
            cb.ema_codebook_update_(weight, self.ema_cluster_size, self.ema_embed_sum, counts, sums,
                                    self.ema_decay, self.ema_eps)
        if self.restart_dead_codes:
            dead = cb.dead_code_mask(self.usage_count, self.dead_code_threshold, self.batches_seen,
                                     self.last_restart, self.usage_window)
            cb.restart_dead_codes_(weight, z_flat, dead, self.usage_history, self.usage_count, self.last_restart,
                                   self.batches_seen, getattr(self, "ema_cluster_size", None),
                                   getattr(self, "ema_embed_sum", None))

    # ------------------------------------------------------------------ health
    @torch.no_grad()
    def codebook_stats(self) -> dict[str, torch.Tensor]:
        """Codebook health as device tensors: `perplexity` (last batch), `window_perplexity`, `usage_fraction`
        (share of codes used at least once) and `dead_codes` (codes used < threshold times) over the last
        `usage_window` training batches, and `batches_tracked` (how many of those batches were seen)."""
        usage = self.usage_count
        return {
            "perplexity": self.last_perplexity.clone(),
            "window_perplexity": perplexity_from_counts(usage),
            "usage_fraction": (usage > 0).float().mean(),
            "dead_codes": (usage < self.dead_code_threshold).sum(),
            "batches_tracked": self.batches_seen.clamp(max=self.usage_window),
        }

    # ------------------------------------------------------------------- remap
    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Codebook indices -> positions in the `remap` list; unknown codes get `unknown_index` (original rule)."""
        self._require_remap()
        return rm.remap_to_used(inds, self._used_table, self.unknown_index, self.re_embed)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in the `remap` list -> codebook indices; the extra token maps to used[0] (original rule)."""
        self._require_remap()
        return rm.unmap_to_all(inds, self.used, self.re_embed)

    def _require_remap(self) -> None:
        """Raise a clear error when remapping is asked for without a `remap` file."""
        if self.remap is None:
            raise RuntimeError("VectorQuantizer index remapping needs `remap` (path to a .npy of used indices)")

    # ----------------------------------------------------------------- decode
    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Codes for `indices`; with shape (B, H, W, C) the result is reshaped to NCHW, as the original."""
        if self.remap is not None:
            batch = shape[0] if shape is not None else 1
            indices = self.unmap_to_all(indices.reshape(batch, -1)).reshape(-1)
        z_q = F.embedding(indices.reshape(-1) if shape is not None else indices, self.codebook())
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) != 4 or shape[3] != self.e_dim:
                raise ValueError(f"get_codebook_entry shape must be (B, H, W, {self.e_dim}), got {shape}")
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode (B, H, W) code indices (remapped ones if `remap`) to NCHW codes."""
        if indices.dim() != 3:
            raise ValueError(f"embed_code expects indices of shape (B, H, W), got {tuple(indices.shape)}")
        b, h, w = indices.shape
        return self.get_codebook_entry(indices, (b, h, w, self.e_dim))

    # ------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Load original checkpoints: fill absent feature buffers, drop buffers of features that are off."""
        weight_key = prefix + "embedding.weight"
        if self.use_ema and all(prefix + k not in state_dict for k in EMA_BUFFERS) and weight_key in state_dict:
            loaded = state_dict[weight_key]
            state_dict[prefix + "ema_cluster_size"] = torch.ones_like(self.ema_cluster_size)
            state_dict[prefix + "ema_embed_sum"] = loaded.detach().to(self.ema_embed_sum.dtype).clone()
        optional = {name: self.use_ema for name in EMA_BUFFERS}
        optional.update({name: self.restart_dead_codes for name in USAGE_BUFFERS})
        for name, enabled in optional.items():
            key = prefix + name
            if enabled and key not in state_dict:
                state_dict[key] = getattr(self, name).detach().clone()
            elif not enabled and key in state_dict:
                state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.remap is not None and prefix + "used" in state_dict:
            self._used_table = rm.build_inverse_table(self.used.cpu(), self.n_e).to(self.used.device)


VectorQuantizer2 = VectorQuantizer  # name used by CompVis / taming configs and code
