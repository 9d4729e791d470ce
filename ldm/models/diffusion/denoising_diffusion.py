"""`DDPM`: the diffusion LightningModule in pixel space and the base of `LatentDiffusion` (CompVis interface).

The maths lives in `ldm.diffusion` (schedule buffers, q_sample, the loss, samplers); this module wires it to the
UNet (`self.model`, a DiffusionWrapper), the weight EMA (`self.model_ema`) and Lightning. Sampling builds a plain
`model_fn(x, t, cond)` (optionally over the EMA weights) and hands it to a sampler function by name.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from collections.abc import Iterator, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.diffusion.losses import DiffusionLoss, make_logvar, register_lvlb_weights
from ldm.diffusion.noise import randn
from ldm.diffusion.parameterization import (PARAMETERIZATIONS, Denoiser, predict_start_from_noise, q_posterior,
                                            q_sample)
from ldm.diffusion.samplers import get_sampler
from ldm.diffusion.schedule import (COSINE_S, LINEAR_END, LINEAR_START, NUM_TIMESTEPS, DiffusionSchedule,
                                    register_schedule)
from ldm.models.diffusion import image_logging
from ldm.models.diffusion.conditioning import ConditioningDropout, dropout_rates, image_from_batch
from ldm.models.diffusion.legacy_sampling import LegacyDDPMSampling
from ldm.models.diffusion.restore import LoadReport, restore_weights
from ldm.models.diffusion.wrapper import DiffusionWrapper, ema_parameters, make_model_fn
from ldm.modules.compile import compile_or_warn, is_compiled
from ldm.modules.ema import LitEma, ema_scope
from ldm.optim import adam
from ldm.util import ConfigError, count_params, instantiate_from_config

log = logging.getLogger(__name__)

# torch.optim.AdamW's default, which the original used.
ADAMW_WEIGHT_DECAY = 0.01
# Sampler steps shown per denoise row (intermediates are logged every `steps // DENOISE_ROW_FRAMES` steps).
DENOISE_ROW_FRAMES = 8


@dataclass
class DiffusionInputs:
    """One batch in diffusion space: `x0` (images for DDPM, scaled latents for LatentDiffusion) and its
    conditioning `cond`: raw or encoded as the model's `prepare_conditioning` takes it, or already what the
    network takes when `cond_ready` (the original `p_losses` receives it so)."""

    x0: torch.Tensor
    cond: Any = None
    cond_ready: bool = False


class DDPM(LegacyDDPMSampling, pl.LightningModule):
    """Denoising diffusion (Ho et al. 2020) with the CompVis `DDPM` constructor, state_dict and logged metrics.

    state_dict: `model.diffusion_model.*` (the UNet), `model_ema.*` (LitEma over `self.model`), the 12 schedule
    buffers, and `logvar` when `learn_logvar`. New switches: `zero_terminal_snr` (Lin et al. 2023),
    `min_snr_gamma` (Hang et al. 2023; `min_snr_soft`: its smooth minimum) and `offset_noise_strength`;
    `parameterization` may also be "v"; `compile` torch.compiles the networks block by block when training starts.
    Validation scores the plain and the EMA weights on the same t and noise (seeded per batch index), so
    `val/*` and `val/*_ema` differ only by the weights and are comparable across epochs.
    """

    def __init__(self, unet_config: Any, timesteps: int = NUM_TIMESTEPS, beta_schedule: str = "linear",
                 loss_type: str = "l2", ckpt_path: str | None = None, ignore_keys: Any = (),
                 load_only_unet: bool = False, monitor: str | None = "val/loss", use_ema: bool = True,
                 first_stage_key: str = "image", image_size: Any = 256, channels: int = 3, log_every_t: int = 100,
                 clip_denoised: bool = True, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END,
                 cosine_s: float = COSINE_S, given_betas: Any = None, original_elbo_weight: float = 0.0,
                 v_posterior: float = 0.0, l_simple_weight: float = 1.0, conditioning_key: str | None = None,
                 parameterization: str = "eps", scheduler_config: Any = None,
                 use_positional_encodings: bool = False, learn_logvar: bool = False, logvar_init: float = 0.0,
                 make_it_fit: bool = False, ucg_training: Any = None, reset_ema: bool = False,
                 reset_num_ema_updates: bool = False, zero_terminal_snr: bool = False,
                 min_snr_gamma: float | None = None, offset_noise_strength: float = 0.0, min_snr_soft: bool = False,
                 compile: bool = False):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ConfigError(f"model.params.parameterization: {parameterization!r} is not one of {PARAMETERIZATIONS}")
        if use_positional_encodings:
            raise ConfigError("model.params.use_positional_encodings: the bounding-box latent shifts of the "
                              "original are not supported")
        if reset_ema and not ckpt_path:
            raise ConfigError("model.params.reset_ema: true needs model.params.ckpt_path (it resets the EMA to the "
                              "restored weights)")
        self.parameterization = parameterization
        self.compile_blocks = bool(compile)  # `compile: true`: torch.compile per block at fit start (on_fit_start)
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_positional_encodings = use_positional_encodings
        self.learning_rate: float | None = None  # set by main.py from model.base_learning_rate
        self.use_scheduler = scheduler_config is not None
        self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.loss_type = loss_type
        if monitor is not None:
            self.monitor = monitor
        self.make_it_fit = make_it_fit
        self.zero_terminal_snr = zero_terminal_snr
        self.restarted_from_ckpt = False  # set when weights come from a checkpoint (no first-batch estimates then)
        # Built in this order, top to bottom: network, EMA, schedule, conditioning, loss, then the checkpoint.
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        log.info("%s has %.2f M params.", type(self.model).__name__, count_params(self.model) * 1e-6)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model)
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        self.ucg_training = dict(ucg_training or {})
        self.build_conditioning()
        self.loss_fn = DiffusionLoss(parameterization, loss_type, l_simple_weight, original_elbo_weight,
                                     min_snr_gamma, offset_noise_strength, min_snr_soft)
        self.learn_logvar = learn_logvar
        logvar = make_logvar(self.num_timesteps, logvar_init, learn_logvar)
        if learn_logvar:
            self.logvar = logvar
        else:  # not in checkpoints (as the original's plain tensor) but follows the module's device
            self.register_buffer("logvar", logvar, persistent=False)
        self.restore(ckpt_path, ignore_keys, load_only_unet, reset_ema, reset_num_ema_updates)

    def build_conditioning(self) -> None:
        """Construction step 4: no conditioner in pixel space; guidance dropout of batch keys from `ucg_training`."""
        self.cond_stage_model: nn.Module | None = None
        self.cfg_dropout = ConditioningDropout(dropout_rates(None, self.first_stage_key, None, self.ucg_training))

    def restore(self, ckpt_path: str | None, ignore_keys: Any = (), only_model: bool = False, reset_ema: bool = False,
                reset_num_ema_updates: bool = False) -> None:
        """The last construction step: weights from `ckpt_path` when given, then the SD EMA options (restart the EMA
        from the restored weights, and/or restart its warm-up count)."""
        if (reset_ema or reset_num_ema_updates) and not self.use_ema:
            raise ConfigError("model.params.reset_ema / reset_num_ema_updates need use_ema: true")
        if ckpt_path:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=only_model)
        if reset_ema:
            log.info("resetting the EMA to the restored weights (reset_ema)")
            self.model_ema = LitEma(self.model)
        if reset_num_ema_updates:
            self.model_ema.reset_num_updates()

    # ------------------------------------------------------------------------------------------------ schedule
    def register_schedule(self, given_betas: Any = None, beta_schedule: str = "linear",
                          timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START,
                          linear_end: float = LINEAR_END, cosine_s: float = COSINE_S) -> None:
        """Compute the schedule in float64 and register the 12 CompVis buffers (float32) and `lvlb_weights`."""
        if given_betas is not None:
            given_betas = [float(b) for b in given_betas]
        schedule = DiffusionSchedule.from_config(beta_schedule, timesteps, linear_start, linear_end, cosine_s,
                                                 given_betas, self.v_posterior, self.zero_terminal_snr)
        self._schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.linear_start, self.linear_end = linear_start, linear_end
        register_schedule(self, schedule)
        register_lvlb_weights(self, schedule, self.parameterization)

    def sampling_schedule(self) -> DiffusionSchedule:
        """The float64 schedule for samplers; rebuilt from the `betas` buffer if a checkpoint replaced it."""
        if not torch.equal(self.betas.detach().cpu(), self._schedule.betas.float()):
            self._schedule = DiffusionSchedule(self.betas.detach().cpu(), self.v_posterior)
        return self._schedule

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) with this model's schedule buffers (Ho et al. 2020, eq. 4)."""
        return q_sample(self, x_start, t, noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 from an eps prediction at integer t (original method)."""
        return predict_start_from_noise(self, x_t, t, noise)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (original method)."""
        return q_posterior(self, x_start, x_t, t)

    # --------------------------------------------------------------------------------------------- checkpoints
    @contextlib.contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Within the block `self.model` carries the EMA weights; the training weights come back on exit."""
        with ema_scope(self.model, self.model_ema if self.use_ema else None):
            if context is not None and self.use_ema:
                log.debug("%s: switched to EMA weights", context)
            yield

    def init_from_ckpt(self, path: str, ignore_keys: Any = (), only_model: bool = False) -> LoadReport:
        """Load a CompVis / our checkpoint non-strictly (keys with an `ignore_keys` prefix dropped) and report keys.

        An EMA missing from the checkpoint restarts from the loaded weights instead of keeping random shadows; a
        model without EMA (use_ema: false) ignores the checkpoint's `model_ema.*` (e.g. SD v1 full-EMA files).
        """
        ignore = list(ignore_keys or ()) + ([] if self.use_ema else ["model_ema."])
        report = restore_weights(self, path, ignore_keys=ignore, only_model=only_model, fit=self.make_it_fit)
        if not only_model and self.use_ema and any(k.startswith("model_ema.") for k in report.missing):
            log.info("checkpoint %s has no (complete) EMA: the EMA restarts from its weights", path)
            self.model_ema = LitEma(self.model)
        self.restarted_from_ckpt = True
        return report

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming through Lightning: remember it (no first-batch initialisation such as scale_by_std)."""
        self.restarted_from_ckpt = True

    # ---------------------------------------------------------------------------------------------- training
    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """`batch[k]` (B,H,W,C in [-1, 1]) as float B,C,H,W (original `DDPM.get_input`)."""
        return image_from_batch(batch, k)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None,
                    return_ids: bool = False) -> torch.Tensor:
        """Raw network output for x_t; `cond` is a tensor, a list, or {c_concat, c_crossattn} (original rule)."""
        out = self.model.route(x_noisy, t, cond)
        if isinstance(out, tuple) and not return_ids:
            return out[0]
        return out

    def diffusion_inputs(self, batch: Mapping[str, Any]) -> DiffusionInputs:
        """A batch in diffusion space: the images here, with no conditioning."""
        return DiffusionInputs(self.get_input(batch, self.first_stage_key))

    def prepare_conditioning(self, cond: Any, t: torch.Tensor) -> Any:
        """Conditioning as the network takes it at steps t (an unconditional DDPM takes none)."""
        return cond

    def diffusion_loss(self, inputs: DiffusionInputs, t: torch.Tensor,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The one loss path (training, validation, `p_losses`, `forward`): x_t ~ q(x_t | x0) at steps t with
        `noise` (drawn when None), the network's output on x_t and the conditioning, scored by `loss_fn` with log
        prefix train/val by mode."""
        cond = inputs.cond if inputs.cond_ready else self.prepare_conditioning(inputs.cond, t)
        x0 = inputs.x0
        if noise is None:
            noise = self.loss_fn.noise(x0)
        schedule = DiffusionSchedule.view_of(self)  # the registered buffers: on the device, no copies
        model_output = self.apply_model(q_sample(schedule, x0, t, noise), t, cond)
        target = self.loss_fn.target(schedule, x0, noise, t)
        prefix = "train" if self.training else "val"
        return self.loss_fn(model_output, target, t, schedule, logvar=self.logvar, prefix=prefix)

    def p_losses(self, x_start: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """(loss, log dict) of the unconditional model at timesteps t (original signature)."""
        return self.diffusion_loss(DiffusionInputs(x_start, None, cond_ready=True), t, noise)

    def random_timesteps(self, n: int) -> torch.Tensor:
        """t ~ U{0, ..., T-1} drawn on the model's device (no host round trip)."""
        return torch.randint(0, self.num_timesteps, (n,), device=self.device).long()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict]:
        """Training loss at uniformly drawn timesteps (original)."""
        return self.p_losses(x, self.random_timesteps(x.shape[0]), *args, **kwargs)

    def shared_step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict]:
        """Loss and logs of one batch at uniformly drawn t (original name)."""
        inputs = self.diffusion_inputs(batch)
        return self.diffusion_loss(inputs, self.random_timesteps(inputs.x0.shape[0]))

    def _batch_size(self, batch: Mapping[str, Any]) -> int:
        return int(batch[self.first_stage_key].shape[0])

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Guidance dropout, loss at random t; logs train/loss*, global_step, lr_abs (tensors: no host sync)."""
        batch = self.cfg_dropout(batch)  # classifier-free guidance dropout of the raw conditioning
        loss, logs = self.shared_step(batch)
        n = self._batch_size(batch)
        main_key = next(k for k in logs if k.endswith("/loss"))
        self.log(main_key, logs.pop(main_key), prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=True, batch_size=n)
        self.log("global_step", float(self.global_step), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("lr_abs", float(self.optimizers().param_groups[0]["lr"]), prog_bar=self.use_scheduler,
                 on_step=True, on_epoch=False, batch_size=n)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """val/* with the training weights and val/*_ema with the EMA weights, on the same seeded t and noise."""
        inputs = self.diffusion_inputs(batch)
        x = inputs.x0
        # Seeded per batch index: plain and EMA weights see the same t and noise, and so does every validation run.
        generator = torch.Generator().manual_seed(int(batch_idx))
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), generator=generator).to(self.device)
        noise = self.loss_fn.noise(x, generator)
        _, logs = self.diffusion_loss(inputs, t, noise)
        with self.ema_scope():
            _, logs_ema = self.diffusion_loss(inputs, t, noise)
        n = x.shape[0]
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log_dict({k + "_ema": v for k, v in logs_ema.items()}, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=n)

    def on_fit_start(self) -> None:
        """`compile: true`: compile the U-Net and the first stage (if any) block by block on their device."""
        if self.compile_blocks:
            for what, net in (("the U-Net", self.model.diffusion_model),
                              ("the first stage", getattr(self, "first_stage_model", None))):
                if net is not None and not is_compiled(net):
                    compile_or_warn(net, self.device, what)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """One EMA step after every training batch (original)."""
        if self.use_ema:
            self.model_ema(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the wrapper's parameters (+ `logvar` when learned)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW at `learning_rate` over `trainable_parameters()`, plus the optional per-step LambdaLR schedule."""
        if self.learning_rate is None:
            raise RuntimeError(f"{type(self).__name__}.learning_rate is not set; main.py sets it from "
                               "model.base_learning_rate (set it yourself when training outside main.py)")
        # AdamW with torch's default weight decay (0.01), as the original; fused kernel where possible.
        opt = adam(self.trainable_parameters(), lr=self.learning_rate, weight_decay=ADAMW_WEIGHT_DECAY,
                   decoupled_weight_decay=True)
        if not self.use_scheduler:
            return opt
        schedule = instantiate_from_config(self.scheduler_config, key_path="model.params.scheduler_config")
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule.schedule)
        return [opt], [{"scheduler": scheduler, "interval": "step", "frequency": 1}]

    # ---------------------------------------------------------------------------------------------- sampling
    def model_fn(self, use_ema: bool = False):
        """A plain `model_fn(x, t, cond)` over the wrapper, with the EMA weights when asked (nothing swapped)."""
        params = ema_parameters(self.model, self.model_ema) if use_ema and self.use_ema else None
        return make_model_fn(self.model, params)

    def denoiser(self, use_ema: bool = False) -> Denoiser:
        """`model_fn` with the eps/x0/v conversion: returns (eps, x0) at (x_t, t, cond)."""
        return Denoiser(self.model_fn(use_ema), self.sampling_schedule(), self.parameterization)

    def sample_shape(self) -> tuple[int, ...]:
        """(channels, *spatial) of one sample in diffusion space, from `channels` and `image_size`."""
        size = self.image_size
        spatial = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        return (int(self.channels), *spatial)

    @torch.no_grad()
    def sample(self, cond: Any = None, batch_size: int = 16, shape: Any = None, sampler: str = "ddim",
               steps: int | None = 50, eta: float = 0.0, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_ema: bool = True, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, return_intermediates: bool = False, **opts: Any):
        """Samples in diffusion space (latents for LatentDiffusion) from the sampler registered as `sampler`.

        `cond` is encoded conditioning (see `get_learned_conditioning`); its batch size wins over `batch_size`.
        Classifier-free guidance needs `unconditional_conditioning` of the same structure. Other sampler options
        (mask, x0, timesteps, ddim_discretize, ...) pass through `opts`. Returns x_0, or (x_0, intermediates).
        """
        if x_T is None:
            batch_size = _cond_batch_size(cond, batch_size)
            shape = tuple(shape) if shape is not None else self.sample_shape()
            x_T = randn((batch_size, *shape), torch.empty((), device=self.device), generator)
        if self.clip_denoised:
            opts.setdefault("clip_denoised", True)
        intermediates = {} if return_intermediates else opts.pop("intermediates", None)
        opts.setdefault("log_every_t", self.log_every_t)
        out = get_sampler(sampler)(self.model_fn(use_ema), self.sampling_schedule(), x_T, steps, cond=cond,
                                   uncond=unconditional_conditioning, guidance_scale=unconditional_guidance_scale,
                                   eta=eta, generator=generator, parameterization=self.parameterization,
                                   intermediates=intermediates, **opts)
        return (out, intermediates) if return_intermediates else out

    # ---------------------------------------------------------------------------------------------- logging
    def decode_to_image(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> image space (the identity in pixel space)."""
        return z

    def log_inputs(self, batch: Mapping[str, Any], n: int) -> dict[str, Any]:
        """What `log_images` shows and conditions on: z (diffusion input), c, x, and optionally xrec, xc."""
        x = self.get_input(batch, self.first_stage_key)[:n].to(self.device)
        return {"z": x, "c": None, "x": x, "xrec": None, "xc": None}

    def unconditional_conditioning(self, n: int) -> Any:
        """Encoded null conditioning for a batch of n (for guidance); None for an unconditional model."""
        return None

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, sample: bool = True,
                   ddim_steps: int | None = 50, ddim_eta: float = 0.0, plot_diffusion_rows: bool = True,
                   plot_denoise_rows: bool = False, unconditional_guidance_scale: float = 1.0,
                   sampler: str | None = None, use_ema: bool = True, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for the ImageLogger, all B,C,H,W in [-1, 1]: inputs, reconstruction, conditioning,
        diffusion_row, samples (EMA weights), denoise_row, samples_cfg_scale_{s:.2f} (guidance scale s > 1).

        `sampler` defaults to "ddim" (ddim_steps steps), or full ancestral "ddpm" when ddim_steps is None. Other
        keyword arguments of the original (split, quantize_denoised, inpaint, ...) are accepted and ignored.
        """
        del kwargs
        inp = self.log_inputs(batch, N)
        z, c, x = inp["z"], inp["c"], inp["x"]
        N = min(N, x.shape[0])
        n_row = min(n_row, N)
        logs: dict[str, torch.Tensor] = {"inputs": x}
        if inp.get("xrec") is not None:
            logs["reconstruction"] = inp["xrec"]
        if inp.get("xc") is not None:
            shown = image_logging.conditioning_images(inp["xc"], getattr(self, "cond_stage_key", ""), batch,
                                                      tuple(x.shape[2:]), N, x.device)
            if shown is not None:
                logs["conditioning"] = shown
        if plot_diffusion_rows:
            logs["diffusion_row"] = image_logging.diffusion_row(self.q_sample, self.decode_to_image, z[:n_row],
                                                                self.num_timesteps, self.log_every_t)
        name = sampler or ("ddim" if ddim_steps is not None else "ddpm")
        steps = ddim_steps if ddim_steps is not None else self.num_timesteps
        every = max(1, steps // DENOISE_ROW_FRAMES)
        if sample:
            samples, inter = self.sample(cond=c, batch_size=N, shape=z.shape[1:], sampler=name, steps=ddim_steps,
                                         eta=ddim_eta, use_ema=use_ema, return_intermediates=True, log_every_t=every)
            logs["samples"] = self.decode_to_image(samples)
            if plot_denoise_rows:
                logs["denoise_row"] = image_logging.denoise_row(self.decode_to_image,
                                                                [s[:n_row] for s in inter["x_inter"]])
        if unconditional_guidance_scale > 1.0 and c is not None:
            uc = self.unconditional_conditioning(N)
            samples = self.sample(cond=c, batch_size=N, shape=z.shape[1:], sampler=name, steps=ddim_steps,
                                  eta=ddim_eta, use_ema=use_ema, unconditional_conditioning=uc,
                                  unconditional_guidance_scale=unconditional_guidance_scale)
            logs[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = self.decode_to_image(samples)
        return {k: v.float().clamp(-1.0, 1.0) for k, v in logs.items()}


def _cond_batch_size(cond: Any, default: int) -> int:
    """Batch size of encoded conditioning (first tensor found in a tensor / list / dict), else `default`."""
    if isinstance(cond, torch.Tensor):
        return int(cond.shape[0])
    values = cond.values() if isinstance(cond, Mapping) else cond if isinstance(cond, (list, tuple)) else ()
    for value in values:
        found = _cond_batch_size(value, -1)
        if found >= 0:
            return found
    return default
