"""The frozen first stage of latent diffusion: building it (with a clear error for a missing stage-1 checkpoint),
freezing it, latents from its encoder output (a sample, or the deterministic mode), and the 1/std latent scale of
`scale_by_std`."""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import ConfigError, instantiate_from_config

# Where the stage-1 checkpoint is set from the command line (main.py dotlist).
FIRST_STAGE_CKPT_KEY = "model.params.first_stage_config.params.ckpt_path"


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for `train()` on frozen parts: the module stays in eval mode (CompVis `disabled_train`)."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode for good (train() becomes a no-op) and no gradients; returns the module."""
    module.eval()
    module.train = types.MethodType(disabled_train, module)
    for param in module.parameters():
        param.requires_grad = False
    return module


def check_first_stage_checkpoint(config: Any, key: str = FIRST_STAGE_CKPT_KEY) -> None:
    """Raise a ConfigError naming `key` and the path when the config's `params.ckpt_path` is set but missing."""
    params = config.get("params") if isinstance(config, Mapping) or hasattr(config, "get") else None
    path = params.get("ckpt_path") if params is not None else None
    if path and not os.path.isfile(str(path)):
        raise ConfigError(
            f"{key}: the first-stage (autoencoder) checkpoint {path} does not exist. Train stage 1 first (e.g. "
            f"python main.py --base configs/autoencoder_kl_f8.yaml -t) and pass its checkpoint: "
            f"{key}=logs/<run>/checkpoints/last.ckpt")


def instantiate_first_stage(config: Any) -> nn.Module:
    """Build the first stage from `{target, params}` (stage-1 checkpoint loaded by its own ckpt_path) and freeze it."""
    if isinstance(config, str):
        raise ConfigError(f"model.params.first_stage_config: expected {{target, params}}, got {config!r} (use "
                          "ldm.models.autoencoder.IdentityFirstStage for pixel-space diffusion)")
    check_first_stage_checkpoint(config)
    return freeze(instantiate_from_config(config, key_path="model.params.first_stage_config"))


def latent_from_posterior(encoder_output: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unscaled latent from the first stage's `encode` output: a sample of a Gaussian posterior, or the tensor."""
    if isinstance(encoder_output, DiagonalGaussianDistribution):
        return encoder_output.sample(generator)
    if isinstance(encoder_output, torch.Tensor):
        return encoder_output
    raise TypeError(f"encoder output of type {type(encoder_output).__name__} is not supported: expected a "
                    "DiagonalGaussianDistribution or a tensor")


def posterior_mode(encoder_output: Any) -> Any:
    """The deterministic reading of an encoder output: a Gaussian posterior's mode, anything else as it is."""
    return encoder_output.mode() if isinstance(encoder_output, DiagonalGaussianDistribution) else encoder_output


@torch.no_grad()
def deterministic_latent(model: Any, images: torch.Tensor) -> torch.Tensor:
    """float32 `model.scale_latent` of the posterior mode (KL) or the encoder's tensor (VQ / identity) of B,C,H,W
    images in [-1, 1]: the deterministic diffusion latent of an image (img2img starts, inpainting's masked-image
    input), in the scale of the model's diffusion latents (training uses a posterior sample,
    `latent_from_posterior`)."""
    z = posterior_mode(model.encode_first_stage(images.to(model.device)))
    return model.scale_latent(z.float()).float()


def latent_std(z: torch.Tensor, strategy: Any = None) -> torch.Tensor:
    """Standard deviation of all latent entries in float32 (averaged over processes when a strategy is given)."""
    return _mean_over_ranks(z.detach().float().flatten().std(), strategy)


def _mean_over_ranks(value: torch.Tensor, strategy: Any) -> torch.Tensor:
    """`value` averaged over DDP ranks: every rank saw a different batch, and all replicas must keep the same
    latent statistics."""
    if strategy is not None and getattr(strategy, "world_size", 1) > 1:
        return strategy.reduce(value, reduce_op="mean")
    return value


def latent_channel_stats(z: torch.Tensor, strategy: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per latent channel (C,) in float32, over batch and pixels (averaged over processes like
    `latent_std`)."""
    z = z.detach().float().transpose(0, 1).flatten(1)
    return _mean_over_ranks(z.mean(1), strategy), _mean_over_ranks(z.std(1), strategy)


# state_dict prefixes that do not take part in encoding (a first stage's training loss: LPIPS, discriminator).
NOT_ENCODING = ("loss.",)


def weights_sha256(module: nn.Module, exclude: tuple[str, ...] = NOT_ENCODING) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes and bytes, in name order; keys starting with an
    `exclude` prefix left out): the identity of its weights, e.g. of the first stage a latent cache was encoded
    with."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.startswith(exclude):
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_kind(encoder_output: Any) -> str:
    """"posterior" for a Gaussian posterior (KL), "tensor" for a first stage whose encoder gives the latent."""
    if isinstance(encoder_output, DiagonalGaussianDistribution):
        return "posterior"
    if isinstance(encoder_output, torch.Tensor):
        return "tensor"
    raise TypeError(f"encoder output of type {type(encoder_output).__name__} cannot be cached")


def cache_fields(encoder_output: Any) -> dict[str, torch.Tensor]:
    """What a latent cache stores of an encoder output, float32: a posterior's `mean` and (clamped) `logvar`, so
    training still samples z; or the encoder's tensor as `latent` (VQ before quantization, as training uses it)."""
    if cache_kind(encoder_output) == "posterior":
        return {"mean": encoder_output.mean.float(), "logvar": encoder_output.logvar.float()}
    return {"latent": encoder_output.float()}


def posterior_from_cache(mean: torch.Tensor, logvar: torch.Tensor) -> DiagonalGaussianDistribution:
    """The posterior a cached (mean, logvar) pair came from (its sample draws the same noise as the original's)."""
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
