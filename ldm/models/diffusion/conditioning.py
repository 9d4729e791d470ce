"""The conditioning stage of latent diffusion: building it, reading its raw input from a batch, encoding it, and
classifier-free-guidance dropout of the raw input during training.

Dropout happens on the RAW input (captions become "", class labels the null class) before encoding, with
`ldm.diffusion.guidance.drop_conditioning`, so the encoder (trainable or not) sees the same null input in training
and at sampling time. Rates come from the conditioner's `ucg_rate`, a model-level `ucg_rate`, or the Stable
Diffusion style `ucg_training: {key: {p: rate, val: null_value}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from ldm.data.batch_keys import CLASS_KEY, TEXT_KEYS  # noqa: F401  (CLASS_KEY re-exported)
from ldm.diffusion.guidance import drop_conditioning
from ldm.models.diffusion.first_stage import freeze, posterior_mode
from ldm.util import ConfigError, instantiate_from_config

FIRST_STAGE = "__is_first_stage__"
UNCONDITIONAL = "__is_unconditional__"
# Batch keys whose values are handed to the conditioner as they are (lists of strings, boxes), as the original.
RAW_KEYS = (*TEXT_KEYS, "coordinates_bbox")


def resolve_conditioning_key(conditioning_key: str | None, concat_mode: bool, cond_stage_config: Any) -> str | None:
    """LatentDiffusion's conditioning_key (the original rule): unset means 'concat' with `concat_mode`, else
    'crossattn'; an unconditional model (`cond_stage_config: __is_unconditional__`) has none."""
    if cond_stage_config == UNCONDITIONAL:
        return None
    if conditioning_key is None:
        return "concat" if concat_mode else "crossattn"
    return conditioning_key


def conditioning_is_cacheable(conditioning_key: str | None, cond_stage_config: Any, cond_stage_key: str,
                              trainable: bool) -> bool:
    """Whether a latent cache holds this model's encoded conditioning: a conditional model whose conditioner is
    frozen, is not the first stage, and reads captions or class labels (the one rule for the cache writer and the
    model)."""
    from ldm.data.latent_cache import CACHEABLE_COND_KEYS

    return (conditioning_key is not None and cond_stage_config not in (UNCONDITIONAL, FIRST_STAGE)
            and not trainable and cond_stage_key in CACHEABLE_COND_KEYS)


def instantiate_cond_stage(config: Any, trainable: bool, first_stage: nn.Module) -> nn.Module | None:
    """The conditioner: the first stage itself, None (unconditional), a frozen encoder, or a trainable one."""
    if config == FIRST_STAGE:
        if trainable:
            raise ConfigError("model.params.cond_stage_trainable: the first stage cannot be trained as the "
                              f"conditioner ({FIRST_STAGE}); set cond_stage_trainable: false")
        return first_stage
    if config == UNCONDITIONAL:
        if trainable:
            raise ConfigError(f"model.params.cond_stage_trainable: true needs a conditioner, not {UNCONDITIONAL}")
        return None
    model = instantiate_from_config(config, key_path="model.params.cond_stage_config")
    return model if trainable else freeze(model)


def encode_conditioning(cond_stage_model: nn.Module, c: Any, cond_stage_forward: str | None = None) -> Any:
    """`get_learned_conditioning`: the conditioner's `encode` (posterior mode for a KL first stage), its `forward`,
    or the method named by `cond_stage_forward`."""
    if cond_stage_model is None:
        raise ValueError("this model is unconditional (cond_stage_config: __is_unconditional__); it has no "
                         "conditioning to encode")
    if cond_stage_forward is not None:
        method = getattr(cond_stage_model, cond_stage_forward, None)
        if not callable(method):
            raise ConfigError(f"model.params.cond_stage_forward: {type(cond_stage_model).__name__} has no method "
                              f"'{cond_stage_forward}'")
        return method(c)
    encode = getattr(cond_stage_model, "encode", None)
    out = encode(c) if callable(encode) else cond_stage_model(c)
    return posterior_mode(out)



def encode_values(cond_stage_model: nn.Module, values: Any, cond_stage_forward: str | None = None) -> Any:
    """Encode raw conditioning values outside a batch (a latent cache's writer): captions as they are, class labels
    (a tensor) as the batch dict the ClassEmbedder reads its key from."""
    if isinstance(values, torch.Tensor):
        device = next(iter(cond_stage_model.parameters()), values).device
        values = values.to(device)
        values = {CLASS_KEY: values, getattr(cond_stage_model, "key", CLASS_KEY): values}
    return encode_conditioning(cond_stage_model, values, cond_stage_forward)

def image_from_batch(batch: Mapping[str, Any], key: str) -> torch.Tensor:
    """`batch[key]` (B,H,W,C, or B,H,W) as contiguous float B,C,H,W: the original `DDPM.get_input`."""
    if key not in batch:
        raise KeyError(f"the batch has no key '{key}' (keys: {sorted(batch)}); check first_stage_key / "
                       "cond_stage_key in the model config")
    x = batch[key]
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x[..., None]
    if x.dim() != 4:
        raise ValueError(f"batch['{key}'] must be an image batch B,H,W,C; got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()


def slice_batch(value: Any, n: int | None) -> Any:
    """The first `n` samples of a tensor, list or batch dict (everything when n is None)."""
    if n is None:
        return value
    if isinstance(value, Mapping):
        return {k: slice_batch(v, n) for k, v in value.items()}
    if isinstance(value, (torch.Tensor, list, tuple)):
        return value[:n]
    return value


def raw_conditioning(batch: Mapping[str, Any], cond_key: str, first_stage_key: str, x: torch.Tensor,
                     device: torch.device, bs: int | None = None) -> Any:
    """The conditioner's raw input `xc`, as the original `LatentDiffusion.get_input` picks it.

    The first-stage input x itself when cond_key == first_stage_key; the value as is for text-like keys; the whole
    batch for `class_label`; otherwise `batch[cond_key]` read as an image (B,C,H,W) when it is one.
    """
    if cond_key == first_stage_key:
        return x
    if cond_key == CLASS_KEY:
        return slice_batch(dict(batch), bs)
    if cond_key not in batch:
        raise KeyError(f"the batch has no key '{cond_key}' (cond_stage_key); keys: {sorted(batch)}")
    value = batch[cond_key]
    if cond_key in RAW_KEYS or not isinstance(value, torch.Tensor) or value.dim() < 3:
        return slice_batch(value, bs)
    return slice_batch(image_from_batch(batch, cond_key), bs).to(device)


# ---- classifier-free guidance dropout ---------------------------------------------------------------------------

NullFn = Callable[[int], Any]


class ConditioningDropout:
    """Per batch key, replace each sample's raw conditioning by its null value with probability p (training only).

    `rates` maps batch keys to (p, null_fn) where null_fn(B) gives the null batch value. For `class_label`, the
    null labels replace `batch['class_label']` (the ClassEmbedder reads the batch dict).
    `cached` maps a raw key to (batch key of its cached encoding, encoded_null_fn): when a batch carries that
    encoding (a latent cache), the encoding is dropped (to encoded_null_fn(1)) and the raw value with the same
    draw, so a cached batch consumes the same random numbers as an uncached one.
    """

    def __init__(self, rates: Mapping[str, tuple[float, NullFn]] | None = None,
                 cached: Mapping[str, tuple[str, NullFn]] | None = None):
        self.rates = {k: (float(p), fn) for k, (p, fn) in (rates or {}).items() if float(p) > 0}
        self.cached = dict(cached or {})
        for key, (p, _) in self.rates.items():
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"conditioning dropout rate for '{key}' must lie in [0, 1], got {p}")

    def __bool__(self) -> bool:
        return bool(self.rates)

    def __call__(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A shallow copy of `batch` with the configured keys dropped; the input batch is not modified."""
        if not self.rates:
            return batch
        out = dict(batch)
        for key, (p, null_fn) in self.rates.items():
            encoded_key, encoded_null = self.cached.get(key, (None, None))
            if encoded_key is not None and encoded_key in out:
                out[encoded_key], keep = drop_conditioning(out[encoded_key], encoded_null(1), p, generator=generator,
                                                           return_mask=True)
                if key in out:
                    out[key] = _keep_or_null(out[key], keep, null_fn)
                continue
            if key not in out:
                raise KeyError(f"conditioning dropout is set for batch key '{key}', which the batch lacks "
                               f"(keys: {sorted(out)})")
            value = out[key]
            size = value.shape[0] if isinstance(value, torch.Tensor) else len(value)
            out[key] = drop_conditioning(value, null_fn(size), p, generator=generator)
        return out


def _keep_or_null(value: Any, keep: torch.Tensor, null_fn: NullFn) -> Any:
    """Per sample, `value` where `keep` else the null value (a list or a tensor batch)."""
    null = null_fn(len(keep))
    if isinstance(value, torch.Tensor):
        null = torch.as_tensor(null, dtype=value.dtype, device=value.device).expand_as(value)
        return torch.where(keep.to(value.device).view(-1, *[1] * (value.dim() - 1)), value, null)
    nulls = list(null) if isinstance(null, (list, tuple)) else [null] * len(keep)
    return [v if k else n for v, k, n in zip(value, keep.tolist(), nulls)]


def _constant_null(value: Any) -> NullFn:
    return lambda n: value if not isinstance(value, str) else [value] * n


def dropout_rates(cond_stage_model: nn.Module | None, cond_key: str, ucg_rate: float | None = None,
                  ucg_training: Mapping[str, Any] | None = None) -> dict[str, tuple[float, NullFn]]:
    """Collect the dropout rates: `ucg_training` entries, then the cond key's rate (the model-level `ucg_rate` if
    given, else the conditioner's own `ucg_rate`) with the conditioner's `null_input`."""
    rates: dict[str, tuple[float, NullFn]] = {}
    for key, spec in (ucg_training or {}).items():
        if not isinstance(spec, Mapping) or "p" not in spec:
            raise ConfigError(f"model.params.ucg_training.{key}: expected {{p: rate, val: null value}}, got {spec!r}")
        val = spec.get("val")
        if val is None and key == cond_key and cond_stage_model is not None:
            rates[key] = (float(spec["p"]), cond_stage_model.null_input)
        else:
            rates[key] = (float(spec["p"]), _constant_null("" if val is None else val))
    rate = ucg_rate if ucg_rate is not None else float(getattr(cond_stage_model, "ucg_rate", 0.0) or 0.0)
    if rate > 0:
        if cond_stage_model is None:
            raise ConfigError("model.params.ucg_rate: an unconditional model has no conditioning to drop")
        if cond_key in rates:
            raise ConfigError(f"conditioning dropout for '{cond_key}' is set twice (ucg_training and ucg_rate); "
                              "keep one")
        null_fn = getattr(cond_stage_model, "null_input", None)
        try:
            null_fn(1)
        except (NotImplementedError, TypeError) as err:
            raise ConfigError(f"model.params.cond_stage_config: {type(cond_stage_model).__name__} defines no null "
                              f"input, so ucg_rate={rate} cannot be used ({err})") from err
        rates[cond_key] = (rate, null_fn)
    return rates
