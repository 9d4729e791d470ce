"""The training loop shared by GAN-trained first-stage autoencoders (KL and VQ): two optimizers, manual optimization."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.checkpoint import CheckpointError
from ldm.optim import adam
from ldm.util import batches_seen, instantiate_from_config

log = logging.getLogger(__name__)

# Adam settings of the VQGAN / LDM first stage (both optimizers).
ADAM_BETAS = (0.5, 0.9)


class AdversarialAutoencoder(pl.LightningModule):
    """Base LightningModule: subclasses provide `encode/decode/forward`, `_loss` and `generator_modules`.

    Per training batch it steps the generator (encoder, decoder, regularizer) and then the PatchGAN discriminator.
    Lightning's `global_step` therefore advances twice per batch (`optimizer_steps_per_batch = 2`); every step-based
    setting here (`disc_start`, EMA, schedulers) counts training batches via `ldm.util.batches_seen`.
    Gradient accumulation is done here (Lightning has none for manual optimization): set `accumulate_grad_batches`.
    """

    optimizer_steps_per_batch = 2

    def __init__(self, lossconfig: Any, image_key: str = "image", monitor: str | None = None, use_ema: bool = False,
                 ema_decay: float = 0.9999, scheduler_config: Any = None, lr_g_factor: float = 1.0,
                 colorize_nlabels: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.image_key = image_key
        if monitor is not None:
            self.monitor = monitor
        self.loss = instantiate_from_config(lossconfig)
        self.learning_rate: float | None = None  # set by main.py from base_learning_rate
        self.accumulate_grad_batches = 1
        self.scheduler_config = scheduler_config
        self.lr_g_factor = lr_g_factor
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        if colorize_nlabels is not None:
            # Random projection used only to visualise segmentation-like inputs with more than 3 channels.
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    # ----------------------------------------------------------------------------------------------- construction
    def _finish_init(self, ckpt_path: str | None, ignore_keys: Iterable[str]) -> None:
        """Create the weight EMA and load a checkpoint once every submodule exists (called by subclasses)."""
        if self.use_ema:
            from ldm.modules.ema import LitEma

            # As in the original, the EMA tracks every trainable parameter of the module (names must match copy_to).
            self.model_ema = LitEma(self, decay=self.ema_decay)
            log.info("keeping an EMA of the weights (decay %s, %d buffers)", self.ema_decay,
                     len(list(self.model_ema.buffers())))
        if ckpt_path:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys or ()))

    def generator_modules(self) -> list[nn.Module]:
        """Modules trained by the generator optimizer (subclasses override)."""
        raise NotImplementedError

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the generator optimizer: generator modules plus the loss's logvar when it is learnable."""
        for module in self.generator_modules():
            yield from module.parameters()
        logvar = getattr(self.loss, "logvar", None)
        if isinstance(logvar, nn.Parameter) and logvar.requires_grad:
            yield logvar

    def init_from_ckpt(self, path: str, ignore_keys: Iterable[str] = ()) -> None:
        """Load weights from a CompVis/our checkpoint (Lightning dict or bare state_dict, with or without `loss.*`),
        or a diffusers VAE / pipeline folder (converted by `ldm.interop.diffusers`)."""
        from ldm.interop.diffusers import read_checkpoint  # imported here: interop sits above the models

        state = read_checkpoint(path, parts=("vae",))
        state = _strip_known_prefix(state, self.state_dict().keys())
        ignore = tuple(ignore_keys)
        state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
        own = self.state_dict()
        usable, skipped_loss, bad_shapes = {}, [], []
        for key, value in state.items():
            if key in own and own[key].shape != value.shape:
                (skipped_loss if key.startswith("loss.") else bad_shapes).append(
                    f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
                continue
            usable[key] = value
        if bad_shapes:
            raise CheckpointError(f"checkpoint {path} does not fit this model's config (shape mismatch):\n  "
                                  + "\n  ".join(bad_shapes[:20]))
        missing, unexpected = self.load_state_dict(usable, strict=False)
        # The loss (LPIPS / discriminator) and EMA weights are optional in first-stage checkpoints.
        optional = ("loss.", "model_ema.")
        missing_required = [k for k in missing if not k.startswith(optional)]
        unexpected_required = [k for k in unexpected if not k.startswith(optional)]
        if missing_required:
            raise CheckpointError(f"checkpoint {path} lacks {len(missing_required)} weights of this model, e.g. "
                                  f"{missing_required[:8]}; is it a checkpoint of this architecture?")
        if unexpected_required:
            log.warning("checkpoint %s has %d keys this model does not use, e.g. %s", path, len(unexpected_required),
                        unexpected_required[:8])
        if skipped_loss:
            log.warning("skipped %d loss weights of a different shape from %s: %s", len(skipped_loss), path,
                        skipped_loss[:4])
        log.info("restored %s from %s (%d tensors)", type(self).__name__, path, len(usable))

    # ------------------------------------------------------------------------------------------------- helpers
    def get_input(self, batch: dict[str, Any], key: str) -> torch.Tensor:
        """`batch[key]` as B,C,H,W float (the datasets yield B,H,W,C in [-1, 1])."""
        if key not in batch:
            raise KeyError(f"batch has no key '{key}' (image_key); available keys: {sorted(batch)}")
        x = batch[key]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"batch['{key}'] must be B,H,W,C; got shape {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last conv: the adaptive GAN weight balances gradient norms there."""
        return self.decoder.conv_out.weight

    @contextlib.contextmanager
    def ema_scope(self, context: str | None = None):
        """Swap in the EMA weights for the duration of the block (no-op without EMA)."""
        if not self.use_ema:
            yield
            return
        self.model_ema.store(self.parameters())
        self.model_ema.copy_to(self)
        try:
            yield
        finally:
            self.model_ema.restore(self.parameters())

    def _loss(self, optimizer_idx: int, x: torch.Tensor, recon: torch.Tensor, reg: Any, step: int,
              split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator (0) or discriminator (1) loss and its log dict (subclasses map to their loss's signature)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _only_training(self, optimizer):
        """Freeze the parameters of the other optimizer so backward skips their gradients."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self.get_input(batch, self.image_key)
        step = batches_seen(self.trainer)
        n = max(1, int(self.accumulate_grad_batches))
        update = (step + 1) % n == 0
        opt_g, opt_d = self.optimizers()

        with self._only_training(opt_g):
            recon, reg = self(x)
            loss_g, log_g = self._loss(0, x, recon, reg, step, "train")
            self.manual_backward(loss_g / n)
            if update:
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)

        if self._discriminator_active(step):
            with self._only_training(opt_d):
                loss_d, log_d = self._loss(1, x, recon.detach(), reg, step, "train")
                self.manual_backward(loss_d / n)
                if update:
                    opt_d.step()
                    opt_d.zero_grad(set_to_none=True)
        else:
            # Before disc_start the discriminator loss is multiplied by 0, so running it would only cost time (~20%
            # of a CPU-sized batch). The step without gradients changes nothing (Adam skips parameters without a
            # grad, so its state starts at disc_start) but keeps global_step at two per batch.
            if update:
                opt_d.step()
            log_d = {"train/disc_loss": torch.zeros((), device=x.device)}

        if update:
            for scheduler in self._schedulers():
                scheduler.step()
            if self.use_ema:
                self.model_ema(self)

        logs = {**log_g, **log_d, **self.extra_train_logs()}
        self.log("train/rec_loss", logs.pop("train/rec_loss"), prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict(logs, prog_bar=False, logger=True, on_step=True, on_epoch=False)

    def _discriminator_active(self, step: int) -> bool:
        """Whether the discriminator's loss weight is non-zero at training batch `step` (from `disc_start` on)."""
        current = getattr(self.loss, "current_disc_factor", None)
        return current is None or current(step) != 0.0

    def extra_train_logs(self) -> dict[str, torch.Tensor]:
        """Model-specific training metrics logged every batch (e.g. codebook health); tensors, no host sync."""
        return {}

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._validate(batch, suffix="")
        if self.use_ema:
            with self.ema_scope():
                self._validate(batch, suffix="_ema")

    def _validate(self, batch: dict[str, Any], suffix: str) -> None:
        x = self.get_input(batch, self.image_key)
        step = batches_seen(self.trainer)
        split = "val" + suffix
        recon, reg = self(x)
        _, log_g = self._loss(0, x, recon, reg, step, split)
        _, log_d = self._loss(1, x, recon, reg, step, split)
        self.log(f"{split}/rec_loss", log_g[f"{split}/rec_loss"], sync_dist=True, prog_bar=not suffix)
        self.log_dict({k: v for k, v in {**log_g, **log_d}.items() if k != f"{split}/rec_loss"}, sync_dist=True)

    def configure_optimizers(self):
        if self.learning_rate is None:
            raise RuntimeError(f"{type(self).__name__}.learning_rate is not set; main.py sets it from "
                               "model.base_learning_rate (set it yourself when training outside main.py)")
        discriminator = getattr(self.loss, "discriminator", None)
        if discriminator is None:
            raise RuntimeError(f"the loss {type(self.loss).__name__} has no discriminator; training a first stage "
                               "needs an adversarial loss such as ldm.modules.losses.LPIPSWithDiscriminator")
        lr = self.learning_rate
        opt_g = adam(self.generator_parameters(), lr=lr * self.lr_g_factor, betas=ADAM_BETAS)
        opt_d = adam(discriminator.parameters(), lr=lr, betas=ADAM_BETAS)
        if self.scheduler_config is None:
            return [opt_g, opt_d]
        schedule = instantiate_from_config(self.scheduler_config)
        schedulers = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule.schedule), "interval": "step",
             "frequency": 1}
            for opt in (opt_g, opt_d)
        ]
        return [opt_g, opt_d], schedulers

    # --------------------------------------------------------------------------------------------------- images
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project >3-channel inputs to RGB in [-1, 1] with the fixed random `colorize` buffer."""
        if not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        x = torch.nn.functional.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], only_inputs: bool = False, plot_ema: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions (and samples for KL) as B,C,H,W tensors in about [-1, 1] for the image logger."""
        x = self.get_input(batch, self.image_key).to(self.device)
        images: dict[str, torch.Tensor] = {"inputs": x}
        if not only_inputs:
            images.update(self._reconstruction_images(x))
            if plot_ema and self.use_ema:
                with self.ema_scope():
                    images.update({f"{k}_ema": v for k, v in self._reconstruction_images(x).items()})
        if x.shape[1] > 3:
            images = {k: self.to_rgb(v) for k, v in images.items()}
        return images

    def _reconstruction_images(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, _ = self(x)
        return {"reconstructions": recon}


def _strip_known_prefix(state: dict[str, torch.Tensor], own_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Accept a full LDM checkpoint too: strip `first_stage_model.` when our keys only match after stripping."""
    own = set(own_keys)
    if any(k in own for k in state):
        return state
    prefix = "first_stage_model."
    stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return stripped if stripped else state
