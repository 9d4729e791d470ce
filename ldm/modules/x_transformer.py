"""The small pre-norm transformer behind BERTEmbedder, with the CompVis `x_transformer` state_dict layout.

Only the configuration the LDM text encoders use is implemented (pre-norm LayerNorm, absolute learned positions,
self-attention + GELU feed-forward, optional cross-attention). Parameter names, for `TransformerWrapper`:

    token_emb.weight                     (num_tokens, emb_dim)      normal(0, 0.02) init
    pos_emb.emb.weight                   (max_seq_len, emb_dim)     normal(0, 0.02) init
    attn_layers.layers.{i}.0.weight/bias LayerNorm before block i
    attn_layers.layers.{i}.1.to_q/to_k/to_v.weight   (heads*dim_head, dim), no bias    (self/cross-attention block)
    attn_layers.layers.{i}.1.to_out.weight/bias      (dim, heads*dim_head)
    attn_layers.layers.{i}.1.net.0.0.weight/bias     (dim*mult, dim) + GELU           (feed-forward block)
    attn_layers.layers.{i}.1.net.2.weight/bias       (dim, dim*mult)   (net.1 is dropout; GLU variant: net.0.proj)
    norm.weight/bias                     final LayerNorm
    to_logits.weight/bias                (num_tokens, dim) language-model head

Blocks alternate attention ('a') and feed-forward ('f'), so block 2k is attention and 2k+1 feed-forward (with
cross-attention: 'a', 'c', 'f'). Heads default to 8 of size 64, independently of the model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import FeedForward  # the same feed-forward block (`net` keys) as the UNet transformer

DEFAULT_DIM_HEAD = 64


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute position embedding (`emb`), added to the token embeddings."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, dim) embeddings of positions 0..N-1."""
        positions = torch.arange(x.shape[1], device=x.device)
        return self.emb(positions)[None]


class Attention(nn.Module):
    """Multi-head (self or cross) attention through SDPA; softmax scale dim_head**-0.5 as in the original."""

    def __init__(self, dim: int, dim_head: int = DEFAULT_DIM_HEAD, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`context_mask`: (B, N_context) bool, True where a key may be attended to."""
        context = x if context is None else context
        b, n, _ = x.shape
        q, k, v = (proj(t).view(b, t.shape[1], self.heads, -1).transpose(1, 2)
                   for proj, t in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _split_prefixed(kwargs: dict, prefix: str) -> dict:
    """Pop `prefix`-named keyword arguments (the original's `attn_*` / `ff_*` convention), prefix removed."""
    return {key[len(prefix):]: kwargs.pop(key) for key in [k for k in kwargs if k.startswith(prefix)]}


class AttentionLayers(nn.Module):
    """Pre-norm residual stack of `depth` x (self-attention [, cross-attention], feed-forward) blocks.

    Keyword arguments starting with `attn_` go to `Attention` (dim_head, dropout), `ff_` to `FeedForward`
    (mult, glu, dropout).
    """

    def __init__(self, dim: int, depth: int, heads: int = 8, cross_attend: bool = False, **kwargs):
        super().__init__()
        attn_kwargs, ff_kwargs = _split_prefixed(kwargs, "attn_"), _split_prefixed(kwargs, "ff_")
        if kwargs:
            raise TypeError(f"unsupported x_transformer options: {sorted(kwargs)} (only the pre-norm encoder "
                            "configuration used by the LDM text encoders is implemented)")
        self.dim, self.depth = dim, depth
        self.layer_types = ("a", "c", "f") * depth if cross_attend else ("a", "f") * depth
        self.layers = nn.ModuleList()
        for kind in self.layer_types:
            block = FeedForward(dim, **ff_kwargs) if kind == "f" else Attention(dim, heads=heads, **attn_kwargs)
            # Index 0: the pre-norm, index 1: the block (the original's parameter-free residual is index 2).
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), block]))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` (B, N) / `context_mask` (B, N_context): True for tokens that may be attended to."""
        for kind, (norm, block) in zip(self.layer_types, self.layers):
            h = norm(x)
            if kind == "a":
                h = block(h, context_mask=mask)
            elif kind == "c":
                h = block(h, context=context, context_mask=context_mask)
            else:
                h = block(h)
            x = x + h
        return x


class Encoder(AttentionLayers):
    """Bidirectional (non-causal) attention stack."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("Encoder is never causal; remove the `causal` option")
        super().__init__(**kwargs)


class TransformerWrapper(nn.Module):
    """Token + position embedding -> attention layers -> LayerNorm; `to_logits` head unless `return_embeddings`."""

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: AttentionLayers,
                 emb_dim: int | None = None, emb_dropout: float = 0.0, use_pos_emb: bool = True):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"attn_layers must be an Encoder/AttentionLayers, got {type(attn_layers).__name__}")
        dim = attn_layers.dim
        emb_dim = emb_dim or dim
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, max_seq_len) if use_pos_emb else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor, return_embeddings: bool = False, mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        """(B, N) token ids -> (B, N, dim) embeddings, or (B, N, num_tokens) logits."""
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.max_seq_len}")
        x = self.token_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(x)
        x = self.project_emb(self.emb_dropout(x))
        x = self.norm(self.attn_layers(x, mask=mask, **kwargs))
        return x if return_embeddings else self.to_logits(x)
