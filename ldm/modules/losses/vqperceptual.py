"""First-stage loss of the VQ autoencoder (VQGAN, Esser et al. 2021): pixel + LPIPS, codebook loss, PatchGAN."""

from __future__ import annotations

import torch

from ldm.modules.losses.gan import AdversarialLoss
from ldm.modules.losses.lpips import build_perceptual_loss
from ldm.modules.losses.pixel import l1, l2, select_pixel_loss  # noqa: F401 (l1, l2: the original's names here)
from ldm.util import ConfigError

PERPLEXITY_EPS = 1e-10


def measure_perplexity(predicted_indices: torch.Tensor, n_embed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp of the entropy of the code histogram, number of codes used) over a batch of indices (the original's).

    A fixed-size scatter-add histogram instead of one-hot (no B*h*w x n_embed matrix, no host sync); indices outside
    [0, n_embed) (e.g. a remapped 'extra' index) are not counted.
    """
    flat = predicted_indices.reshape(-1).long()
    valid = (flat >= 0) & (flat < n_embed)
    counts = torch.zeros(n_embed, device=flat.device, dtype=torch.float32)
    counts.scatter_add_(0, flat.clamp(0, n_embed - 1), valid.float())
    probs = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-torch.sum(probs * torch.log(probs + PERPLEXITY_EPS)))
    return perplexity, torch.sum(counts > 0).float()  # float: loggers average it


class VQLPIPSWithDiscriminator(AdversarialLoss):
    """VQGAN loss with the ldm-repo parameters (`n_classes`, `pixel_loss`, `predicted_indices` logging).

    rec = pixelloss_weight * pixel_loss(x, x_rec) + perceptual_weight * LPIPS(x, x_rec); nll = mean(rec) (a mean,
    unlike the KL loss); generator loss = nll + d_weight * disc_factor * (-E[D(x_rec)]) + codebook_weight *
    mean(codebook_loss); discriminator loss as in `AdversarialLoss.discriminator_step`. With `predicted_indices` and
    `n_classes`, the generator log also holds the batch's code `perplexity` and `cluster_usage`.
    Differences from the original: before `disc_start` the discriminator is not run in the generator step (g_loss and
    d_weight log 0); `pixelloss_weight` is applied (stored but ignored by the original; identical at 1.0).
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 n_classes: int | None = None, pixel_loss: str = "l1", perceptual_random_trunk: bool = False,
                 perceptual_loss: str = "lpips", perceptual_vgg_path: str | None = None):
        super().__init__(disc_start, disc_num_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         disc_factor=disc_factor, disc_weight=disc_weight, use_actnorm=use_actnorm,
                         disc_conditional=disc_conditional, disc_loss=disc_loss, disc_ndf=disc_ndf)
        if perceptual_loss != "lpips":
            raise ConfigError(f"perceptual_loss {perceptual_loss!r} is not available; only 'lpips' is implemented")
        if n_classes is not None and n_classes <= 0:
            raise ConfigError(f"n_classes (codebook size for perplexity logging) must be positive, got {n_classes}")
        self.codebook_weight = float(codebook_weight)
        self.pixel_weight = float(pixelloss_weight)
        self.pixel_loss = select_pixel_loss(pixel_loss)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_loss = build_perceptual_loss(self.perceptual_weight, perceptual_random_trunk,
                                                     perceptual_vgg_path)
        self.n_classes = n_classes

    def forward(self, codebook_loss: torch.Tensor | None, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train",
                predicted_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, log) of the generator (optimizer_idx 0) or the discriminator (1); log values are detached tensors."""
        if self.is_discriminator_step(optimizer_idx):
            return self.discriminator_step(inputs, reconstructions, global_step, cond, split)

        if codebook_loss is None:
            codebook_loss = torch.zeros(1, device=inputs.device)
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec_loss = self.pixel_weight * self.pixel_loss(inputs, reconstructions)
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros(1, device=inputs.device)
        nll_loss = torch.mean(rec_loss)

        loss = nll_loss + self.codebook_weight * codebook_loss.mean()
        loss, adversarial_log = self.add_generator_term(loss, nll_loss, reconstructions, global_step, last_layer, cond,
                                                        split)
        log = {
            f"{split}/total_loss": loss.detach().mean(),
            f"{split}/quant_loss": codebook_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            **adversarial_log,
        }
        if predicted_indices is not None and self.n_classes is not None:
            with torch.no_grad():
                perplexity, cluster_usage = measure_perplexity(predicted_indices, self.n_classes)
            log[f"{split}/perplexity"] = perplexity
            log[f"{split}/cluster_usage"] = cluster_usage
        return loss, log
