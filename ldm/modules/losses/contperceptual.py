"""First-stage loss of the KL autoencoder (LDM appendix G): L1 + LPIPS as a Laplace-like NLL, KL, PatchGAN."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldm.modules.losses.gan import AdversarialLoss
from ldm.modules.losses.lpips import build_perceptual_loss
from ldm.modules.losses.pixel import select_pixel_loss


class LPIPSWithDiscriminator(AdversarialLoss):
    """CompVis `LPIPSWithDiscriminator`: same parameters, forward signature, state-dict names and log keys.

    rec = pixelloss_weight * |x - x_rec| + perceptual_weight * LPIPS(x, x_rec) (per pixel; LPIPS broadcasts; with
    `pixel_loss: l2` (not in the original; the VQ loss has it) the pixel term is (x - x_rec)^2),
    nll = rec / exp(logvar) + logvar, both summed per sample and divided by the batch size, as is the KL;
    generator loss = weighted_nll + kl_weight * kl + d_weight * disc_factor * (-E[D(x_rec)]);
    discriminator loss = disc_factor * hinge/vanilla(D(x), D(x_rec)).

    `logvar` decision: the original registers an `nn.Parameter` named `logvar` but puts it in no optimizer, so it
    never trains. We keep the name and shape (checkpoints load) and make that explicit: by default it is a FIXED
    parameter (`requires_grad=False`, value `logvar_init`). With `learn_logvar=True` it requires grad and
    `trainable_parameters()` returns it, so the model adds it to the generator optimizer (SD-2 behaviour).
    Differences from the original: before `disc_start` the generator step does not run the discriminator (its term is
    multiplied by 0 anyway), so `g_loss` / `d_weight` log 0 there; `pixelloss_weight` is applied (the original stored
    and ignored it; identical at the default 1.0).
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0,
                 pixelloss_weight: float = 1.0, disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 use_actnorm: bool = False, disc_conditional: bool = False, disc_loss: str = "hinge",
                 perceptual_random_trunk: bool = False, learn_logvar: bool = False,
                 perceptual_vgg_path: str | None = None, pixel_loss: str = "l1"):
        super().__init__(disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, use_actnorm=use_actnorm,
                         disc_conditional=disc_conditional, disc_loss=disc_loss)
        self.kl_weight = float(kl_weight)
        self.pixel_weight = float(pixelloss_weight)
        self.pixel_loss = select_pixel_loss(pixel_loss)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_loss = build_perceptual_loss(self.perceptual_weight, perceptual_random_trunk,
                                                     perceptual_vgg_path)
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=bool(learn_logvar))

    @property
    def learn_logvar(self) -> bool:
        """Whether `logvar` trains (read from the parameter, so `logvar.requires_grad_(True)` elsewhere counts)."""
        return self.logvar.requires_grad

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Loss parameters the GENERATOR optimizer must train: `[logvar]` when it is learnable, else `[]`."""
        return [self.logvar] if self.learn_logvar else []

    def reconstruction_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Per-pixel rec loss (B, C, H, W): weighted L1 (or L2) plus the per-sample LPIPS broadcast over pixels."""
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec = self.pixel_weight * self.pixel_loss(inputs, reconstructions)
        if self.perceptual_loss is not None:
            rec = rec + self.perceptual_weight * self.perceptual_loss(inputs, reconstructions)
        return rec

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor, posteriors: Any, optimizer_idx: int,
                global_step: int, last_layer: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                split: str = "train", weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, log) of the generator (optimizer_idx 0) or the discriminator (1); log values are detached tensors."""
        if self.is_discriminator_step(optimizer_idx):
            return self.discriminator_step(inputs, reconstructions, global_step, cond, split)

        batch = inputs.shape[0]
        rec_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / batch
        nll_loss = torch.sum(nll_loss) / batch
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        loss, adversarial_log = self.add_generator_term(weighted_nll_loss + self.kl_weight * kl_loss, nll_loss,
                                                        reconstructions, global_step, last_layer, cond, split)
        log = {
            f"{split}/total_loss": loss.detach().mean(),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": kl_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            **adversarial_log,
        }
        return loss, log


def __getattr__(name: str) -> Any:
    """`contperceptual.DummyLoss` (named by the original inpainting_big config): the package's DummyLoss, the same
    object, looked up lazily because the package imports this module first."""
    if name == "DummyLoss":
        from ldm.modules.losses import DummyLoss

        return DummyLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
