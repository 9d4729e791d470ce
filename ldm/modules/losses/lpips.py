"""LPIPS-VGG perceptual distance (Zhang et al. 2018) built from the `lpips` package, frozen, with an offline-safe trunk.

The VGG16 trunk needs torchvision's ImageNet weights (`vgg16-397923af.pth`): read from a local file or the torch hub
cache (downloaded there, hash-checked, when online: `ldm.weights`; never offline, HF_HUB_OFFLINE=1), or, only when
the config says `perceptual_random_trunk: true`, a random trunk is used with a warning that the result is not a
calibrated metric. The calibrated linear heads ship inside the `lpips` package.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

import torch
from torch import nn

from ldm.checkpoint import CheckpointError, load_state_dict
from ldm.util import ConfigError
from ldm.weights import MissingWeightsError, hub_checkpoint_path, try_download

log = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 weights, the trunk LPIPS was calibrated on
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"  # torchvision's VGG16_Weights.IMAGENET1K_V1
RANDOM_TRUNK_KEY = "perceptual_random_trunk"  # loss param that allows the uncalibrated random trunk
VGG_PATH_KEY = "perceptual_vgg_path"  # loss param naming an explicit local copy of VGG16_FILENAME
RANDOM_TRUNK_SEED = 0  # the random trunk is a fixed function, so runs (and their loss values) stay comparable
LPIPS_VERSION = "0.1"
_NORM_EPS = 1e-10  # feature normalisation epsilon of the LPIPS reference


class MissingPerceptualWeightsError(MissingWeightsError):
    """The VGG16 ImageNet weights for LPIPS are not on disk; the message says where to put them and the alternatives."""


def default_vgg_path() -> str:
    """Where torch.hub (and thus torchvision) looks for the VGG16 weights: `<torch.hub.get_dir()>/checkpoints/...`."""
    return hub_checkpoint_path(VGG16_FILENAME)


def resolve_vgg_path(vgg_path: str | None = None) -> str:
    """The VGG16 weights file to use (explicit path or torch hub cache); raises a helpful error when it is missing."""
    path = os.path.expanduser(vgg_path) if vgg_path else default_vgg_path()
    if os.path.isfile(path):
        return path
    why = "it is not downloaded for an explicit path"
    if not vgg_path:  # online: the same hash-checked download into the torch hub cache torchvision does
        downloaded, why = try_download(VGG16_URL, VGG16_FILENAME)
        if downloaded:
            return downloaded
    where = f"the file given by `{VGG_PATH_KEY}` ({path})" if vgg_path else path
    raise MissingPerceptualWeightsError(
        f"LPIPS needs torchvision's ImageNet VGG16 weights '{VGG16_FILENAME}' (528 MB), but {where} does not exist and "
        f"{why}. Fix it in one of these ways (lossconfig.params of the model config):\n"
        f"  1. copy '{VGG16_FILENAME}' to {default_vgg_path()} (i.e. $TORCH_HOME/hub/checkpoints/), or set "
        f"`{VGG_PATH_KEY}: /path/to/{VGG16_FILENAME}`;\n"
        f"  2. set `{RANDOM_TRUNK_KEY}: true` to train with a RANDOM VGG trunk (runs offline, but the perceptual loss "
        f"is then NOT a calibrated LPIPS metric);\n"
        f"  3. set `perceptual_weight: 0` to train without a perceptual loss."
    )


def _read_vgg_state(path: str) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict from `path` (weights_only); an unreadable file is reported by name."""
    try:
        return load_state_dict(path, map_location="cpu")
    except CheckpointError as err:
        raise MissingPerceptualWeightsError(f"cannot read the VGG16 weights {path}: {err}") from err


def _linear_heads_path() -> str:
    """The calibrated LPIPS v0.1 linear heads shipped inside the `lpips` package."""
    import lpips

    return os.path.join(os.path.dirname(lpips.__file__), "weights", f"v{LPIPS_VERSION}", "vgg.pth")


