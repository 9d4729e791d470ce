"""Adversarial pieces shared by the KL and VQ first-stage losses: GAN losses, warm-up gate, adaptive weight, D step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.losses.discriminator import NLayerDiscriminator, weights_init
from ldm.util import ConfigError

ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating (binary cross-entropy) discriminator loss 0.5 * (E[softplus(-D(x))] + E[softplus(D(G(z)))])."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


DISC_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` before `threshold` steps, `weight` from then on (the discriminator warm-up gate of taming)."""
    return value if global_step < threshold else weight


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor | None,
                    disc_weight: float) -> torch.Tensor:
    """VQGAN eq. 7: ||grad nll|| / (||grad g|| + 1e-4) at the decoder's last layer, clamped to [0, 1e4], detached, * w.

    Returns 0 when it cannot be computed, as the original does outside training: no `last_layer`, gradients disabled
    (validation), or a loss without a graph. Only device ops, so no host sync.
    """
    if (last_layer is None or not torch.is_grad_enabled() or not nll_loss.requires_grad
            or not g_loss.requires_grad):
        device = last_layer.device if last_layer is not None else nll_loss.device
        return torch.zeros((), device=device)
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grads) / (torch.linalg.vector_norm(g_grads) + ADAPTIVE_WEIGHT_EPS)
    return torch.clamp(weight, 0.0, ADAPTIVE_WEIGHT_MAX).detach() * disc_weight


class AdversarialLoss(nn.Module):
    """Base of the first-stage losses: owns the PatchGAN `discriminator` and its warm-up, weighting and D step.

    Attribute names follow the original (`discriminator_iter_start`, `disc_factor`, `discriminator_weight`,
    `disc_conditional`). `global_step` arguments count training batches (an int, so gating costs no host sync).
    """

    def __init__(self, disc_start: int, disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, use_actnorm: bool = False, disc_conditional: bool = False,
                 disc_loss: str = "hinge", disc_ndf: int = 64):
        super().__init__()
        if disc_loss not in DISC_LOSSES:
            raise ConfigError(f"disc_loss must be one of {sorted(DISC_LOSSES)}, got {disc_loss!r}")
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, ndf=disc_ndf, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm)
        self.discriminator.apply(weights_init)
        self.discriminator_iter_start = int(disc_start)
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_conditional = bool(disc_conditional)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Loss parameters the GENERATOR optimizer must train (none here; the discriminator has its own optimizer)."""
        return []

    def current_disc_factor(self, global_step: int) -> float:
        """disc_factor after the warm-up gate: 0 before `disc_start` training batches."""
        return adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor | None = None) -> torch.Tensor:
        """The original's method name for `adaptive_weight(..., disc_weight=self.discriminator_weight)`."""
        return adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)

    def logits(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """D(images), or D(cat[images, cond]) on channels for a conditional discriminator."""
        if cond is not None and not self.disc_conditional:
            raise ValueError("a `cond` was passed to the loss but disc_conditional is false")
        if cond is None and self.disc_conditional:
            raise ValueError("disc_conditional is true but no `cond` was passed to the loss")
        x = images.contiguous() if cond is None else torch.cat((images.contiguous(), cond), dim=1)
        if x.shape[1] != self.discriminator.in_channels:
            raise ValueError(f"the discriminator expects {self.discriminator.in_channels} channels (disc_in_channels) "
                             f"but got {x.shape[1]} (images {images.shape[1]}"
                             + (f" + cond {cond.shape[1]})" if cond is not None else ")"))
        return self.discriminator(x)

    def generator_term(self, nll_loss: torch.Tensor, reconstructions: torch.Tensor, global_step: int,
                       last_layer: torch.Tensor | None, cond: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(g_loss = -E[D(x_rec)], adaptive d_weight, gated disc_factor); total adds d_weight * disc_factor * g_loss.

        Before `disc_start` the discriminator is not run at all (the original runs it and multiplies by 0), so
        g_loss and d_weight are 0 then.
        """
        disc_factor = self.current_disc_factor(global_step)
        if disc_factor == 0.0:
            zero = torch.zeros((), device=reconstructions.device)
            return zero, zero, disc_factor
        g_loss = -torch.mean(self.logits(reconstructions, cond))
        d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
        return g_loss, d_weight, disc_factor

    def add_generator_term(self, loss: torch.Tensor, nll_loss: torch.Tensor, reconstructions: torch.Tensor,
                           global_step: int, last_layer: torch.Tensor | None, cond: torch.Tensor | None,
                           split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss + d_weight * disc_factor * g_loss, the log of `d_weight`, `disc_factor` and `g_loss`): the adversarial
        part of a generator step (`generator_term`), the same for the KL and the VQ loss."""
        g_loss, d_weight, disc_factor = self.generator_term(nll_loss, reconstructions, global_step, last_layer, cond)
        if disc_factor != 0.0:
            loss = loss + d_weight * disc_factor * g_loss
        log = {
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.full((), disc_factor, device=reconstructions.device),
            f"{split}/g_loss": g_loss.detach().mean(),
        }
        return loss, log

    @staticmethod
    def is_discriminator_step(optimizer_idx: int) -> bool:
        """Whether `optimizer_idx` is the discriminator's (1) rather than the generator's (0); ValueError otherwise."""
        if optimizer_idx not in (0, 1):
            raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")
        return optimizer_idx == 1

    def discriminator_step(self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int,
                           cond: torch.Tensor | None, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """disc_factor * {hinge, vanilla}(D(x), D(x_rec.detach())) and its log (`disc_loss`, `logits_real/fake`)."""
        logits_real = self.logits(inputs.detach(), cond)
        logits_fake = self.logits(reconstructions.detach(), cond)
        d_loss = self.current_disc_factor(global_step) * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.detach().mean(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log
