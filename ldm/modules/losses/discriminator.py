"""PatchGAN discriminator of pix2pix (Isola et al. 2017) as used by VQGAN / LDM, with taming's ActNorm option."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

KERNEL_SIZE = 4
PADDING = 1
LEAKY_SLOPE = 0.2
MAX_WIDTH_MULT = 8  # channel width saturates at 8 * ndf


class ActNorm(nn.Module):
    """Per-channel affine normalisation (Glow) whose `loc`/`scale` are set from the first training batch (taming).

    `initialized` is a uint8 buffer saved with the weights, as in taming. The device value is read once per module
    (and again after `load_state_dict`); afterwards a Python flag answers, so the forward pass has no host sync.
    """

    def __init__(self, num_features: int, logdet: bool = False, affine: bool = True, allow_reverse_init: bool = False):
        super().__init__()
        if not affine:
            raise ValueError("ActNorm supports only affine=True (as in taming)")
        self.logdet = logdet
        self.allow_reverse_init = allow_reverse_init
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._init_known = False  # True once `initialized` is known to be 1

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init: the batch is mapped to zero mean and unit (unbiased) std per channel."""
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).float()
        mean = flat.mean(dim=1).view(1, -1, 1, 1)
        std = flat.std(dim=1).view(1, -1, 1, 1)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + 1e-6))

    def _initialize_once(self, x: torch.Tensor, reverse: bool) -> None:
        if not self.training or self._init_known:
            return
        if not bool(self.initialized):  # one host read in the module's life (per load)
            if reverse and not self.allow_reverse_init:
                raise RuntimeError("ActNorm is uninitialized and reverse() was called in training mode; initialize "
                                   "it with a forward pass first (or set allow_reverse_init=True)")
            self.initialize(x)
            self.initialized.fill_(1)
        self._init_known = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._init_known = False  # the loaded `initialized` may differ from what we knew

    def forward(self, x: torch.Tensor, reverse: bool = False):
        """scale * (x + loc); with `logdet`, also the per-sample log-determinant H * W * sum(log|scale|)."""
        if reverse:
            return self.reverse(x)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[:, :, None, None]
        self._initialize_once(x, reverse=False)
        h = self.scale * (x + self.loc)
        if squeeze:
            h = h[:, :, 0, 0]
        if not self.logdet:
            return h
        logdet = x.shape[2] * x.shape[3] * torch.sum(torch.log(torch.abs(self.scale)))
        return h, logdet * torch.ones(x.shape[0], device=x.device, dtype=h.dtype)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse map y / scale - loc."""
        squeeze = y.ndim == 2
        if squeeze:
            y = y[:, :, None, None]
        self._initialize_once(y, reverse=True)
        x = y / self.scale - self.loc
        return x[:, :, 0, 0] if squeeze else x


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN: conv-LReLU, (n_layers - 1) strided conv-norm-LReLU blocks, a stride-1 block, a 1-channel conv.

    All layers live in one `nn.Sequential` named `main` (taming's state-dict names: `main.0`, `main.2`, `main.3`, ...);
    convs followed by BatchNorm have no bias, those followed by ActNorm do. Output: one logit per overlapping patch.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers (disc_num_layers) must be >= 0, got {n_layers}")
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = norm_layer is not nn.BatchNorm2d  # BatchNorm's shift makes a conv bias redundant

        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, KERNEL_SIZE, stride=2, padding=PADDING),
            nn.LeakyReLU(LEAKY_SLOPE, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, MAX_WIDTH_MULT)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, KERNEL_SIZE, stride=stride, padding=PADDING, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(LEAKY_SLOPE, True),
            ]
        if n_layers == 0:  # taming still adds the stride-1 block (width ndf) when there are no strided ones
            layers += [
                nn.Conv2d(ndf, ndf, KERNEL_SIZE, stride=1, padding=PADDING, bias=use_bias),
                norm_layer(ndf),
                nn.LeakyReLU(LEAKY_SLOPE, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, KERNEL_SIZE, stride=1, padding=PADDING))
        self.main = nn.Sequential(*layers)

    @property
    def in_channels(self) -> int:
        """Channels the discriminator expects (image channels, plus condition channels when conditional)."""
        return self.main[0].in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h, w)."""
        return self.main(x)


def weights_init(module: nn.Module) -> None:
    """DCGAN init used by taming: conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0 (apply with .apply)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)