def _build_package_model(random_seed: int) -> nn.Module:
    """`lpips.LPIPS(net='vgg', pnet_rand=True)` without heads loaded: nothing in it touches the network."""
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # torchvision deprecates the `pretrained=` flag lpips passes; the message is noise here.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        torch.manual_seed(random_seed)
        return lpips.LPIPS(pretrained=False, net="vgg", version=LPIPS_VERSION, lpips=True, pnet_rand=True,
                           pnet_tune=False, use_dropout=True, verbose=False)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG v0.1: `forward(x, y)` on NCHW images in [-1, 1] returns per-sample distances (B, 1, 1, 1).

    State-dict names are those of taming's / CompVis' LPIPS (`scaling_layer.*`, `net.slice{1-5}.*`, `lin{0-4}.model.1
    .weight`), so `loss.perceptual_loss.*` weights of original checkpoints load into it. It stays in eval mode and
    has no trainable parameters, whatever the parent does.

    Args:
        random_trunk: use a random (seeded) VGG16 trunk instead of the ImageNet one; NOT a calibrated metric.
        vgg_path: explicit path of `vgg16-397923af.pth`; default `<torch.hub.get_dir()>/checkpoints/`.
    """

    def __init__(self, random_trunk: bool = False, vgg_path: str | None = None):
        super().__init__()
        trunk_file = None if random_trunk else resolve_vgg_path(vgg_path)
        trunk_state = None if trunk_file is None else _read_vgg_state(trunk_file)  # fail before the slow build
        package_model = _build_package_model(RANDOM_TRUNK_SEED)
        # Adopt the package's submodules under the original names; `lins` stays a plain list so the state dict
        # carries each head once (the package's extra ModuleList would duplicate them as `lins.*`).
        self.scaling_layer = package_model.scaling_layer
        self.net = package_model.net
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = package_model.lins
        self.random_trunk = bool(random_trunk)
        self._load_linear_heads()
        if trunk_file is not None:
            self._load_trunk(trunk_state, trunk_file)
        else:
            log.warning(
                "\n" + "!" * 100 + "\n"
                f"!! {RANDOM_TRUNK_KEY}: true -> LPIPS uses a RANDOM VGG16 trunk (seed {RANDOM_TRUNK_SEED}).\n"
                "!! The perceptual loss is NOT a calibrated metric: its values are not LPIPS and it is a weaker\n"
                f"!! training signal. For the real metric put '{VGG16_FILENAME}' at {default_vgg_path()}\n"
                f"!! (or set {VGG_PATH_KEY}) and remove {RANDOM_TRUNK_KEY}.\n" + "!" * 100
            )
        self.requires_grad_(False)
        super().train(False)

    @property
    def lins(self) -> list[nn.Module]:
        """The five 1x1-conv heads weighting the normalised feature differences of relu1_2 ... relu5_3."""
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def _load_linear_heads(self) -> None:
        path = _linear_heads_path()
        state = load_state_dict(path, map_location="cpu")
        own = {f"lin{i}.model.1.weight" for i in range(5)}
        if set(state) != own:
            raise CheckpointError(f"unexpected LPIPS head file {path}: keys {sorted(state)}, expected {sorted(own)}")
        self.load_state_dict(state, strict=False)

    def _load_trunk(self, source: dict[str, torch.Tensor], path: str) -> None:
        """Copy torchvision's `features.{i}.*` tensors into the lpips slices `net.slice{k}.{i}.*`."""
        target = {}
        for name, param in self.net.state_dict().items():
            key = "features." + re.sub(r"^slice\d+\.", "", name)
            if key not in source or source[key].shape != param.shape:
                found = tuple(source[key].shape) if key in source else "missing"
                raise MissingPerceptualWeightsError(
                    f"{path} is not torchvision's VGG16 ({VGG16_FILENAME}): '{key}' is {found}, expected "
                    f"{tuple(param.shape)}")
            target[name] = source[key]
        self.net.load_state_dict(target, strict=True)
        log.info("LPIPS: VGG16 trunk loaded from %s", path)

    def train(self, mode: bool = True) -> "LPIPS":
        """Stay in eval mode: LPIPS is a fixed metric (its dropout must stay off)."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over layers of the spatially averaged, head-weighted squared differences of unit-normalised features."""
        if input.shape != target.shape or input.ndim != 4 or input.shape[1] != 3:
            raise ValueError(f"LPIPS expects two RGB batches of the same shape (B, 3, H, W); got {tuple(input.shape)} "
                             f"and {tuple(target.shape)}")
        batch = input.shape[0]
        # One trunk pass over both images (VGG has no batch statistics, so this equals two passes).
        features = self.net(self.scaling_layer(torch.cat([input, target], dim=0)))
        distance = 0.0
        for feature, head in zip(features, self.lins):
            feature = feature / (torch.sqrt(torch.sum(feature * feature, dim=1, keepdim=True)) + _NORM_EPS)
            diff = (feature[:batch] - feature[batch:]).pow(2)
            distance = distance + head(diff).mean(dim=(2, 3), keepdim=True)
        return distance


def build_perceptual_loss(perceptual_weight: float, random_trunk: bool = False,
                          vgg_path: str | None = None) -> LPIPS | None:
    """The frozen LPIPS a loss needs, or None when `perceptual_weight` is 0 (then nothing is built or required)."""
    if perceptual_weight < 0:
        raise ConfigError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
    if perceptual_weight == 0:
        log.warning("perceptual_weight is 0: training without a perceptual loss (pixel loss only)")
        return None
    return LPIPS(random_trunk=random_trunk, vgg_path=vgg_path)
