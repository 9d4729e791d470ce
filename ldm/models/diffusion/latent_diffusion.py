"""`LatentDiffusion` (Rombach et al. 2022): DDPM on the latents of a frozen first stage, with a conditioning stage.

The CompVis constructor, methods and state_dict names are kept (`first_stage_model.*`, `cond_stage_model.*`,
`model.diffusion_model.*`, `model_ema.*`, `scale_factor`, schedule buffers). Pieces live in sibling modules:
first-stage handling in `first_stage.py`, the conditioner and guidance dropout in `conditioning.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.data.latent_cache import (CACHED_COND, CACHED_LATENT, CACHED_LOGVAR, CACHED_MEAN, CacheFingerprint,
                                   find_cache)
from ldm.models.diffusion.conditioning import (ConditioningDropout, conditioning_is_cacheable, dropout_rates,
                                               encode_conditioning, instantiate_cond_stage, raw_conditioning,
                                               resolve_conditioning_key, slice_batch)
from ldm.models.diffusion.denoising_diffusion import DDPM, DiffusionInputs
from ldm.models.diffusion.first_stage import (instantiate_first_stage, latent_channel_stats, latent_from_posterior,
                                              latent_std, posterior_from_cache, weights_sha256)
from ldm.models.diffusion.legacy_sampling import LegacyLatentSampling
from ldm.util import ConfigError, batches_seen

log = logging.getLogger(__name__)


LATENT_STATS = ("global", "per_channel")  # how scale_by_std normalises the first stage's latents


class LatentDiffusion(LegacyLatentSampling, DDPM):
    """Latent diffusion with the original arguments; everything else is forwarded to `DDPM`.

    `conditioning_key` None means 'concat' when `concat_mode` else 'crossattn', and None for an unconditional
    model (`cond_stage_config: __is_unconditional__`), as the original. `ucg_rate` (new) overrides the
    conditioner's own `ucg_rate` for classifier-free-guidance dropout of the raw conditioning in training.
    `scale_factor` is always a buffer (saved in checkpoints). With `scale_by_std` it is set to 1/std of the first
    training batch's latents unless the model was restored from a checkpoint.
    `latent_stats` (not in the original): "global" is the above; "per_channel" (with `scale_by_std`) standardises
    each latent channel instead, z -> (z - mean_c) / std_c with buffers `latent_mean` / `latent_std` (C,) from the
    first batch, as EDM2 does for SD latents. It matters when the first stage's channels have offsets or scales
    that differ a lot (one global std then leaves some channels' signal far below the diffusion noise).
    Latent cache (`ldm.data.latent_cache`): a batch carrying cached first-stage outputs (and frozen-conditioner
    outputs) is used as it is instead of encoding `image` (and the raw conditioning); the cache's fingerprint is
    checked against this model when training starts.
    """

    def __init__(self, first_stage_config: Any, cond_stage_config: Any, num_timesteps_cond: int | None = None,
                 cond_stage_key: str = "image", cond_stage_trainable: bool = False, concat_mode: bool = True,
                 cond_stage_forward: str | None = None, conditioning_key: str | None = None,
                 scale_factor: float = 1.0, scale_by_std: bool = False, ucg_rate: float | None = None,
                 latent_stats: str = "global", *args: Any, **kwargs: Any):
        self.num_timesteps_cond = 1 if num_timesteps_cond is None else int(num_timesteps_cond)
        timesteps = int(kwargs.get("timesteps", 1000))
        if not 1 <= self.num_timesteps_cond <= timesteps:
            raise ConfigError(f"model.params.num_timesteps_cond must lie in [1, timesteps={timesteps}], "
                              f"got {num_timesteps_cond}")
        if scale_by_std and float(scale_factor) != 1.0:
            raise ConfigError(f"model.params.scale_factor is {scale_factor} but scale_by_std is true, which sets "
                              "scale_factor from the data; use one of them (scale_factor: 1.0 with scale_by_std)")
        if latent_stats not in LATENT_STATS:
            raise ConfigError(f"model.params.latent_stats must be one of {', '.join(LATENT_STATS)}, "
                              f"got {latent_stats!r}")
        if latent_stats == "per_channel" and not scale_by_std:
            raise ConfigError("model.params.latent_stats: per_channel estimates the statistics from the first batch "
                              "and needs scale_by_std: true")
        conditioning_key = resolve_conditioning_key(conditioning_key, concat_mode, cond_stage_config)
        # The original restores whole checkpoints into a LatentDiffusion: load_only_unet does not apply.
        kwargs.pop("load_only_unet", None)
        # What `build_conditioning` builds; DDPM.__init__ calls it after the network and the EMA, before restoring.
        self._stage_options = dict(first_stage_config=first_stage_config, cond_stage_config=cond_stage_config,
                                   cond_stage_key=cond_stage_key, cond_stage_trainable=cond_stage_trainable,
                                   concat_mode=concat_mode, cond_stage_forward=cond_stage_forward,
                                   scale_factor=scale_factor, scale_by_std=scale_by_std, ucg_rate=ucg_rate,
                                   latent_stats=latent_stats)
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)

    def build_conditioning(self) -> None:
        """Construction step 4: the latent scaling buffers, the frozen first stage, the conditioner and guidance
        dropout (from the options `__init__` recorded)."""
        options = self._stage_options
        self.concat_mode = options["concat_mode"]
        self.cond_stage_trainable = options["cond_stage_trainable"]
        self.cond_stage_key = options["cond_stage_key"]
        try:
            self.num_downs = len(options["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1
        except (KeyError, TypeError):
            self.num_downs = 0
        self.scale_by_std = options["scale_by_std"]
        self.register_buffer("scale_factor", torch.tensor(float(options["scale_factor"])))
        self.latent_stats = options["latent_stats"]
        if self.latent_stats == "per_channel":  # only then: the original state_dict layout is kept otherwise
            self.register_buffer("latent_mean", torch.zeros(self.channels))
            self.register_buffer("latent_std", torch.ones(self.channels))
        self.first_stage_model = instantiate_first_stage(options["first_stage_config"])
        self.cond_stage_model = instantiate_cond_stage(options["cond_stage_config"], self.cond_stage_trainable,
                                                       self.first_stage_model)
        self.cond_stage_forward = options["cond_stage_forward"]
        self.clip_denoised = False
        self.ucg_rate = options["ucg_rate"]
        self._null_cond: torch.Tensor | None = None
        cached = {self.cond_stage_key: (CACHED_COND, self.encoded_null_conditioning)} \
            if self.caches_conditioning() else None
        self.cfg_dropout = ConditioningDropout(dropout_rates(self.cond_stage_model, self.cond_stage_key,
                                                             self.ucg_rate, self.ucg_training), cached=cached)

    # ---------------------------------------------------------------------------------------------- schedule
    def register_schedule(self, *args: Any, **kwargs: Any) -> None:
        """The DDPM schedule, plus `cond_ids` when the conditioning is noised too (num_timesteps_cond > 1)."""
        super().register_schedule(*args, **kwargs)
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            self.make_cond_schedule()

    def make_cond_schedule(self) -> None:
        """cond_ids[t]: the noise level of the conditioning at t (original `make_cond_schedule`)."""
        ids = torch.full((self.num_timesteps,), self.num_timesteps - 1, dtype=torch.long)
        spread = torch.linspace(0, self.num_timesteps - 1, self.num_timesteps_cond)
        ids[: self.num_timesteps_cond] = spread.round().long()
        self.register_buffer("cond_ids", ids, persistent=False)

    # ----------------------------------------------------------------------------------------- first stage
    def instantiate_first_stage(self, config: Any) -> None:
        """(Re)build the frozen first stage (original method)."""
        self.first_stage_model = instantiate_first_stage(config)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """The first stage's encoder output for images x (a posterior or a tensor)."""
        return self.first_stage_model.encode(x)

    def scale_latent(self, z: torch.Tensor) -> torch.Tensor:
        """First-stage latent -> diffusion latent: scale_factor * z (per_channel: standardised per channel first)."""
        if self.latent_stats == "per_channel":
            z = (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)
        return self.scale_factor * z

    def unscale_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latent -> first-stage latent (the inverse of `scale_latent`)."""
        z = z / self.scale_factor
        if self.latent_stats == "per_channel":
            z = z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)
        return z

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """`scale_latent` of z, z a posterior sample (KL) or the encoder's tensor (VQ pre-quantization / identity)."""
        return self.scale_latent(latent_from_posterior(encoder_posterior))

    def _decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        z = self.unscale_latent(z)
        if force_not_quantize and hasattr(self.first_stage_model, "quantize"):
            return self.first_stage_model.decode(z, force_not_quantize=True)
        return self.first_stage_model.decode(z)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Images from scaled latents: decode(z / scale_factor)."""
        if predict_cids:
            raise NotImplementedError("decode_first_stage(predict_cids=True) (codebook-id prediction) is not supported")
        return self._decode(z, force_not_quantize)

    def differentiable_decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                                          force_not_quantize: bool = False) -> torch.Tensor:
        """`decode_first_stage` with gradients."""
        if predict_cids:
            raise NotImplementedError("predict_cids=True is not supported")
        return self._decode(z, force_not_quantize)

    def decode_to_image(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images through the first stage."""
        return self.decode_first_stage(z)

    @torch.no_grad()
    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """scale_by_std: before the very first training step (not after a restore), scale_factor = 1/std(z), or the
        per-channel mean and std with latent_stats: per_channel.

        The value is computed on the device and written into the buffer in place (averaged over DDP ranks). Its
        one host read happens here, once per run, to log it.
        """
        if not self.scale_by_std or self.restarted_from_ckpt or batches_seen(self.trainer) != 0:
            return
        z = self.cached_latent(batch)
        if z is None:
            z = latent_from_posterior(self.encode_first_stage(self.get_input_image(batch).to(self.device)))
        if self.latent_stats == "per_channel":
            mean, std = latent_channel_stats(z, self.trainer.strategy)
            self.latent_mean.copy_(mean)
            self.latent_std.copy_(std)
            log.info("scale_by_std: per-channel latent mean %s, std %s (first batch)",  # the one host read
                     [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()])
        else:
            self.scale_factor.copy_(1.0 / latent_std(z, self.trainer.strategy))
            log.info("scale_by_std: scale_factor set to 1/std of the first batch's latents = %.6g",
                     float(self.scale_factor))  # the one host read of this feature
        self.restarted_from_ckpt = True  # never again in this run (e.g. a second fit on the same module)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming: no first-batch scale_by_std; a checkpoint without `scale_factor` keeps the configured value."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and "scale_factor" not in state:
            state["scale_factor"] = self.scale_factor.detach().clone()

    # ------------------------------------------------------------------------------------------ conditioning
    def get_learned_conditioning(self, c: Any) -> Any:
        """Encode raw conditioning with the conditioner (original method)."""
        return encode_conditioning(self.cond_stage_model, c, self.cond_stage_forward)

    def unconditional_conditioning(self, n: int) -> Any:
        """Encoded null input of the conditioner for n samples (empty captions, null class)."""
        if self.cond_stage_model is None:
            return None
        return self.get_learned_conditioning(self.cond_stage_model.null_input(n))

    def get_unconditional_conditioning(self, batch_size: int, null_label: Any = None) -> Any:
        """SD-style name for `unconditional_conditioning` (an explicit `null_label` is encoded instead)."""
        if null_label is not None:
            return self.get_learned_conditioning(null_label)
        return self.unconditional_conditioning(batch_size)

    def get_input_image(self, batch: Mapping[str, Any], bs: int | None = None) -> torch.Tensor:
        """The first-stage input images B,C,H,W (the DDPM `get_input` of `first_stage_key`)."""
        x = super().get_input(batch, self.first_stage_key)
        return x[:bs] if bs is not None else x

    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None) -> list:
        """[z, c] (+ [x, xrec] with return_first_stage_outputs, + [xc] with return_original_cond), the original's
        return list: z the scaled latent of batch[k], c the conditioning (raw when the conditioner trains and
        `force_c_encode` is False, since it is then encoded with gradients in `forward`)."""
        cached = self.cached_latent(batch, bs)
        xrec = None
        if cached is None:
            x = super().get_input(batch, k)
            if bs is not None:
                x = x[:bs]
            x = x.to(self.device)
            z = self.training_latent(x)
        else:  # a latent cache: no image in the batch; the decoded latents are both the inputs and the reconstruction
            z = self.scale_latent(cached.float()).detach().float()
            x = xrec = self.decode_first_stage(z) if return_first_stage_outputs else None
        c = xc = None
        if self.model.conditioning_key is not None:
            key = cond_key or self.cond_stage_key
            if x is None and key == self.first_stage_key:
                raise ValueError(f"cond_stage_key '{key}' is the first-stage input, which a latent-cache batch "
                                 "does not carry")
            xc = raw_conditioning(batch, key, self.first_stage_key, x, self.device, bs)
            if CACHED_COND in batch and key == self.cond_stage_key and self.caches_conditioning():
                c = slice_batch(batch[CACHED_COND], bs).to(self.device)
            else:
                c = self.get_learned_conditioning(xc) if (not self.cond_stage_trainable or force_c_encode) else xc
        return self.input_list(z, c, x, xc, return_first_stage_outputs, return_original_cond, xrec)

    # ---------------------------------------------------------------------------------------------- latent cache
    def cached_latent(self, batch: Mapping[str, Any], bs: int | None = None) -> torch.Tensor | None:
        """The unscaled first-stage latent of a latent-cache batch (a fresh sample of the cached posterior, drawn
        like the encoder's), or None for a batch of images."""
        if CACHED_MEAN in batch:
            mean, logvar = (slice_batch(batch[key], bs).to(self.device) for key in (CACHED_MEAN, CACHED_LOGVAR))
            return latent_from_posterior(posterior_from_cache(mean, logvar))
        if CACHED_LATENT in batch:
            return slice_batch(batch[CACHED_LATENT], bs).to(self.device)
        return None

    def caches_conditioning(self) -> bool:
        """Whether a latent cache may hold this model's encoded conditioning (`conditioning_is_cacheable`)."""
        return conditioning_is_cacheable(self.model.conditioning_key, self._stage_options["cond_stage_config"],
                                         self.cond_stage_key, self.cond_stage_trainable)

    @torch.no_grad()
    def encoded_null_conditioning(self, n: int = 1) -> torch.Tensor:
        """The encoded null input (for guidance dropout of cached conditioning), computed once per device."""
        if self._null_cond is None or self._null_cond.device != self.device:
            self._null_cond = self.unconditional_conditioning(1).detach()
        return self._null_cond.expand(n, *self._null_cond.shape[1:]) if n != 1 else self._null_cond

    def latent_cache_fingerprint(self) -> CacheFingerprint:
        """This model's side of a latent cache's fingerprint (weights hashes, scale_factor / scale_by_std; the
        conditioner's hash only when it reads cached conditioning)."""
        cond = weights_sha256(self.cond_stage_model) if self.caches_conditioning() else None
        return CacheFingerprint(weights_sha256(self.first_stage_model), float(self.scale_factor),
                                bool(self.scale_by_std), cond)

    def on_train_start(self) -> None:
        """Check a latent cache the training data comes from against this model (a mismatch is an error)."""
        super().on_train_start()
        cache = find_cache(getattr(getattr(self.trainer, "train_dataloader", None), "dataset", None))
        if cache is not None:
            cache.check_model(self.latent_cache_fingerprint())

    def _batch_size(self, batch: Mapping[str, Any]) -> int:
        for key in (CACHED_MEAN, CACHED_LATENT):
            if key in batch:
                return int(batch[key].shape[0])
        return super()._batch_size(batch)

    def training_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The diffusion state of training images x: scale_factor x a posterior sample, detached, float32 even when
        the first stage ran under autocast (targets keep full precision)."""
        return self.get_first_stage_encoding(self.encode_first_stage(x)).detach().float()

    def input_list(self, z: torch.Tensor, c: Any, x: torch.Tensor, xc: Any, return_first_stage_outputs: bool,
                   return_original_cond: bool, xrec: torch.Tensor | None = None) -> list:
        """The original `get_input` return list: [z, c], + [x, decode(z)] with return_first_stage_outputs, + [xc]
        with return_original_cond."""
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z) if xrec is None else xrec])
        if return_original_cond:
            out.append(xc)
        return out

    def prepare_conditioning(self, c: Any, t: torch.Tensor) -> Any:
        """Encode a trainable conditioner's raw input (with gradients) and noise c when num_timesteps_cond > 1."""
        if self.model.conditioning_key is None:
            return None
        if c is None:
            raise ValueError(f"conditioning_key {self.model.conditioning_key!r} needs conditioning, got None")
        if self.cond_stage_trainable:
            c = self.get_learned_conditioning(c)
        if self.shorten_cond_schedule:
            c = self.q_sample(c, self.cond_ids[t], torch.randn_like(c))
        return c

    # ---------------------------------------------------------------------------------------------- training
    def diffusion_inputs(self, batch: Mapping[str, Any]) -> DiffusionInputs:
        """(z, c) of a batch in diffusion space, c raw when the conditioner trains (encoded in `diffusion_loss`)."""
        z, c = self.get_input(batch, self.first_stage_key)
        return DiffusionInputs(z, c)

    def forward(self, x: torch.Tensor, c: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict]:
        """Training loss at uniformly drawn t; raw conditioning is encoded here when the conditioner trains."""
        return self.diffusion_loss(DiffusionInputs(x, c), self.random_timesteps(x.shape[0]), *args, **kwargs)

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """(loss, log dict) at timesteps t with encoded conditioning (original signature)."""
        return self.diffusion_loss(DiffusionInputs(x_start, cond, cond_ready=True), t, noise)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The wrapper (+ logvar) and, when `cond_stage_trainable`, the conditioner's trainable parameters."""
        params = super().trainable_parameters()
        if self.cond_stage_trainable and self.cond_stage_model is not None:
            params += [p for p in self.cond_stage_model.parameters() if p.requires_grad]
        return params

    # ---------------------------------------------------------------------------------------------- logging
    def log_inputs(self, batch: Mapping[str, Any], n: int) -> dict[str, Any]:
        """Latents, encoded conditioning, inputs, reconstructions and the raw conditioning of n samples."""
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=n)
        return {"z": z, "c": c, "x": x, "xrec": xrec, "xc": xc}
