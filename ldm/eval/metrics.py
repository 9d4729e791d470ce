"""Generation metrics (FID, KID, IS, CLIP score) and reconstruction metrics (PSNR, SSIM, LPIPS, rFID) on torchmetrics.

The feature-based metrics take features already extracted (`ldm.eval.features`): torchmetrics gets them through
its custom-feature-module interface (`Precomputed`, an identity that reports `num_features`), so the reference
set's features can be cached and reused, and every extractor, Inception or the test one, runs the same code.
Metrics never synchronise across processes themselves (`sync_on_compute=False`): the training callback gathers the
features first (see `ldm/trainer/sample_metrics.py`).

Names in results: fid, kid_mean, kid_std, is_mean, is_std, clip_score, psnr, ssim, lpips, rfid.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' / the KID paper's defaults (subset size capped by n)
IS_SPLITS = 10
LOCAL = {"sync_on_compute": False}  # every metric is computed from inputs this process already holds


class Precomputed(nn.Module):
    """The 'feature extractor' torchmetrics sees: features pass through unchanged."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _features(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{what}: expected features (N >= 2, D), got shape {tuple(x.shape)}")
    return x.double()


@contextlib.contextmanager
def _all_features_kept() -> Iterator[None]:
    """Quiet torchmetrics' note that KID / IS keep every feature in memory: here they hold only features that
    were already extracted (a few MB), so the note is noise on every evaluation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Metric `.*` will save all extracted features", category=UserWarning)
        yield


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D) (torchmetrics FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features(real, "FID reference"), _features(fake, "FID samples")
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), **LOCAL).double()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets (torchmetrics KID); the subset size
    is capped by the smaller set, the subsets are drawn from `seed` (the caller's RNG is left alone)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(real, "KID reference"), _features(fake, "KID samples")
    size = min(subset_size, len(real), len(fake))
    with _all_features_kept():
        metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=size,
                                         **LOCAL)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) || p(y))) over `splits` splits of the class logits (torchmetrics IS)."""
    from torchmetrics.image.inception import InceptionScore

    logits = _features(logits, "IS logits")
    with _all_features_kept():
        metric = InceptionScore(feature=Precomputed(logits.shape[1]), splits=min(splits, len(logits)), **LOCAL)
    metric.update(logits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def clip_score(images: torch.Tensor, captions: Sequence[str],
               clip: str | Callable[[], tuple[Any, Any]], batch_size: int = 32,
               device: torch.device | str = "cpu") -> float:
    """Mean of 100 * max(cos(image, caption), 0) (torchmetrics CLIPScore) for uint8 images (N, 3, H, W); `clip` is a
    hub id / folder (`ldm.eval.features.load_clip`) or a callable returning (model, processor). The CLIP model runs
    on `device` (batches are moved there one at a time)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from ldm.eval.features import load_clip

    if len(images) != len(captions):
        raise ValueError(f"CLIP score: {len(images)} images but {len(captions)} captions")
    metric = CLIPScore(model_name_or_path=clip if callable(clip) else (lambda: load_clip(clip)), **LOCAL).to(device)
    for start in range(0, len(images), batch_size):
        metric.update(images[start:start + batch_size].to(device), list(captions[start:start + batch_size]))
    return float(metric.compute())


def generation_metrics(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor],
                       names: Sequence[str] = ("fid", "kid", "is")) -> dict[str, float]:
    """FID / KID / IS of `fake` features vs `real` ones ({"features", "logits"}), as named in `names`."""
    out: dict[str, float] = {}
    if "fid" in names:
        out["fid"] = fid(real["features"], fake["features"])
    if "kid" in names:
        out["kid_mean"], out["kid_std"] = kid(real["features"], fake["features"])
    if "is" in names:
        out["is_mean"], out["is_std"] = inception_score(fake["logits"])
    return out


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], float32 on the CPU."""
    return ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1)


def psnr(target: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR in dB, images (B, C, H, W) in [-1, 1] (torchmetrics PSNR; inf when
    identical)."""
    from torchmetrics.image import PeakSignalNoiseRatio

    metric = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean", **LOCAL)
    return float(metric(_to_unit(pred), _to_unit(target)))


def ssim(target: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5) of images (B, C, H, W) in [-1, 1] (torchmetrics SSIM; 1 when
    identical)."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    metric = StructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL)
    return float(metric(_to_unit(pred), _to_unit(target)))


def lpips_model(vgg_path: str | None = None) -> nn.Module:
    """The project's LPIPS-VGG (`ldm.modules.losses.lpips`, the `lpips` package's network and heads). Its VGG16
    weights come from the torch hub cache (downloaded when online) or `vgg_path`; a MissingPerceptualWeightsError
    with the file name and where to put it otherwise."""
    from ldm.modules.losses.lpips import LPIPS

    return LPIPS(vgg_path=vgg_path)


class ReconstructionMeter:
    """PSNR, SSIM, LPIPS (with `lpips_net`) and rFID (FID of reconstructions vs inputs, with `extractor`),
    accumulated over batches of (target, reconstruction) images (B, C, H, W) in [-1, 1]."""

    def __init__(self, extractor: nn.Module | None = None, lpips_net: nn.Module | None = None, batch_size: int = 16):
        from torchmetrics import MeanMetric
        from torchmetrics.image import (
            PeakSignalNoiseRatio,
            StructuralSimilarityIndexMeasure,
        )

        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean", **LOCAL)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL)
        self.lpips = MeanMetric(**LOCAL) if lpips_net is not None else None
        self.extractor, self.lpips_net, self.batch_size = extractor, lpips_net, batch_size
        self.features: dict[str, list[torch.Tensor]] = {"real": [], "fake": []}
        self.count = 0

    @torch.no_grad()
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch of inputs and their reconstructions."""
        from ldm.eval.features import extract
        from ldm.eval.reference import from_model_range

        pred = pred.clamp(-1, 1)
        unit_pred, unit_target = _to_unit(pred), _to_unit(target)
        self.psnr.update(unit_pred, unit_target)
        self.ssim.update(unit_pred, unit_target)
        if self.lpips is not None:
            device = next(self.lpips_net.parameters()).device
            self.lpips.update(self.lpips_net(pred.float().to(device), target.float().to(device)).flatten().cpu())
        if self.extractor is not None:
            self.features["real"].append(extract(self.extractor, from_model_range(target), self.batch_size)["features"])
            self.features["fake"].append(extract(self.extractor, from_model_range(pred), self.batch_size)["features"])
        self.count += len(target)

    def compute(self) -> dict[str, float]:
        """{"psnr", "ssim", and "lpips" / "rfid" when measured}."""
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        if self.extractor is not None and self.count >= 2:
            out["rfid"] = fid(torch.cat(self.features["real"]), torch.cat(self.features["fake"]))
        return out


def reconstruction_metrics(target: torch.Tensor, pred: torch.Tensor, extractor: nn.Module | None = None,
                           lpips_net: nn.Module | None = None, batch_size: int = 16) -> dict[str, float]:
    """`ReconstructionMeter` over one set of inputs `target` and reconstructions `pred`."""
    meter = ReconstructionMeter(extractor, lpips_net, batch_size)
    for start in range(0, len(target), batch_size):
        meter.update(target[start:start + batch_size], pred[start:start + batch_size])
    return meter.compute()
